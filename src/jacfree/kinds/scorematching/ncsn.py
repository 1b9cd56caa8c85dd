"""The ``ncsn`` kind: a noise-conditional score network for images
(:class:`~jacfree.scorematching.ncsn.NCSN`), trained by the annealed (σ²-weighted) objectives
and sampled by annealed Langevin dynamics."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...scorematching.evaluate import evaluate_per_sample
from ...scorematching.ncsn import NCSN, annealed_loss
from ..registry import ModelSpec, Objective, OptionType, TestMetrics, ValMetric, option
from .base import NOISE_RANGE, SM_OPTIONS, PerSample, SMKind, report, without

__all__ = ["NCSNKind"]


def _annealed(name: str) -> PerSample:
    """The per-sample annealed loss ``name`` of a model (on its pre-processed data)."""
    return lambda model: lambda b: annealed_loss(model, model.preprocess(b), name, reduction="none")


class NCSNKind(SMKind):
    """``ncsn``: validated by the annealed DSM loss; tested by it and the annealed exact SM."""

    name = "ncsn"
    objectives = ("fd_ssm_vr", "dsm", "ssm", "ssm_vr")
    summary = "noise-conditional score network for images, sampled by annealed Langevin dynamics"
    flags = "--hidden channels"
    sampler = "by annealed Langevin dynamics"
    options: ClassVar[dict[str, OptionType]] = {
        **without(SM_OPTIONS, "sigma", "parallel"),
        "hidden": int,
        **NOISE_RANGE,
        "n_levels": int,
        "activation": str,
        "sample_steps": int,
        "step_lr": float,
    }
    defaults: ClassVar[dict[str, Any]] = {
        **SMKind.defaults,
        "hidden": 16,
        "sigma_max": 1.0,
        "sigma_min": 0.01,
        "n_levels": 10,
        "activation": "elu",
        "sample_steps": 20,
        "step_lr": 2e-5,
    }
    val_name = "dsm"
    exact_sm_rows = 16
    setting_defaults: ClassVar[dict[str, Any]] = {"projection": "gaussian"}

    def build(self, spec: ModelSpec) -> nn.Module:
        self.objective_name(spec)
        self.require_images(spec, "mnist-5k")
        return NCSN(
            tuple(spec["data_shape"]),
            channels=self.get(spec, "hidden"),
            levels=option(spec, "levels"),
            **self.read(spec, "sigma_max", "sigma_min", "n_levels", "activation"),
        )

    def objective(self, spec: ModelSpec) -> Objective:
        name, s = self.objective_name(spec), self.settings(spec)
        kw = {"eps": s.eps, "projection": s.projection, "n_particles": s.n_particles}
        return lambda model, x: annealed_loss(model, model.preprocess(x), name, **kw)

    def val_metric(self, spec: ModelSpec) -> ValMetric:
        return self.val_mean(spec, _annealed("dsm"))

    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
            dsm = evaluate_per_sample(_annealed("dsm")(model), x, model=model)
            n = self.exact_sm_n(spec)
            sm = evaluate_per_sample(_annealed("sm")(model), x, max_n=n, batch_size=4, model=model)
            return {**report("dsm", dsm), **report("exact_sm", sm)}

        return metrics

    def plot(self, model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
        if not ds.is_image:
            return []
        from ... import plots

        model.eval()
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        steps, step_lr = self.get(spec, "sample_steps"), self.get(spec, "step_lr")
        samples = model.sample(64, n_steps_each=steps, step_lr=step_lr, generator=gen)
        title = f"{ds.name}: NCSN, {spec['objective']} (annealed Langevin)"
        return [plots.image_grid(samples.cpu(), out / "samples.png", ds.levels, title=title)]

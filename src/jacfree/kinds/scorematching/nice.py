"""The ``nice`` kind: a NICE flow (:class:`~jacfree.flows.nice.NICE`) trained by score matching
on its energy ``−log p`` or by maximum likelihood, with an exact NLL either way."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..registry import (
    ModelSpec,
    Objective,
    OptionType,
    TestMetrics,
    ValMetric,
    data_output,
    preprocess_layers,
)
from .base import NETWORK_OPTIONS, SM_OPTIONS, SMALL_D, SMKind, dim, report

__all__ = ["NICEKind"]


def _nice_width(d: int) -> int:
    """Default hidden width of NICE: 1000 as in the paper for MNIST-sized data, scaled down with
    the data dimension (8·D, at least 64) so a 2-D toy does not get millions of parameters."""
    return min(1000, max(64, 8 * d))


class NICEKind(SMKind):
    """``nice``: score matching on ``model.energy`` after the flow's pre-processing (quantised
    data: dequantisation + logit, so the NLL is on the original scale), or ``mle``."""

    name = "nice"
    objectives = ("fd_ssm", "mle", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm")
    summary = (
        "NICE flow (additive couplings + diagonal scaling) trained by score matching on its "
        "energy -log p or by maximum likelihood"
    )
    flags = "--layers couplings, --hidden width"
    has_density = True
    sampler = "through the exact inverse"
    options: ClassVar[dict[str, OptionType]] = {
        **SM_OPTIONS,
        **NETWORK_OPTIONS,
        "hidden_layers": int,
        "logit_alpha": float,
    }
    defaults: ClassVar[dict[str, Any]] = {
        **SMKind.defaults,
        "layers": 4,
        "hidden_layers": 4,
        "activation": "softplus",
    }

    def build(self, spec: ModelSpec) -> nn.Module:
        from ...flows.nice import NICE

        self.objective_name(spec)
        return NICE(
            dim(spec),
            couplings=self.get(spec, "layers"),
            hidden=int(self.get(spec, "hidden") or _nice_width(dim(spec))),
            hidden_layers=self.get(spec, "hidden_layers"),
            activation=self.get(spec, "activation"),
            preprocess=preprocess_layers(spec),
        )

    def energy(
        self, model: nn.Module, spec: ModelSpec
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        return model.energy, model.preprocess

    def objective(self, spec: ModelSpec) -> Objective | None:
        if self.objective_name(spec) == "mle":
            return None  # fit trains on model.loss (exact maximum likelihood)
        return super().objective(spec)

    def val_name(self, spec: ModelSpec) -> str:
        small = dim(spec) <= SMALL_D
        default = "exact_sm" if small else "objective"
        if self.objective_name(spec) == "mle":
            default = "nll"
        return self.val_choice(spec, ("nll", "exact_sm", "objective"), default)

    def val_metric(self, spec: ModelSpec) -> ValMetric | None:
        choice = self.val_name(spec)
        if choice == "nll":
            return None  # fit's default: the exact NLL
        if choice == "exact_sm":
            n = self.get(spec, "val_n")
            return lambda model, x: self.exact_sm(model, spec, x, max_n=n).mean
        if self.objective_name(spec) == "mle":
            raise ValueError("val_metric 'objective' needs a score-matching objective, not 'mle'.")
        return self.objective_metric(spec)

    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        n = self.exact_sm_n(spec)
        return lambda model, x: report(
            "exact_sm", self.exact_sm(model, spec, x, max_n=n, batch_size=50)
        )

    def plot(self, model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
        from ... import plots

        model.eval()
        title = f"{ds.name}: NICE, {spec['objective']}"
        if ds.is_image:
            gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
            samples = data_output(model.sample(64, generator=gen), spec)
            return [plots.image_grid(samples, out / "samples.png", ds.levels, title=title)]
        if ds.dim == 2:
            return [
                plots.density_2d(
                    model, ds.test, out / "density.png", samples=model.sample(5000), title=title
                )
            ]
        return []

"""The energy-network kinds: ``energy-mlp`` (:class:`~jacfree.scorematching.energy.MLPEnergy`)
and ``ebm`` (:class:`~jacfree.scorematching.ebm.ResEBM`, the FD-SM paper's deep EBM), both on
``[0, 1)``-dequantised data when it is quantised and sampled by Langevin dynamics."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ...scorematching.energy import MLPEnergy
from ...scorematching.evaluate import evaluate_per_sample
from ...scorematching.losses import mdsm
from ...scorematching.objectives import Settings
from ..registry import ModelSpec, OptionType, TestMetrics, ValMetric, option
from .base import (
    MDSM_OPTIONS,
    MULTISCALE_OBJECTIVES,
    NETWORK_OPTIONS,
    NOISE_RANGE,
    SM_OPTIONS,
    SMALL_D,
    PerSample,
    SMKind,
    dim,
    report,
    unit_dequantise,
    without,
)

__all__ = ["EBMKind", "EnergyMLPKind", "ebm_samples", "grid_log_partition"]


@torch.no_grad()
def grid_log_partition(
    log_density: Callable[[Tensor], Tensor],
    lo: Tensor,
    hi: Tensor,
    resolution: int = 400,
    *,
    chunk: int = 20_000,
) -> float:
    r"""``log ∫ exp(log p̃)`` over the box ``[lo, hi]`` of a 2-D model, by the midpoint rule on a
    ``resolution²`` grid (``lo``, ``hi``: shape ``(2,)`` tensors on the model's device/dtype).

    A quadrature, not an estimate: accurate when the box holds the mass and the grid resolves the
    density. Used for the 2-D test NLL of energies and for density plots.
    """
    if lo.shape != (2,) or hi.shape != (2,):
        raise ValueError("grid_log_partition is for 2-D models: lo and hi must have shape (2,).")
    cell = (hi - lo) / resolution
    axes = [
        lo[i] + cell[i] * (torch.arange(resolution, dtype=lo.dtype, device=lo.device) + 0.5)
        for i in range(2)
    ]
    gx, gy = torch.meshgrid(axes[0], axes[1], indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    logp = torch.cat([log_density(p).double() for p in pts.split(chunk)])
    return float(torch.logsumexp(logp, 0)) + float(torch.log(cell.double()).sum())


def _box(data: Tensor, margin: float = 0.5) -> tuple[Tensor, Tensor]:
    return data.min(0).values - margin, data.max(0).values + margin


def _grid_nll(model: nn.Module, x: Tensor) -> dict[str, float]:
    """The test NLL of a 2-D energy, normalised on a grid around the data."""
    lo, hi = _box(x.to(next(model.parameters())))
    model.eval()
    log_z = grid_log_partition(lambda p: -model(p), lo - 1.0, hi + 1.0)
    with torch.no_grad():
        e = torch.cat([model(b.to(lo)).double().cpu() for b in x.split(10_000)])
    nll = e + log_z
    return {
        "nll_grid_nats": float(nll.mean()),
        "nll_grid_stderr_nats": float(nll.std() / math.sqrt(len(nll))),
        "log_z_grid": log_z,
    }


class EnergyMLPKind(SMKind):
    """``energy-mlp``: an MLP energy; validated by the exact SM loss up to ``D = 100``."""

    name = "energy-mlp"
    summary = "MLP energy E(x) (log p~ = -E) trained by score matching"
    flags = "--hidden width, --layers hidden layers, --eps, --sigma"
    options: ClassVar[dict[str, OptionType]] = {
        **SM_OPTIONS,
        **NETWORK_OPTIONS,
        "base_std": float | None,
        "plot_samples": int,
        "sample_steps": int,
    }
    defaults: ClassVar[dict[str, Any]] = {
        **SMKind.defaults,
        "hidden": 128,
        "layers": 3,
        "activation": "softplus",
        "plot_samples": 2000,
        "sample_steps": 500,
    }

    def build(self, spec: ModelSpec) -> nn.Module:
        self.objective_name(spec)
        return MLPEnergy(
            tuple(spec["data_shape"]),
            hidden=(self.get(spec, "hidden"),) * self.get(spec, "layers"),
            activation=self.get(spec, "activation"),
            base_std=self.get(spec, "base_std"),
        )

    def val_name(self, spec: ModelSpec) -> str:
        small = dim(spec) <= SMALL_D
        return self.val_choice(
            spec, ("exact_sm", "objective"), "exact_sm" if small else "objective"
        )

    def val_metric(self, spec: ModelSpec) -> ValMetric:
        if self.val_name(spec) == "objective":
            return self.objective_metric(spec)
        n = self.get(spec, "val_n")
        return lambda model, x: self.exact_sm(model, spec, x, max_n=n).mean

    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
            out = report("exact_sm", self.exact_sm(model, spec, x, max_n=self.exact_sm_n(spec)))
            if dim(spec) == 2:
                out.update(_grid_nll(model, x))
            return out

        return metrics

    def plot(self, model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
        if ds.dim != 2:
            return []
        from ... import plots
        from ...scorematching.sampling import energy_score, langevin

        ref = next(model.parameters())
        data = ds.test.to(ref)
        lo, hi = _box(data)
        gen = torch.Generator(device=ref.device).manual_seed(0)
        n = self.get(spec, "plot_samples")
        x0 = lo + (hi - lo) * torch.rand(n, 2, dtype=ref.dtype, device=ref.device, generator=gen)
        step = 0.01 * float(data.var(0).mean())  # Langevin step ∝ the data's variance
        model.eval()
        samples = langevin(
            energy_score(model), x0, step, self.get(spec, "sample_steps"), generator=gen
        )
        title = f"{ds.name}: {spec['objective']}"
        return [
            plots.energy_density_2d(
                lambda p: -model(p),
                ds.test,
                out / "density.png",
                samples=samples,
                like=ref,
                title=title,
            )
        ]


# the annealed Langevin schedule of the deep EBM's samples (the reference's)
SAMPLING_OPTIONS: dict[str, OptionType] = {
    "sample_step": float,
    "t_max": float,
    "t_min": float,
    "sample_hold": int,
    "sample_anneal": int,
    "sample_tail": int,
    "n_samples": int,
}


class EBMKind(SMKind):
    """``ebm``: the deep residual energy of the FD-SM paper, trained by (FD) multiscale DSM."""

    name = "ebm"
    objectives = ("fd_mdsm", "mdsm", "fd_ssm", "ssm")
    summary = (
        "residual energy network with a quadratic head for images (the FD-SM paper's deep EBM), "
        "sampled by annealed Langevin"
    )
    flags = "--hidden base width, --layers blocks per stage, --eps"
    sampler = "by annealed Langevin dynamics"
    options: ClassVar[dict[str, OptionType]] = {
        **without(SM_OPTIONS, "sigma"),
        **NETWORK_OPTIONS,
        **NOISE_RANGE,
        **MDSM_OPTIONS,
        "test_n": int | None,
        **SAMPLING_OPTIONS,
    }
    defaults: ClassVar[dict[str, Any]] = {
        "val_n": 1000,
        "hidden": 16,
        "layers": 1,
        "activation": "nsoftplus",
        "sigma_min": 0.05,
        "sigma_max": 1.2,
        "sigma0": 0.1,
        "sample_step": 0.02,
        "t_max": 100.0,
        "t_min": 1.0,
        "sample_hold": 500,
        "sample_anneal": 2000,
        "sample_tail": 200,
        "n_samples": 64,
    }
    exact_sm_rows = 16
    setting_defaults: ClassVar[dict[str, Any]] = {"eps": 0.05, "projection": "gaussian"}

    def settings(self, spec: ModelSpec) -> Settings:
        sigmas = (self.get(spec, "sigma_min"), self.get(spec, "sigma_max"))
        return replace(super().settings(spec), sigmas=sigmas)  # the range of the spec's options

    def build(self, spec: ModelSpec) -> nn.Module:
        from ...scorematching.ebm import ResEBM

        self.objective_name(spec)
        self.require_images(spec, "fashion-mnist")
        spec.setdefault("eps", 0.05)
        return ResEBM(
            tuple(spec["data_shape"]),
            width=self.get(spec, "hidden"),
            depth=self.get(spec, "layers"),
            activation=self.get(spec, "activation"),
        )

    def val_name(self, spec: ModelSpec) -> str:
        return "mdsm" if self.objective_name(spec) in MULTISCALE_OBJECTIVES else "objective"

    def _mdsm(self, spec: ModelSpec) -> PerSample:
        """The per-sample multiscale DSM loss (the test metric, and validation for MDSM)."""
        s = self.settings(spec)
        prep = unit_dequantise(option(spec, "levels"))
        return lambda model: lambda b: mdsm(model, prep(b), s.sigmas, s.sigma0, reduction="none")

    def val_metric(self, spec: ModelSpec) -> ValMetric:
        if self.val_name(spec) == "mdsm":
            return self.val_mean(spec, self._mdsm(spec))
        return self.objective_metric(spec)

    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
            n = option(spec, "test_n")
            mdsm_test = evaluate_per_sample(self._mdsm(spec)(model), x, model=model, max_n=n)
            est = self.exact_sm(model, spec, x, max_n=self.exact_sm_n(spec), batch_size=8)
            return {**report("mdsm", mdsm_test), **report("exact_sm", est)}

        return metrics

    def plot(self, model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
        if not ds.is_image:
            return []
        from ... import plots

        samples = ebm_samples(model, spec, self.get(spec, "n_samples"))
        title = f"{ds.name}: ResEBM, {spec['objective']} (annealed Langevin)"
        return [plots.image_grid(samples.cpu(), out / "samples.png", None, title=title)]


def ebm_samples(model: nn.Module, spec: ModelSpec, n: int, *, seed: int = 0) -> Tensor:
    """``n`` samples of a trained ``ebm`` run by the reference's annealed Langevin schedule
    (options ``sample_*``, ``t_max``, ``t_min`` of the spec), on the model's [0, 1) data scale."""
    from ...scorematching.ebm import annealed_langevin_energy, temperature_schedule

    kind = EBMKind()
    ref = next(model.parameters())
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    temps = temperature_schedule(
        kind.get(spec, "t_max"),
        kind.get(spec, "t_min"),
        n_hold=kind.get(spec, "sample_hold"),
        n_anneal=kind.get(spec, "sample_anneal"),
        n_tail=kind.get(spec, "sample_tail"),
    )
    shape = (n, *spec["data_shape"])
    x0 = 0.5 + torch.randn(shape, dtype=ref.dtype, device=ref.device, generator=gen)
    model.eval()
    step = kind.get(spec, "sample_step")
    return annealed_langevin_energy(
        model, x0, temps, step_size=step, denoise_sigma=kind.get(spec, "sigma0"), generator=gen
    )

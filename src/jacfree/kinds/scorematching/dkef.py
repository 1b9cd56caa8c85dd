"""The ``dkef`` kind: a deep kernel exponential family (:class:`~jacfree.scorematching.dkef.DKEF`)
for continuous vectors, its kernel weights α solved in closed form on half of each batch."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from ...scorematching.dkef import DKEF
from ..registry import ModelSpec, Objective, OptionType, TestMetrics, ValMetric, option
from .base import SM_OPTIONS, SMKind, dim, report

__all__ = ["DKEFKind"]

# DKEF's own keywords, read from the spec under the same names
_DKEF_OPTIONS: dict[str, OptionType] = {
    "hidden": int,
    "n_inducing": int,
    "n_kernels": int,
    "q0_std": float,
    "log_lambda": float,
    "alpha_solve": str,
    "alpha_points": int,
    "logz_samples": int,
}


class DKEFKind(SMKind):
    """``dkef``: validated and tested by the exact SM loss at the α of all training data; the
    test NLL normalises by importance sampling (``log_z``)."""

    name = "dkef"
    summary = (
        "deep kernel exponential family (Gaussian kernels on learned features, closed-form α "
        "per step)"
    )
    flags = "--hidden feature width"
    has_density = True
    options: ClassVar[dict[str, OptionType]] = {**SM_OPTIONS, **_DKEF_OPTIONS}
    defaults: ClassVar[dict[str, Any]] = {
        "hidden": 30,
        "n_inducing": 200,
        "n_kernels": 3,
        "q0_std": 2.0,
        "log_lambda": -2.0,
        "alpha_solve": "sliced",
        "alpha_points": 4000,
        "logz_samples": 1_000_000,
    }
    val_name = "exact_sm"
    exact_sm_rows = None

    def build(self, spec: ModelSpec) -> nn.Module:
        self.objective_name(spec)
        if option(spec, "levels") or len(spec["data_shape"]) != 1:
            raise ValueError(
                "dkef models continuous vectors (e.g. --data wine-red); this dataset is quantised "
                "or not a table. Use nice or energy-mlp for images."
            )
        return DKEF(dim(spec), **self.read(spec, *_DKEF_OPTIONS))

    def objective(self, spec: ModelSpec) -> Objective:
        loss = self.loss(spec)

        def train_loss(model: nn.Module, x: Tensor) -> Tensor:
            if len(x) < 2:
                raise ValueError(
                    "dkef needs batches of at least 2 rows (half solve α, half score)."
                )
            model.remember(x)
            half = len(x) // 2
            alpha = model.solve_alpha(x[:half])
            return loss(lambda y: model.energy(y, alpha), x[half:])

        return train_loss

    def val_metric(self, spec: ModelSpec) -> ValMetric:
        def metric(model: nn.Module, x: Tensor) -> float:
            model.fitted_alpha()
            return self.exact_sm(model, spec, x).mean

        return metric

    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
            model.fitted_alpha()
            out = report("exact_sm", self.exact_sm(model, spec, x, max_n=self.exact_sm_n(spec)))
            lz = model.log_partition()
            out.update(log_z=lz.value, log_z_stderr=lz.stderr, log_z_samples=lz.n)
            out["alpha_points"] = int(model.alpha_count)
            return out

        return metrics

    def plot(self, model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
        if ds.dim != 2:
            return []
        from ... import plots

        model.eval()
        alpha = model.fitted_alpha()
        title = f"{ds.name}: DKEF, {spec['objective']}"
        return [
            plots.energy_density_2d(
                lambda p: model.log_density(p, alpha),
                ds.test,
                out / "density.png",
                like=alpha,
                title=title,
            )
        ]

r"""Score-matching model kinds of ``jacfree train``: ``energy-mlp``, ``nice``, ``dkef``, ``ncsn``.

Each kind builds its model from a spec (see :mod:`jacfree.kinds.registry`) and trains it with the
objective named by ``spec["objective"]`` (``--objective``):

=============  ==============================================  ================  ==============
kind           objectives (default first)                      validation        test metrics
=============  ==============================================  ================  ==============
energy-mlp     fd_ssm, ssm, ssm_vr, sm, dsm, fd_dsm            exact SM (d≤100)  exact SM; grid
                                                               else objective    NLL in 2-D
nice           fd_ssm, mle, ssm, ssm_vr, sm, dsm, fd_dsm       NLL (mle), exact  NLL, bits/dim,
                                                               SM (d≤100), else  exact SM
                                                               objective
dkef           fd_ssm, ssm, ssm_vr, sm, dsm, fd_dsm            exact SM          NLL (log Z by
                                                                                 IS), exact SM
ncsn           fd_ssm_vr, dsm, ssm, ssm_vr                     annealed DSM      annealed DSM,
                                                                                 annealed exact
                                                                                 SM
ebm            fd_mdsm, mdsm, fd_ssm, ssm                      MDSM (mdsm        exact SM, MDSM
                                                               objectives), else
                                                               the objective
=============  ==============================================  ================  ==============

Spec options read here (``--eps``, ``--sigma``, ``--hidden``, ``--layers``, ``--set KEY=VALUE``),
with the FD-SM paper's defaults (Pang et al., NeurIPS 2020):

* every kind: ``objective``; ``eps`` (0.1, the FD step: L2 norm of the direction); ``sigma``
  (0.1, DSM noise); ``projection`` (``"rademacher"``; ``"gaussian"`` for ncsn) and
  ``n_particles`` (1) of SSM; ``parallel`` (true: one concatenated FD batch); ``exact_sm_n``
  (rows of the test set for the exact SM loss; all when ``d ≤ 100``, else 100 — 16 for ncsn);
  ``val_metric`` (``"exact_sm"``, ``"objective"`` or, for nice, ``"nll"``).
* energy-mlp: ``hidden`` (128), ``layers`` (3 hidden layers), ``activation`` (softplus),
  ``base_std`` (none).
* nice: ``layers`` = couplings (4), ``hidden`` (8·D, between 64 and 1000), ``hidden_layers``
  (4), ``activation``.
* dkef: ``hidden`` (30), ``n_inducing`` (200), ``n_kernels`` (3), ``alpha_solve`` (sliced),
  ``alpha_points`` (4000), ``logz_samples`` (10⁶), ``q0_std`` (2), ``log_lambda`` (−2).
* ebm (:class:`~jacfree.scorematching.ebm.ResEBM`): ``hidden`` = base width (16; the paper
  128), ``layers`` = extra residual blocks per stage (1; the paper 2), ``activation``
  (nsoftplus), ``eps`` (0.05, the paper's deep-EBM FD step), ``sigma_min`` / ``sigma_max``
  (0.05 / 1.2, the per-sample MDSM noise range), ``sigma0`` (0.1), ``random_sigmas``
  (false: batch linspace),
  ``projection`` (gaussian); samples: ``sample_step`` (0.02), ``t_max`` (100), ``t_min`` (1),
  ``sample_hold`` / ``sample_anneal`` / ``sample_tail`` (500 / 2000 / 200 Langevin steps, the
  reference schedule), ``n_samples`` (64); ``test_n`` (test rows of the MDSM test metric; all).
* ncsn: ``hidden`` = channels (16), ``sigma_max`` (1), ``sigma_min`` (0.01), ``n_levels`` (10),
  ``activation`` (elu), ``sample_steps`` (Langevin steps per level of the plot, 20),
  ``step_lr`` (2e-5).

Quantised data (``spec["levels"]``): nice puts :func:`jacfree.kinds.preprocess_layers`
(dequantisation + logit) in front of the flow, so its NLL is on the original [0, levels)^D scale
like every flow's, and score matching runs in the logit space after them; energy-mlp and ncsn
dequantise to ``(x + u)/levels ∈ [0, 1)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .. import sample_noise
from ..scorematching.dkef import DKEF
from ..scorematching.energy import MLPEnergy
from ..scorematching.evaluate import Estimate, evaluate_per_sample, exact_sm_loss
from ..scorematching.losses import mdsm
from ..scorematching.ncsn import NCSN, annealed_loss
from ..scorematching.objectives import Settings, objective, objective_names
from .registry import (
    ModelKind,
    ModelSpec,
    OptionType,
    option,
    preprocess_layers,
    register_model,
)

__all__ = [
    "ENERGY_OBJECTIVES",
    "OBJECTIVES",
    "energy_loss",
    "grid_log_partition",
]

ENERGY_OBJECTIVES = ("fd_ssm", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm")
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "energy-mlp": ENERGY_OBJECTIVES,
    "nice": ("fd_ssm", "mle", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm"),
    "dkef": ENERGY_OBJECTIVES,
    "ncsn": ("fd_ssm_vr", "dsm", "ssm", "ssm_vr"),
    "ebm": ("fd_mdsm", "mdsm", "fd_ssm", "ssm"),
}
# spec options every score-matching kind reads (``jacfree train`` refuses others)
SM_OPTIONS: dict[str, OptionType] = {
    "objective": str,
    "eps": float,
    "sigma": float,
    "projection": ("rademacher", "gaussian"),
    "n_particles": int,
    "parallel": bool,
    "exact_sm_n": int | None,
    "val_metric": str,
    "val_n": int,
}
MULTISCALE_OBJECTIVES = tuple(n for n in objective_names() if "sigmas" in objective(n).reads)
_SMALL_D = 100  # exact SM (d Hessian-vector products per row) is cheap up to this dimension


def objective_name(spec: ModelSpec, kind: str) -> str:
    """``spec["objective"]`` (default: the kind's first objective), checked against the kind's
    choices; the default is written back into the spec so that checkpoints record it."""
    choices = OBJECTIVES[kind]
    name = option(spec, "objective") or choices[0]
    if name not in choices:
        raise ValueError(
            f"unknown objective {name!r} for model kind {kind!r}; choose one of "
            f"{', '.join(map(repr, choices))} (--objective NAME)."
        )
    spec["objective"] = name
    return name


def energy_loss(
    name: str,
    *,
    eps: float = 0.1,
    sigma: float = 0.1,
    projection: str = "rademacher",
    n_particles: int = 1,
    parallel: bool = True,
    sigmas: tuple[float, float] = (0.05, 1.2),
    sigma0: float = 0.1,
    random_sigmas: bool = False,
) -> Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]:
    """The score-matching loss ``loss(energy, x) -> scalar`` called ``name`` for an energy model.

    ``"sm"`` exact, ``"ssm"`` / ``"ssm_vr"`` sliced (``projection``, ``n_particles``),
    ``"fd_ssm"`` finite differences (``eps``, ``parallel``), ``"dsm"`` / ``"fd_dsm"`` denoising
    (``sigma``; ``eps`` for the FD form), ``"mdsm"`` / ``"fd_mdsm"`` multiscale denoising
    (``sigmas``, ``sigma0``, ``random_sigmas``). All SM forms target
    ``J = E[tr ∇² log p̃ + ½‖∇ log p̃‖²]``; the DSM forms ``½E‖s(x̃) + (x̃ − x)/σ²‖²`` (see
    :mod:`jacfree.scorematching.losses`). The energy objectives of
    :mod:`jacfree.scorematching.objectives`, bound to these settings.
    """
    settings = Settings(
        eps=eps,
        sigma=sigma,
        projection=projection,
        n_particles=n_particles,
        parallel=parallel,
        sigmas=sigmas,
        sigma0=sigma0,
        random_sigmas=random_sigmas,
    )
    return objective(name, "energy").bind(settings)


# spec option -> its type, for the options that are objective settings
_SETTING_TYPES: dict[str, Callable[[Any], Any]] = {
    "eps": float,
    "sigma": float,
    "projection": str,
    "n_particles": int,
    "parallel": bool,
    "sigma0": float,
    "random_sigmas": bool,
}


def _settings(spec: ModelSpec, **defaults: Any) -> Settings:
    """The objective settings of a spec: its options, else the kind's ``defaults``, else the
    :class:`~jacfree.scorematching.objectives.Settings` defaults."""
    given = {k: option(spec, k, kind=t) for k, t in _SETTING_TYPES.items()}
    given = {k: v for k, v in given.items() if v is not None}
    return Settings(**{**defaults, **given})


def _loss_from_spec(spec: ModelSpec, name: str) -> Callable[..., Tensor]:
    return objective(name, "energy").bind(_settings(spec))


def _dim(spec: ModelSpec) -> int:
    return math.prod(spec["data_shape"])


def _exact_sm_n(spec: ModelSpec, default_large: int = 100) -> int | None:
    n = option(spec, "exact_sm_n")
    if n is not None:
        return int(n)
    return None if _dim(spec) <= _SMALL_D else default_large


def _val_choice(spec: ModelSpec, allowed: tuple[str, ...], default: str) -> str:
    choice = option(spec, "val_metric", default)
    if choice not in allowed:
        raise ValueError(
            f"unknown val_metric {choice!r}; choose one of {', '.join(map(repr, allowed))}."
        )
    return choice


def _report(prefix: str, est: Estimate) -> dict[str, float]:
    return {prefix: est.mean, f"{prefix}_stderr": est.stderr, f"{prefix}_n": est.n}


def _unit_dequantise(levels: int | None) -> Callable[[Tensor], Tensor]:
    if not levels:
        return lambda x: x
    return lambda x: sample_noise.dequantise(x, levels)  # per sample in fit


# -- 2-D grid normalisation ---------------------------------------------------------------------


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


# -- energy-mlp ---------------------------------------------------------------------------------


def _build_energy(spec: ModelSpec) -> nn.Module:
    objective_name(spec, "energy-mlp")
    layers = int(option(spec, "layers") or 3)
    hidden = int(option(spec, "hidden") or 128)
    return MLPEnergy(
        tuple(spec["data_shape"]),
        hidden=(hidden,) * layers,
        activation=option(spec, "activation", "softplus"),
        base_std=option(spec, "base_std"),
    )


def _energy_objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor]:
    loss = _loss_from_spec(spec, objective_name(spec, "energy-mlp"))
    prep = _unit_dequantise(option(spec, "levels"))
    return lambda model, x: loss(model, prep(x))


def _energy_val_choice(spec: ModelSpec) -> str:
    small = _dim(spec) <= _SMALL_D
    return _val_choice(spec, ("exact_sm", "objective"), "exact_sm" if small else "objective")


def _energy_val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float]:
    objective = _energy_objective(spec)
    choice = _energy_val_choice(spec)
    prep = _unit_dequantise(option(spec, "levels"))
    n = option(spec, "val_n", 2000, int)

    def metric(model: nn.Module, x: Tensor) -> float:
        if choice == "exact_sm":
            return exact_sm_loss(model, x, max_n=n, transform=prep).mean
        est = evaluate_per_sample(
            lambda b: objective(model, b).reshape(1).expand(len(b)), x, max_n=n, model=model
        )
        return est.mean

    return metric


def _energy_test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    prep = _unit_dequantise(option(spec, "levels"))

    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        out = _report("exact_sm", exact_sm_loss(model, x, max_n=_exact_sm_n(spec), transform=prep))
        if _dim(spec) == 2:
            lo, hi = _box(x.to(next(model.parameters())))
            model.eval()
            log_z = grid_log_partition(lambda p: -model(p), lo - 1.0, hi + 1.0)
            with torch.no_grad():
                e = torch.cat([model(b.to(lo)).double().cpu() for b in x.split(10_000)])
            nll = e + log_z
            out.update(
                nll_grid_nats=float(nll.mean()),
                nll_grid_stderr_nats=float(nll.std() / math.sqrt(len(nll))),
                log_z_grid=log_z,
            )
        return out

    return metrics


def _energy_plot(model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
    if ds.dim != 2:
        return []
    from .. import plots
    from ..scorematching.sampling import energy_score, langevin

    ref = next(model.parameters())
    data = ds.test.to(ref)
    lo, hi = _box(data)
    gen = torch.Generator(device=ref.device).manual_seed(0)
    n, steps = option(spec, "plot_samples", 2000, int), option(spec, "sample_steps", 500, int)
    x0 = lo + (hi - lo) * torch.rand(n, 2, dtype=ref.dtype, device=ref.device, generator=gen)
    step = 0.01 * float(data.var(0).mean())  # Langevin step ∝ the data's variance
    model.eval()
    samples = langevin(energy_score(model), x0, step, steps, generator=gen)
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


register_model(
    "energy-mlp",
    ModelKind(
        _build_energy,
        "MLP energy E(x) (log p~ = -E) trained by score matching: --objective "
        f"{'|'.join(OBJECTIVES['energy-mlp'])}, --hidden width, --layers hidden layers, --eps, "
        "--sigma",
        objective=_energy_objective,
        val_metric=_energy_val,
        val_name=_energy_val_choice,
        test_metrics=_energy_test,
        has_density=False,
        plot=_energy_plot,
        options={
            **SM_OPTIONS,
            "hidden": int,
            "layers": int,
            "activation": str,
            "base_std": float | None,
            "plot_samples": int,
            "sample_steps": int,
        },
        sampler="by Langevin dynamics",
    ),
)


# -- nice ---------------------------------------------------------------------------------------


def _nice_width(dim: int) -> int:
    """Default hidden width of NICE: 1000 as in the paper for MNIST-sized data, scaled down with
    the data dimension (8·D, at least 64) so a 2-D toy does not get millions of parameters."""
    return min(1000, max(64, 8 * dim))


def _build_nice(spec: ModelSpec) -> nn.Module:
    from ..flows.nice import NICE

    objective_name(spec, "nice")
    return NICE(
        _dim(spec),
        couplings=int(option(spec, "layers") or 4),
        hidden=int(option(spec, "hidden") or _nice_width(_dim(spec))),
        hidden_layers=option(spec, "hidden_layers", 4, int),
        activation=option(spec, "activation", "softplus"),
        preprocess=preprocess_layers(spec),
    )


def _nice_objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor] | None:
    name = objective_name(spec, "nice")
    if name == "mle":
        return None  # fit trains on model.loss (exact maximum likelihood)
    loss = _loss_from_spec(spec, name)
    return lambda model, x: loss(model.energy, model.preprocess(x))


def _nice_val_choice(spec: ModelSpec) -> str:
    name = objective_name(spec, "nice")
    small = _dim(spec) <= _SMALL_D
    default = "nll" if name == "mle" else ("exact_sm" if small else "objective")
    return _val_choice(spec, ("nll", "exact_sm", "objective"), default)


def _nice_val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float] | None:
    name = objective_name(spec, "nice")
    choice = _nice_val_choice(spec)
    if choice == "nll":
        return None  # fit's default: the exact NLL
    n = option(spec, "val_n", 2000, int)
    if choice == "exact_sm":
        return lambda model, x: (
            exact_sm_loss(model.energy, x, max_n=n, transform=model.preprocess).mean
        )
    if name == "mle":
        raise ValueError("val_metric 'objective' needs a score-matching objective, not 'mle'.")
    objective = _nice_objective(spec)
    assert objective is not None

    def metric(model: nn.Module, x: Tensor) -> float:
        return evaluate_per_sample(
            lambda b: objective(model, b).reshape(1).expand(len(b)), x, max_n=n, model=model
        ).mean

    return metric


def _nice_test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        est = exact_sm_loss(
            model.energy, x, max_n=_exact_sm_n(spec), transform=model.preprocess, batch_size=50
        )
        return _report("exact_sm", est)

    return metrics


def _nice_plot(model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
    from .. import plots
    from .registry import data_output

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


register_model(
    "nice",
    ModelKind(
        _build_nice,
        "NICE flow (additive couplings + diagonal scaling) trained by score matching on its "
        f"energy -log p or by maximum likelihood: --objective {'|'.join(OBJECTIVES['nice'])}, "
        "--layers couplings, --hidden width",
        objective=_nice_objective,
        val_metric=_nice_val,
        val_name=_nice_val_choice,
        test_metrics=_nice_test,
        has_density=True,
        plot=_nice_plot,
        options={
            **SM_OPTIONS,
            "layers": int,
            "hidden": int,
            "hidden_layers": int,
            "activation": str,
            "logit_alpha": float,
        },
    ),
)


# -- dkef ---------------------------------------------------------------------------------------


def _build_dkef(spec: ModelSpec) -> nn.Module:
    objective_name(spec, "dkef")
    if option(spec, "levels") or len(spec["data_shape"]) != 1:
        raise ValueError(
            "dkef models continuous vectors (e.g. --data wine-red); this dataset is quantised or "
            "not a table. Use nice or energy-mlp for images."
        )
    return DKEF(
        _dim(spec),
        n_inducing=option(spec, "n_inducing", 200, int),
        hidden=int(option(spec, "hidden") or 30),
        n_kernels=option(spec, "n_kernels", 3, int),
        q0_std=option(spec, "q0_std", 2.0, float),
        log_lambda=option(spec, "log_lambda", -2.0, float),
        alpha_solve=option(spec, "alpha_solve", "sliced"),
        alpha_points=option(spec, "alpha_points", 4000, int),
        logz_samples=option(spec, "logz_samples", 1_000_000, int),
    )


def _dkef_objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor]:
    loss = _loss_from_spec(spec, objective_name(spec, "dkef"))

    def objective(model: nn.Module, x: Tensor) -> Tensor:
        if len(x) < 2:
            raise ValueError("dkef needs batches of at least 2 rows (half solve α, half score).")
        model.remember(x)
        half = len(x) // 2
        alpha = model.solve_alpha(x[:half])
        return loss(lambda y: model.energy(y, alpha), x[half:])

    return objective


def _dkef_val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float]:
    def metric(model: nn.Module, x: Tensor) -> float:
        model.fitted_alpha()
        return exact_sm_loss(model, x).mean

    return metric


def _dkef_test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        model.fitted_alpha()
        out = _report("exact_sm", exact_sm_loss(model, x, max_n=option(spec, "exact_sm_n")))
        lz = model.log_partition()
        out.update(log_z=lz.value, log_z_stderr=lz.stderr, log_z_samples=lz.n)
        out["alpha_points"] = int(model.alpha_count)
        return out

    return metrics


def _dkef_plot(model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
    if ds.dim != 2:
        return []
    from .. import plots

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


register_model(
    "dkef",
    ModelKind(
        _build_dkef,
        "deep kernel exponential family (Gaussian kernels on learned features, closed-form α "
        f"per step): --objective {'|'.join(OBJECTIVES['dkef'])}, --hidden feature width",
        objective=_dkef_objective,
        val_metric=_dkef_val,
        val_name="exact_sm",
        test_metrics=_dkef_test,
        has_density=True,
        plot=_dkef_plot,
        options={
            **SM_OPTIONS,
            "hidden": int,
            "n_inducing": int,
            "n_kernels": int,
            "q0_std": float,
            "log_lambda": float,
            "alpha_solve": str,
            "alpha_points": int,
            "logz_samples": int,
        },
        sampler="by Langevin dynamics",
    ),
)


# -- ncsn ---------------------------------------------------------------------------------------


def _build_ncsn(spec: ModelSpec) -> nn.Module:
    objective_name(spec, "ncsn")
    if len(spec["data_shape"]) != 3:
        raise ValueError(
            "ncsn models images (data of shape C x H x W, e.g. --data mnist-5k); use energy-mlp "
            "for vectors."
        )
    return NCSN(
        tuple(spec["data_shape"]),
        channels=int(option(spec, "hidden") or 16),
        sigma_max=option(spec, "sigma_max", 1.0, float),
        sigma_min=option(spec, "sigma_min", 0.01, float),
        n_levels=option(spec, "n_levels", 10, int),
        levels=option(spec, "levels"),
        activation=option(spec, "activation", "elu"),
    )


def _ncsn_objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor]:
    name = objective_name(spec, "ncsn")
    s = _settings(spec, projection="gaussian")
    return lambda model, x: annealed_loss(
        model,
        model.preprocess(x),
        name,
        eps=s.eps,
        projection=s.projection,
        n_particles=s.n_particles,
    )


def _ncsn_per_sample(name: str) -> Callable[[nn.Module], Callable[[Tensor], Tensor]]:
    return lambda model: lambda b: annealed_loss(model, model.preprocess(b), name, reduction="none")


def _ncsn_val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float]:
    n = option(spec, "val_n", 2000, int)
    return lambda model, x: (
        evaluate_per_sample(_ncsn_per_sample("dsm")(model), x, max_n=n, model=model).mean
    )


def _ncsn_test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        out = _report("dsm", evaluate_per_sample(_ncsn_per_sample("dsm")(model), x, model=model))
        sm = evaluate_per_sample(
            _ncsn_per_sample("sm")(model),
            x,
            max_n=_exact_sm_n(spec, 16),
            batch_size=4,
            model=model,
        )
        out.update(_report("exact_sm", sm))
        return out

    return metrics


def _ncsn_plot(model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
    if not ds.is_image:
        return []
    from .. import plots

    model.eval()
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
    samples = model.sample(
        64,
        n_steps_each=option(spec, "sample_steps", 20, int),
        step_lr=option(spec, "step_lr", 2e-5, float),
        generator=gen,
    )
    title = f"{ds.name}: NCSN, {spec['objective']} (annealed Langevin)"
    return [plots.image_grid(samples.cpu(), out / "samples.png", ds.levels, title=title)]


register_model(
    "ncsn",
    ModelKind(
        _build_ncsn,
        "noise-conditional score network for images, sampled by annealed Langevin dynamics: "
        f"--objective {'|'.join(OBJECTIVES['ncsn'])}, --hidden channels",
        objective=_ncsn_objective,
        val_metric=_ncsn_val,
        val_name="dsm",
        test_metrics=_ncsn_test,
        has_density=False,
        plot=_ncsn_plot,
        options={
            **{k: v for k, v in SM_OPTIONS.items() if k not in ("sigma", "parallel")},
            "hidden": int,
            "sigma_max": float,
            "sigma_min": float,
            "n_levels": int,
            "activation": str,
            "sample_steps": int,
            "step_lr": float,
        },
        sampler="by annealed Langevin dynamics",
    ),
)


# -- ebm ----------------------------------------------------------------------------------------


def _ebm_settings(spec: ModelSpec) -> Settings:
    lo, hi = option(spec, "sigma_min", 0.05, float), option(spec, "sigma_max", 1.2, float)
    return _settings(spec, eps=0.05, projection="gaussian", sigmas=(lo, hi))


def _build_ebm(spec: ModelSpec) -> nn.Module:
    from ..scorematching.ebm import ResEBM

    objective_name(spec, "ebm")
    if len(spec["data_shape"]) != 3:
        raise ValueError(
            "ebm models images (data of shape C x H x W, e.g. --data fashion-mnist); use "
            "energy-mlp for vectors."
        )
    spec.setdefault("eps", 0.05)
    return ResEBM(
        tuple(spec["data_shape"]),
        width=int(option(spec, "hidden") or 16),
        depth=option(spec, "layers", 1, int),
        activation=option(spec, "activation", "nsoftplus"),
    )


def _ebm_objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor]:
    loss = objective(objective_name(spec, "ebm")).bind(_ebm_settings(spec))
    prep = _unit_dequantise(option(spec, "levels"))
    return lambda model, x: loss(model, prep(x))


def _ebm_val_name(spec: ModelSpec) -> str:
    return "mdsm" if objective_name(spec, "ebm") in MULTISCALE_OBJECTIVES else "objective"


def _ebm_per_sample(spec: ModelSpec, name: str) -> Callable[[nn.Module], Callable[..., Tensor]]:
    opts = _ebm_settings(spec)
    prep = _unit_dequantise(option(spec, "levels"))
    if name == "mdsm":
        return lambda model: (
            lambda b: mdsm(model, prep(b), opts.sigmas, opts.sigma0, reduction="none")
        )
    loss = objective(objective_name(spec, "ebm")).bind(opts)
    return lambda model: lambda b: loss(model, prep(b)).reshape(1).expand(len(b))


def _ebm_val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float]:
    n = option(spec, "val_n", 1000, int)
    per_sample = _ebm_per_sample(spec, _ebm_val_name(spec))
    return lambda model, x: evaluate_per_sample(per_sample(model), x, max_n=n, model=model).mean


def _ebm_test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    prep = _unit_dequantise(option(spec, "levels"))

    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        n = option(spec, "test_n")
        per_sample = _ebm_per_sample(spec, "mdsm")(model)
        out = _report("mdsm", evaluate_per_sample(per_sample, x, model=model, max_n=n))
        est = exact_sm_loss(model, x, max_n=_exact_sm_n(spec, 16), transform=prep, batch_size=8)
        out.update(_report("exact_sm", est))
        return out

    return metrics


def ebm_samples(model: nn.Module, spec: ModelSpec, n: int, *, seed: int = 0) -> Tensor:
    """``n`` samples of a trained ``ebm`` run by the reference's annealed Langevin schedule
    (options ``sample_*``, ``t_max``, ``t_min`` of the spec), on the model's [0, 1) data scale."""
    from ..scorematching.ebm import annealed_langevin_energy, temperature_schedule

    ref = next(model.parameters())
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    temps = temperature_schedule(
        option(spec, "t_max", 100.0, float),
        option(spec, "t_min", 1.0, float),
        n_hold=option(spec, "sample_hold", 500, int),
        n_anneal=option(spec, "sample_anneal", 2000, int),
        n_tail=option(spec, "sample_tail", 200, int),
    )
    shape = (n, *spec["data_shape"])
    x0 = 0.5 + torch.randn(shape, dtype=ref.dtype, device=ref.device, generator=gen)
    model.eval()
    return annealed_langevin_energy(
        model,
        x0,
        temps,
        step_size=option(spec, "sample_step", 0.02, float),
        denoise_sigma=option(spec, "sigma0", 0.1, float),
        generator=gen,
    )


def _ebm_plot(model: nn.Module, ds: Any, spec: ModelSpec, out: Path) -> list[Path]:
    if not ds.is_image:
        return []
    from .. import plots

    samples = ebm_samples(model, spec, option(spec, "n_samples", 64, int))
    title = f"{ds.name}: ResEBM, {spec['objective']} (annealed Langevin)"
    return [plots.image_grid(samples.cpu(), out / "samples.png", None, title=title)]


register_model(
    "ebm",
    ModelKind(
        _build_ebm,
        "residual energy network with a quadratic head for images (the FD-SM paper's deep EBM), "
        f"sampled by annealed Langevin: --objective {'|'.join(OBJECTIVES['ebm'])}, --hidden "
        "base width, --layers blocks per stage, --eps",
        objective=_ebm_objective,
        val_metric=_ebm_val,
        val_name=_ebm_val_name,
        test_metrics=_ebm_test,
        has_density=False,
        plot=_ebm_plot,
        options={
            **{k: v for k, v in SM_OPTIONS.items() if k != "sigma"},
            "hidden": int,
            "layers": int,
            "activation": str,
            "sigma_min": float,
            "sigma_max": float,
            "sigma0": float,
            "random_sigmas": bool,
            "test_n": int | None,
            "sample_step": float,
            "t_max": float,
            "t_min": float,
            "sample_hold": int,
            "sample_anneal": int,
            "sample_tail": int,
            "n_samples": int,
        },
        sampler="by annealed Langevin dynamics",
    ),
)

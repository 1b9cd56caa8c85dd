r"""``jacfree bench sm``: time and memory of one training step, autograd score matching vs its
finite-difference forms (Pang et al., NeurIPS 2020, Figure 3), parallel and sequential, per model
(:data:`MODELS`); the memory measures are :mod:`jacfree.bench.memory`'s. What it measures, the
targets and the figures: ``docs/bench-sm.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_int
from ..data import load
from ..plots import pyplot, save_figure
from ..scorematching import DKEF, NCSN, NICE, MLPEnergy
from ..scorematching.ebm import ResEBM
from ..scorematching.ncsn import annealed_loss
from ..scorematching.objectives import LABELS, SM_OBJECTIVES, ModelType, Settings, objective
from . import common
from .common import ENV_NAME, PLOT_HINT, PROFILE_COLUMNS, STAT_COLUMNS
from .memory import MEMORY_DEFINITIONS, MIB, MemoryStats, measure_memory, state_bytes
from .runner import TimingOptions, check_run, run_variants, setup_columns
from .step import TrainingStep

DEFAULT_OUT = Path("bench-results") / "sm"
CSV_NAME = "sm.csv"
PLOT_NAME = "sm.png"

EPS = 0.1  # FD step (L2 norm of the direction), the paper's DKEF/NICE/NCSN value
SIGMA = 0.1  # DSM noise level
DATA_HELP = "a dataset of dimension D (default mnist-5k) or 'gaussian'"
OPTIMIZER = "jacfree.train.make_adam (lr 1e-4; 1e-2 for dkef)"

#: model name -> one-line description (see the module docs)
MODELS: dict[str, str] = {
    "mlp": "MLP energy D->H->H->1 (softplus)",
    "mlp-ref": "MLP energy D->H->H->1 (softplus), objectives in plain PyTorch (reference code)",
    "scorenet": "MLP score network D->H->H->D (softplus)",
    "ncsn": "NCSN U-Net score network (16 channels), annealed sigma^2-weighted objective",
    "nice": "NICE energy -log p (4 additive couplings, 4 hidden layers of width H, softplus)",
    "dkef": "DKEF on wine-red (200 inducing points, 3 kernels, width-30 features), alpha solved "
    "per step",
    "ebm": "ResEBM deep energy on 28x28 images (base width 16, 1 block per stage; the paper's "
    "128 and 2), multiscale DSM",
}
DEFAULT_MODELS: tuple[str, ...] = ("mlp", "mlp-ref", "scorenet", "nice", "dkef", "ncsn", "ebm")

#: autograd baseline of each pair -> its FD form (from the objective registry)
PAIRS: dict[str, str] = {o.baseline: o.name for o in SM_OBJECTIVES if o.baseline}
#: minimum speed-up of the parallel FD form over the pair's baseline (the library's targets)
TARGETS: dict[str, float] = {"ssm": 1.7, "ssm_vr": 1.3, "dsm": 1.0, "mdsm": 1.0}


@dataclass(frozen=True)
class Variant:
    """One timed objective of a ``pair``; ``parallel``: the FD evaluation mode (``None`` for
    autograd), ``name``: the CSV key (``_seq`` marks the sequential FD form)."""

    objective: str
    pair: str
    parallel: bool | None = None

    @property
    def name(self) -> str:
        return self.objective + ("_seq" if self.parallel is False else "")

    @property
    def fd(self) -> bool:
        return self.objective.startswith("fd_")

    @property
    def label(self) -> str:
        mode = {None: "", True: " (parallel)", False: " (sequential)"}[self.parallel]
        return LABELS[self.objective] + mode


def _pair_variants(pair: str, extra: Sequence[str] = ()) -> tuple[Variant, ...]:
    fd = PAIRS[pair]
    return (
        Variant(pair, pair),
        *(Variant(e, pair) for e in extra),
        Variant(fd, pair, True),
        Variant(fd, pair, False),
    )


ENERGY_VARIANTS = (*_pair_variants("ssm", ("ssm_vr",)), *_pair_variants("dsm"))
SCORE_VARIANTS = _pair_variants("ssm_vr")
EBM_VARIANTS = _pair_variants("mdsm")
#: variants timed per model kind
VARIANTS = {"energy": ENERGY_VARIANTS, "score": SCORE_VARIANTS, "ebm": EBM_VARIANTS}

#: columns of ``sm.csv``, in order
CSV_COLUMNS = ("model", "pair", "variant", "label", "objective", "fd", "parallel", *STAT_COLUMNS)
CSV_COLUMNS += ("speedup", "peak_mib", "graph_mib", "peak_ratio", "graph_ratio", "cuda_peak_mib")
CSV_COLUMNS += ("target_speedup", "meets_target", "dim", "batch", "hidden", "params", "state_mib")
CSV_COLUMNS += ("data", "warmup", "optimizer", "device", "dtype", "threads", "clock")
CSV_COLUMNS += ("description", *PROFILE_COLUMNS)


# -- models ---------------------------------------------------------------------------------


@dataclass
class BenchCase:
    """One model of the benchmark: the module, its batches and one loss per variant."""

    name: str
    module: nn.Module
    batches: list[Tensor]
    losses: dict[str, Callable[[Tensor], Tensor]]
    variants: tuple[Variant, ...]
    dim: int
    batch: int
    hidden: int | None
    data: str
    lr: float = 1e-4
    description: str = ""

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def _library_losses(
    variants: Sequence[Variant],
    model: ModelType,
    settings: Settings,
    prepare: Callable[[Tensor], tuple[Callable[..., Tensor], Tensor]],
) -> dict[str, Callable[[Tensor], Tensor]]:
    """One loss per variant from the objective registry: ``prepare(x) -> (model, points)``
    (DKEF solves α on half the batch and scores the other half; others return ``x``)."""

    def make(v: Variant) -> Callable[[Tensor], Tensor]:
        loss = objective(v.objective, model).bind(
            replace(settings, parallel=v.parallel is not False)
        )
        return lambda x: loss(*prepare(x))

    return {v.name: make(v) for v in variants}


def _energy_losses(
    prepare: Callable[[Tensor], tuple[Callable[..., Tensor], Tensor]], projection: str
) -> dict[str, Callable[[Tensor], Tensor]]:
    """Losses of :data:`ENERGY_VARIANTS` (ε = 0.1, σ = 0.1)."""
    settings = Settings(eps=EPS, sigma=SIGMA, projection=projection)
    return _library_losses(ENERGY_VARIANTS, "energy", settings, prepare)


def _score_losses(net: nn.Module) -> dict[str, Callable[[Tensor], Tensor]]:
    """Losses of :data:`SCORE_VARIANTS` (an :class:`NCSN`'s: the annealed, σ²-weighted form)."""
    if not isinstance(net, NCSN):
        settings = Settings(eps=EPS, projection="gaussian")
        return _library_losses(SCORE_VARIANTS, "score", settings, lambda x: (net, x))
    return {
        v.name: lambda x, v=v: annealed_loss(
            net, x, v.objective, eps=EPS, projection="gaussian", parallel=v.parallel is not False
        )
        for v in SCORE_VARIANTS
    }


# plain-PyTorch objectives, written as in the reference code (no checks, no library helpers)


def _plain_ssm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    v = torch.randn_like(x)
    logp = -f(x)
    (s,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
    sv = (s * v).sum(-1)
    (hv,) = torch.autograd.grad(sv.sum(), x, create_graph=True)
    return ((hv * v).sum(-1) + 0.5 * sv**2).mean()


def _plain_sphere(x: Tensor) -> Tensor:
    g = torch.randn_like(x)
    return g * (EPS / g.norm(dim=-1, keepdim=True))


def _plain_fd_ssm(f: Callable[[Tensor], Tensor], x: Tensor, parallel: bool) -> Tensor:
    v = _plain_sphere(x)
    if parallel:
        e0, ep, em = f(torch.cat([x, x + v, x - v])).chunk(3)
    else:
        e0, ep, em = f(x), f(x + v), f(x - v)
    d = x.shape[-1]
    return (d / EPS**2 * ((ep - em) ** 2 / 8 + 2 * e0 - ep - em)).mean()


def _plain_dsm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    n = torch.randn_like(x)
    xt = (x + SIGMA * n).requires_grad_(True)
    (s,) = torch.autograd.grad(-f(xt).sum(), xt, create_graph=True)
    return 0.5 * (s + n / SIGMA).square().sum(-1).mean()


def _plain_fd_dsm(f: Callable[[Tensor], Tensor], x: Tensor, parallel: bool) -> Tensor:
    n = torch.randn_like(x)
    xt = x + SIGMA * n
    v = _plain_sphere(x)
    if parallel:
        ep, em = f(torch.cat([xt + v, xt - v])).chunk(2)
    else:
        ep, em = f(xt + v), f(xt - v)
    proj = 0.5 * (em - ep) + (v * n).sum(-1) / SIGMA
    d = x.shape[-1]
    return (d / (2 * EPS**2) * proj**2).mean()


#: the plain-PyTorch objective of each variant: ``(f, x, parallel) -> loss``
_PLAIN: dict[str, Callable[..., Tensor]] = {
    "ssm": lambda f, x, _: _plain_ssm(f, x),
    "fd_ssm": _plain_fd_ssm,
    "dsm": lambda f, x, _: _plain_dsm(f, x),
    "fd_dsm": _plain_fd_dsm,
}


def _plain_losses(net: nn.Module) -> dict[str, Callable[[Tensor], Tensor]]:
    def f(y: Tensor) -> Tensor:
        return net(y).squeeze(-1)

    return {
        v.name: lambda x, p=bool(v.parallel), loss=_PLAIN[v.objective]: loss(f, x, p)
        for v in ENERGY_VARIANTS
        if v.objective in _PLAIN
    }


@dataclass(frozen=True)
class CaseSettings:
    """Sizes, data and placement of the benchmark models (the options of :func:`build_case`;
    the command-line options of the same names)."""

    dim: int = 784
    hidden: int = 1000
    batch: int = 128
    data: str = "mnist-5k"
    dkef_batch: int = 200
    n_batches: int = 4
    seed: int = 0
    device: torch.device | str = "cpu"
    dtype: torch.dtype = torch.float32


def _dkef_case(s: CaseSettings, gen: torch.Generator) -> BenchCase:
    """DKEF on wine-red: each step solves α on one half of the batch and scores the other."""
    ds = load("wine-red")
    rows = ds.train
    B = s.dkef_batch
    if not 4 <= B <= len(rows):
        raise ValueError(
            f"--dkef-batch must be between 4 and {len(rows)} (the wine-red training rows), got {B}."
        )
    dkef = DKEF(ds.dim)
    perm = torch.randperm(len(rows), generator=gen)
    order = perm[torch.arange(s.n_batches * B) % len(rows)]  # wraps round if too few rows
    batches = list(rows[order].split(B))
    dkef.remember(batches[0])  # inducing points from the data (first batch), as in training

    def energy_of(x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        half = x.shape[0] // 2
        alpha = dkef.solve_alpha(x[:half])
        return (lambda y: dkef.energy(y, alpha)), x[half:]

    losses = _energy_losses(energy_of, "rademacher")
    return BenchCase(
        "dkef", dkef, batches, losses, ENERGY_VARIANTS, ds.dim, B, 30, "wine-red", 1e-2
    )


def _data_batches(
    s: CaseSettings, gen: torch.Generator
) -> tuple[list[Tensor], tuple[int, ...], int | None]:
    """``n_batches`` batches of B rows of ``data`` on the unit scale, the shape of a sample and
    the number of quantisation levels of the data (``None``: continuous)."""
    for value, what in ((s.dim, "--dim"), (s.hidden, "--hidden"), (s.batch, "--batch")):
        check_positive_int(value, what)
    n, levels = s.batch * s.n_batches, None
    if s.data == "gaussian":
        raw = torch.randn(n, s.dim, generator=gen)
    else:
        ds = load(s.data)
        if ds.dim != s.dim:
            raise ValueError(
                f"dataset {s.data!r} has D = {ds.dim}, but --dim {s.dim} was asked for; use --dim "
                f"{ds.dim}, or --data gaussian for synthetic data of any dimension."
            )
        raw, levels = ds.train[:n].to(torch.float32), ds.levels
    shape = tuple(raw.shape[1:])
    if levels:  # quantised values -> (x + u) / levels in [0, 1): uniform dequantisation
        raw = (raw + torch.rand(raw.shape, generator=gen)) / levels
    batches = list(raw.split(s.batch))[: s.n_batches]
    if len(batches[-1]) < s.batch:
        raise ValueError(
            f"{s.data!r} holds too few rows for {s.n_batches} batches of {s.batch}; lower --batch."
        )
    return batches, shape, levels


def _image_shape(name: str, dim: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    side = math.isqrt(dim)
    if side * side != dim or side < 4:
        raise ValueError(
            f"{name} models square images: --dim must be a square >= 16 (784 = 28x28), got {dim}."
        )
    return (1, side, side) if len(shape) != 3 else shape


def _data_case(name: str, s: CaseSettings, gen: torch.Generator) -> BenchCase:
    """The D-dimensional models: ``mlp``, ``mlp-ref``, ``scorenet``, ``nice``, ``ebm``, ``ncsn``."""
    batches, shape, levels = _data_batches(s, gen)
    flat = [b.reshape(len(b), -1) for b in batches]
    H, sizes = s.hidden, (s.dim, s.batch)
    if name in ("mlp", "mlp-ref"):
        energy = MLPEnergy(s.dim, hidden=(H, H))
        if name == "mlp":
            losses = _energy_losses(lambda y: (energy, y), "gaussian")
            variants = ENERGY_VARIANTS
        else:
            losses = _plain_losses(energy.net)
            variants = tuple(v for v in ENERGY_VARIANTS if v.name in losses)
        return BenchCase(name, energy, flat, losses, variants, *sizes, H, s.data)
    if name == "scorenet":
        # the MLP score model of the paper's implicit-encoder VAE/WAE runs, at the energy's size
        layers = (nn.Linear(s.dim, H), nn.Softplus(), nn.Linear(H, H), nn.Softplus())
        net = nn.Sequential(*layers, nn.Linear(H, s.dim))
        return BenchCase(name, net, flat, _score_losses(net), SCORE_VARIANTS, *sizes, H, s.data)
    if name == "nice":
        nice = NICE(s.dim, couplings=4, hidden=H, hidden_layers=4)
        if levels:  # logit space of the dequantised images, as NICE is trained on MNIST
            flat = [torch.logit(b.clamp(1e-3, 1 - 1e-3)) for b in flat]
        losses = _energy_losses(lambda y: (nice.energy, y), "rademacher")
        return BenchCase(name, nice, flat, losses, ENERGY_VARIANTS, *sizes, H, s.data)
    img = _image_shape(name, s.dim, shape)
    imgs = [b.reshape(len(b), *img) for b in batches]
    if name == "ebm":
        ebm = ResEBM(img, width=16, depth=1)
        # the paper's deep-EBM settings: σ_b = linspace(0.05, 1.2), σ0 = 0.1, ε = 0.05
        losses = _library_losses(EBM_VARIANTS, "energy", Settings(eps=0.05), lambda x: (ebm, x))
        return BenchCase(name, ebm, imgs, losses, EBM_VARIANTS, *sizes, 16, s.data)
    ncsn = NCSN(img, channels=16)
    losses = _score_losses(ncsn)
    return BenchCase(name, ncsn, imgs, losses, SCORE_VARIANTS, *sizes, 16, s.data)


def build_case(name: str, settings: CaseSettings | None = None, **options: Any) -> BenchCase:
    """Build the model, the pre-generated batches and the losses of benchmark model ``name``;
    ``settings`` or its fields as keyword arguments (:class:`CaseSettings`)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}.")
    s = settings or CaseSettings(**options)
    gen = torch.Generator().manual_seed(s.seed)
    torch.manual_seed(s.seed)
    case = _dkef_case(s, gen) if name == "dkef" else _data_case(name, s, gen)
    case.description = MODELS[name]
    case.module.to(device=s.device, dtype=s.dtype)
    case.batches = [b.to(device=s.device, dtype=s.dtype) for b in case.batches]
    return case


# -- the benchmark ----------------------------------------------------------------------------


def sm_benchmark(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    memory: bool = True,
    timing: TimingOptions | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Time (and with ``memory``, measure the memory of: eager steps only) one full training step
    per model of ``models`` (:data:`MODELS`) and variant.

    ``options``: the fields of :class:`CaseSettings` and, without ``timing``, those of
    :class:`~jacfree.bench.timing.TimingOptions` (``budget``: seconds per model, default 20).
    Returns one dict per (model, variant) with the columns of :data:`CSV_COLUMNS`, times in ms,
    memory in MiB; ``speedup`` and the ``*_ratio`` columns compare with the pair's baseline.
    """
    models = list(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"unknown or no models {bad or models}; choose from {', '.join(MODELS)}.")
    if len(set(models)) != len(models):
        raise ValueError(f"models must be distinct, got {models}.")
    names = CaseSettings.__dataclass_fields__
    settings = CaseSettings(**{k: v for k, v in options.items() if k in names})
    timing = TimingOptions.of(timing, {k: v for k, v in options.items() if k not in names}, 20.0)
    why = " (the FD forms refuse half precision: the differences cancel leading digits)"
    device = check_run(settings.device, settings.dtype, why, n_batches=settings.n_batches)
    settings = dataclasses.replace(settings, device=device)
    rows: list[dict[str, Any]] = []
    for name in models:
        case = build_case(name, settings)
        rows += _run_case(case, timing, settings, memory)
        del case
        gc.collect()
    return rows


def _shared_steps(case: BenchCase, compile: str | None) -> dict[str, TrainingStep]:
    """One step per variant, all training ``case.module`` with ONE optimiser and snapshot."""
    steps: dict[str, TrainingStep] = {}
    shared: dict[str, Any] = {"compile": compile}
    for v in case.variants:
        loss = case.losses[v.name]
        steps[v.name] = step = TrainingStep(
            case.module, v.name, case.batches, case.lr, loss_fn=loss, **shared
        )
        shared |= {"optimizer": step.optimizer, "initial": step.initial}
    return steps


def _run_case(
    case: BenchCase, timing: TimingOptions, settings: CaseSettings, memory: bool
) -> list[dict[str, Any]]:
    device = torch.device(settings.device)
    steps = _shared_steps(case, timing.compile)
    first = steps[case.variants[0].name]
    timing.say(f"[sm] {case.name}: D={case.dim}, B={case.batch}, {case.params:,} parameters")
    hint = "Try --dtype float64 or a smaller --hidden."
    stats = run_variants(steps, timing, device, what=case.name, label="sm", hint=hint)
    mem: dict[str, MemoryStats] = {}
    if memory and timing.compile is None:
        timing.say(f"[sm] {case.name}: measuring memory ...")
        mem = {k: measure_memory(s, device) for k, s in steps.items()}
    first.reset()
    state = state_bytes(first) / MIB
    setup = {"state_mib": state, **setup_columns(timing, device, settings.dtype)}
    return [{**_row(case, v, stats, mem), **setup} for v in case.variants]


def _row(
    case: BenchCase,
    v: Variant,
    stats: dict[str, dict[str, Any]],
    mem: dict[str, MemoryStats],
) -> dict[str, Any]:
    """The CSV row of variant ``v``: timing, speed-up and memory against its pair's baseline."""
    m, mb = mem.get(v.name), mem.get(v.pair)
    target = TARGETS[v.pair] if v.fd and v.parallel else None
    speedup = stats[v.pair]["median_ms"] / stats[v.name]["median_ms"]
    ok = None if target is None else speedup >= target
    if ok is not None and m is not None and mb is not None:
        ok = ok and m.peak < mb.peak
    variant = {k: getattr(v, k) for k in ("pair", "name", "label", "objective", "fd", "parallel")}
    variant["variant"] = variant.pop("name")
    sizes = {k: getattr(case, k) for k in ("dim", "batch", "hidden", "params", "data")}
    return {
        "model": case.name,
        **variant,
        **stats[v.name],
        "speedup": speedup,
        "peak_mib": None if m is None else m.peak / MIB,
        "graph_mib": None if m is None else m.graph / MIB,
        "peak_ratio": None if m is None or mb is None or not mb.peak else m.peak / mb.peak,
        "graph_ratio": None if m is None or mb is None or not mb.graph else m.graph / mb.graph,
        "cuda_peak_mib": None if m is None or m.cuda_peak is None else m.cuda_peak / MIB,
        "target_speedup": target,
        "meets_target": ok,
        **sizes,
        "description": case.description,
    }


# -- analysis and outputs ---------------------------------------------------------------------


def check_targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per parallel FD variant: its speed-up and peak memory against its target."""
    lines = []
    base_rows = {(r["model"], r["variant"]): r for r in rows}
    for r in rows:
        if r.get("target_speedup") is None:
            continue
        base = base_rows.get((r["model"], r["pair"]))
        mem = ""
        if r.get("peak_ratio") is not None and base is not None:
            mem = (
                f"; peak memory {r['peak_mib']:.3g} vs {base['peak_mib']:.3g} MiB "
                f"({r['peak_ratio']:.2f}x, target < 1)"
            )
        verdict = "met" if r["meets_target"] else "MISSED"
        lines.append(
            f"{r['model']:>8}  {r['label'].split(' (')[0]} vs {LABELS[r['pair']]}: "
            f"{r['speedup']:.2f}x faster (target >= {r['target_speedup']:g}){mem}  [{verdict}]"
        )
    return lines


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Text table: per model, every variant's median ms, IQR, speed-up and memory; a blank line
    between pairs."""
    header = ["model", "variant", "ms/step", "IQR ms", "speed-up"]
    header += ["peak MiB", "peak/base", "graph MiB", "graph/base"]
    keys = ("median_ms", "iqr_ms", "speedup", "peak_mib", "peak_ratio", "graph_mib", "graph_ratio")
    lines = [[r["model"], r["label"], *(_fmt(r[k], ".2f") for k in keys)] for r in rows]
    table = common.text_table(header, lines, left=2)
    out = table[:1]
    for i, r in enumerate(rows):
        if i and (r["model"], r["pair"]) != (rows[i - 1]["model"], rows[i - 1]["pair"]):
            out.append("")
        out.append(table[i + 1])
    return "\n".join(out)


def write_outputs(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    config: dict[str, Any] | None = None,
    plot: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Write ``sm.csv``, ``environment.json`` and (unless ``plot=False``) ``sm.png``."""
    record = {
        "config": config or {},
        "memory_definitions": MEMORY_DEFINITIONS,
        "targets": {
            "speedup_of_parallel_fd": {f"fd_{k}_vs_{k}": v for k, v in TARGETS.items()},
            "peak_memory": "lower than the baseline's",
            "checks": check_targets(rows),
        },
    }
    title = f"score matching, full training step (Adam): {common.describe_rows(rows)}"
    plots = {"plot": (PLOT_NAME, lambda path: plot_sm(rows, path, title))}
    csvs = {"csv": (CSV_NAME, rows, CSV_COLUMNS)}
    return common.write_results(out, csvs, record, device=device, plots=plots if plot else None)


#: colour and legend of the autograd baselines, the parallel and the sequential FD forms
_KINDS = (("C3", "autograd (the pair's baseline: its first bar)"), ("C0", "FD, parallel"))
_KINDS += (("C2", "FD, sequential"),)


def plot_sm(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Horizontal bars: median ms per step (left) and peak MiB (right), one row per variant."""
    plt = pyplot(PLOT_HINT)
    fig, (ax_t, ax_m) = plt.subplots(
        1, 2, figsize=(11, 0.32 * len(rows) + 1.6), sharey=True, layout="constrained"
    )
    ys = list(range(len(rows)))[::-1]
    colors = [_KINDS[0 if not r["fd"] else 1 if r["parallel"] else 2][0] for r in rows]
    med = [r["median_ms"] for r in rows]
    notes = [f"{r['speedup']:.2f}x" if r["fd"] else None for r in rows]
    label = "ms per training step (median; whiskers: IQR)\nlabels: speed-up vs baseline"
    common.hbars(ax_t, ys, med, notes, label, color=colors)
    err = [[r["median_ms"] - r["q1_ms"] for r in rows], [r["q3_ms"] - r["median_ms"] for r in rows]]
    ax_t.errorbar(med, ys, xerr=err, fmt="none", ecolor="k", lw=0.8)
    ax_t.set_yticks(ys, [f"{r['model']}: {r['label']}" for r in rows], fontsize=7)
    peaks = [r["peak_mib"] for r in rows]
    if None in peaks:
        ax_m.text(0.5, 0.5, "memory not measured", ha="center", transform=ax_m.transAxes)
    else:
        ok = [r["fd"] and r["peak_ratio"] is not None for r in rows]
        notes = [f"{r['peak_ratio']:.2f}x" if o else None for r, o in zip(rows, ok, strict=True)]
        label = "peak MiB allocated by the step\nlabels: ratio to the baseline's"
        common.hbars(ax_m, ys, peaks, notes, label, color=colors)
    from matplotlib.patches import Patch

    handles = [Patch(color=c, label=text) for c, text in _KINDS]
    fig.legend(handles=handles, fontsize=7, loc="outside lower center", ncols=3)
    fig.suptitle(title or "score matching: full training step", fontsize=10)
    return save_figure(fig, path, dpi=120)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jacfree bench sm``."""
    description = (
        "Time and memory of one full training step (zero_grad, objective, backward, Adam) of "
        "autograd score matching (SSM, SSM-VR, DSM) vs its finite-difference forms (Pang et al. "
        "2020), parallel and sequential, interleaved, per model."
    )
    models = f"models, space- or comma-separated, among {', '.join(MODELS)}"
    options: list[common.Option] = [
        ("--models", common.choice_list(MODELS, "model(s)"), DEFAULT_MODELS, models),
        ("--batch", int, 128, "batch size B (default 128)"),
        ("--dkef-batch", int, 200, "batch of dkef (default 200 = 100 + 100)"),
        ("--dim", int, 784, "D of mlp, scorenet, nice, ncsn (default 784)"),
        ("--hidden", int, 1000, "hidden width H of mlp, scorenet, nice (1000)"),
        ("--data", str, "mnist-5k", f"data of the D-dim. models: {DATA_HELP}"),
        ("--no-memory", bool, False, "skip the memory measurement"),
        ("--strict", bool, False, "exit with status 1 if a parallel FD form misses its target"),
    ]
    outputs = f"{CSV_NAME}, {PLOT_NAME}, {ENV_NAME}"
    out = (DEFAULT_OUT, outputs)
    common.add_timing_arguments(parser, description, options, 20.0, "model", out)


def run(args: argparse.Namespace) -> int:
    """Run ``jacfree bench sm``: benchmark, print the table and the target checks, write files."""
    timing, setup, recorded = common.start(args)
    sizes = {"dim": args.dim, "hidden": args.hidden, "batch": args.batch}
    sizes |= {"dkef_batch": args.dkef_batch, "data": args.data}
    config = {"models": args.models, **sizes, "eps": EPS, "sigma": SIGMA, **recorded}
    config |= {"memory": not args.no_memory, "optimizer": OPTIMIZER}
    rows = sm_benchmark(args.models, memory=not args.no_memory, timing=timing, **sizes, **setup)
    print(
        f"score matching, {common.describe_setup(args.device, args.dtype, args.clock)}: "
        "median ms per full training step (zero_grad, objective, backward, Adam); speed-up = "
        "baseline ms / variant ms; memory: peak MiB allocated by the step, MiB saved by autograd"
    )
    for name in args.models:
        first = next(r for r in rows if r["model"] == name)
        print(
            f"  {name}: {first['description']}; D={first['dim']}, B={first['batch']}, "
            f"{first['params']:,} parameters ({_fmt(first['state_mib'], '.1f')} MiB with Adam's "
            f"state), data {first['data']}"
        )
    print(format_table(rows))
    print("targets (parallel FD form vs its autograd baseline):")
    print("\n".join("  " + line for line in check_targets(rows)))
    plot = not args.no_plot
    common.print_paths(write_outputs(rows, args.out, config=config, plot=plot, device=args.device))
    return int(args.strict and any(r.get("meets_target") is False for r in rows))

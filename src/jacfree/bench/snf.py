"""``jacfree bench snf``: self-normalizing vs exact flows, per training step and per sample, for
layers and models (:func:`parse_case`), and one dense layer's step time vs D (the sweep of
:mod:`jacfree.bench.scaling` with L = 1). What it measures and the figures: ``docs/selfnorm.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..flows import CNNFlow, FCFlow, Flow, GlowFlow, SelfNormConv2d, SquareAffine
from ..flows.actnorm import initialize_actnorm
from ..flows.core import ParameterStateCache
from ..plots import pyplot, save_figure
from . import common, scaling
from .common import ENV_NAME, PLOT_HINT, PROFILE_COLUMNS, STAT_COLUMNS
from .runner import Run, check_run, check_variants, run_variants, setup_columns, stats_columns
from .step import TrainingStep, normal_batches
from .timing import TimingOptions

DEFAULT_CASES = ("dense-784", "conv-1x28x28", "conv-4x14x14", "fc2l-784", "fc2l-3072")
DEFAULT_CASES += ("cnn9l-1x28x28", "glow-1x28x28")
DEFAULT_DIMS: tuple[int, ...] = (128, 256, 512, 1024, 2048, 4096)
STEP_VARIANTS: tuple[str, ...] = ("exact", "selfnorm")
SAMPLE_VARIANTS: tuple[str, ...] = ("exact-inverse", "exact-inverse-cold", "learned-inverse")
DEFAULT_OUT = Path("bench-results") / "snf"
CSV_NAME, SCALING_CSV_NAME = "snf.csv", "snf-scaling.csv"
PLOT_NAME, SCALING_PLOT_NAME = "snf.png", "snf-scaling.png"

#: columns of ``snf.csv`` and ``snf-scaling.csv``, in order
CSV_COLUMNS = ("case", "model", "dim", "measure", "variant", *STAT_COLUMNS, "speedup", "batch")
CSV_COLUMNS += ("warmup", "params", "device", "dtype", "threads", "clock", *PROFILE_COLUMNS)

#: colour of each sampling way and training mode in the plot
STYLES = {"exact": "C3", "selfnorm": "C1", "exact-inverse": "C3", "exact-inverse-cold": "C5"}
STYLES["learned-inverse"] = "C1"

_MODELS = {
    "dense": "one SquareAffine(D)",
    "fc2l": "FCFlow(D, layers=2)",
    "conv": "one SelfNormConv2d(C, 3)",
    "cnn9l": "CNNFlow: 3 blocks x 3 SNF 3x3 convs, element-wise splines",
    "glow": "GlowFlow: 2 blocks x 8 steps, width 64, 1x1 convs",
}

# -- cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchCase:
    """A layer or model of the benchmark: ``kind`` and the event ``shape`` of one sample."""

    name: str
    kind: str
    shape: tuple[int, ...]

    @property
    def dim(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def model(self) -> str:
        return _MODELS[self.kind]

    def build(self, gradient: str = "exact") -> Flow:
        """The flow of this case in gradient mode ``gradient`` (float32, CPU)."""
        if self.kind == "dense":
            return Flow([SquareAffine(self.dim, gradient)], self.shape)
        if self.kind == "fc2l":
            return FCFlow(self.dim, layers=2, gradient=gradient)
        if self.kind == "conv":
            return Flow([SelfNormConv2d(self.shape[0], 3, gradient)], self.shape)
        if self.kind == "cnn9l":
            return CNNFlow(self.shape, gradient=gradient)
        return GlowFlow(self.shape, gradient=gradient)


_CASE_PATTERN = re.compile(r"^(dense|fc2l)-(\d+)$|^(conv|cnn9l|glow)-(\d+)x(\d+)x(\d+)$")


def parse_case(text: str) -> BenchCase:
    """A case from its name: ``dense-D``, ``fc2l-D`` (vectors of D features) or ``conv-CxHxW``,
    ``cnn9l-CxHxW``, ``glow-CxHxW`` (images; H and W divisible by 4 for the two models)."""
    m = _CASE_PATTERN.match(text.strip())
    if not m:
        raise ValueError(
            f"unknown benchmark case {text!r}; use dense-D, fc2l-D, conv-CxHxW, cnn9l-CxHxW or "
            "glow-CxHxW (e.g. dense-784, conv-1x28x28)."
        )
    kind = m.group(1) or m.group(3)
    sizes = (m.group(2),) if m.group(1) else m.group(4, 5, 6)
    shape = tuple(int(s) for s in sizes)
    if min(shape) < 1:
        raise ValueError(f"benchmark case {text!r} has a zero size.")
    if kind in ("cnn9l", "glow") and (shape[1] % 4 or shape[2] % 4):
        raise ValueError(
            f"benchmark case {text!r}: the {kind} model squeezes twice, so height and width must "
            "be divisible by 4 (e.g. 1x28x28, 1x8x8)."
        )
    return BenchCase(text.strip(), kind, shape)


# -- timing -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Setup(Run):
    """What every case of one run shares: the run, and the sampling batch and budget."""

    sample_batch: int = 100
    sample_budget: float = 4.0

    def columns(self, params: Sequence[Tensor], batch: int) -> dict[str, Any]:
        """The setup columns of a row, its batch and its number of ``params``."""
        sizes = {"batch": batch, "params": sum(p.numel() for p in params)}
        return {**setup_columns(self.timing, self.device, self.dtype), **sizes}


def _row(case: BenchCase, measure: str, variant: str, **columns: Any) -> dict[str, Any]:
    """A CSV row of ``case`` (``columns``: timing summary and setup, speed-up, batch, params)."""
    name = {"case": case.name, "model": case.model, "dim": case.dim}
    return {**name, "measure": measure, "variant": variant, **columns}


def _step_rows(
    case: BenchCase, steps: dict[str, TrainingStep], stats: dict[str, dict[str, Any]], setup: _Setup
) -> list[dict[str, Any]]:
    """The ``step`` rows of ``case``: :func:`~jacfree.bench.runner.run_variants`' rows with the
    speed-up over the exact mode, the batch and the trainable parameters of each mode."""
    exact = stats["exact"]["median_ms"] if "exact" in stats else None
    return [
        _row(
            case,
            "step",
            v,
            **row,
            **setup.columns(steps[v].params, setup.batch),
            speedup=None if exact is None else exact / row["median_ms"],
        )
        for v, row in stats.items()
    ]


def _time_steps(
    case: BenchCase, variants: Sequence[str], setup: _Setup
) -> tuple[dict[str, TrainingStep], list[dict[str, Any]]]:
    """Train ``case`` in each gradient mode from the same start; time the steps interleaved."""
    device, dtype, timing = setup.device, setup.dtype, setup.timing
    shape = (setup.batch, *case.shape)
    batches = normal_batches(shape, setup.n_batches, setup.seed, device, dtype)
    torch.manual_seed(setup.seed)
    base = case.build("exact").to(device=device, dtype=dtype)
    initialize_actnorm(base, batches[0])  # Glow: the same data-dependent start for every mode
    steps: dict[str, TrainingStep] = {}
    for v in variants:
        flow = copy.deepcopy(base)
        flow.set_gradient(v)
        steps[v] = TrainingStep(
            flow, v, batches, setup.lr, loss_fn=flow.loss, compile=timing.compile
        )
    stats = run_variants(steps, timing, device, what=case.name, label="snf")
    return steps, _step_rows(case, steps, stats, setup)


def _time_sampling(case: BenchCase, step: TrainingStep, setup: _Setup) -> list[dict[str, Any]]:
    """Time drawing samples from ``step``'s flow (restored to its start) in the ways available:
    the exact inverse warm and cold, and (for selfnorm) the learned inverse R."""
    flow, n = step.flow, setup.sample_batch
    step.reset()
    flow.eval()
    ways = [w for w in SAMPLE_VARIANTS if step.variant == "selfnorm" or w != "learned-inverse"]
    gen = torch.Generator(device=setup.device).manual_seed(setup.seed)

    fns = {
        w: lambda a=w == "learned-inverse": flow.sample(n, generator=gen, approximate=a)
        for w in ways
    }
    caches = [getattr(m, "_cache", None) for m in flow.modules()]
    caches = [c for c in caches if isinstance(c, ParameterStateCache)]  # cached factorisations
    cold = {"exact-inverse-cold": lambda: [c.clear() for c in caches]}
    setup.timing.say(f"[snf] {case.name}: timing sampling ({', '.join(ways)}) ...")
    stats = setup.timing.time(fns, cold, device=setup.device, budget=setup.sample_budget)
    columns = setup.columns(list(flow.parameters()), n)
    columns |= {"threads": torch.get_num_threads(), "clock": setup.timing.clock}
    speedup = {w: stats["exact-inverse"].median / s.median for w, s in stats.items()}
    rows = [
        _row(case, "sample", w, **stats_columns(stats[w], 1.0 / n), **columns, speedup=speedup[w])
        for w in ways
    ]
    per = ", ".join(f"{w} {stats[w].median * 1e3 / n:.3f} ms/sample" for w in ways)
    setup.timing.say(f"[snf] {case.name}: {per}")
    return rows


def snf_benchmark(
    cases: Sequence[str] = DEFAULT_CASES,
    dims: Sequence[int] = DEFAULT_DIMS,
    *,
    batch: int = 100,
    sample_batch: int = 100,
    variants: Sequence[str] = STEP_VARIANTS,
    sample: bool = True,
    sample_budget: float = 4.0,
    timing: TimingOptions | None = None,
    n_batches: int = 4,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    lr: float = 1e-4,
    **options: Any,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Time training steps (and, with ``sample``, sampling) of every case (:func:`parse_case`) in
    each of ``variants``, and one dense layer for every D in ``dims`` (empty: no sweep).

    ``batch``: training batch size; ``sample_batch``: samples per timed draw (the time is divided
    by it); ``sample_budget``: seconds of sampling rounds per case. ``timing``, or its fields as
    keyword arguments (:class:`~jacfree.bench.timing.TimingOptions`; ``budget``: seconds per
    case, default 8), says how the steps are timed. Returns ``(rows, scaling_rows)`` with the
    columns of :data:`CSV_COLUMNS`, times in ms per step or per sample; ``speedup`` is the exact
    variant's median (``exact-inverse`` for sampling) over this one.
    """
    variants = check_variants(variants, STEP_VARIANTS)
    parsed = [parse_case(c) for c in cases]
    sizes = {"batch": batch, "sample_batch": sample_batch, "n_batches": n_batches}
    device = check_run(device, dtype, **sizes, **{f"D={d}": d for d in dims})
    timing = TimingOptions.of(timing, options, budget=8.0)
    setup = _Setup(timing, device, dtype, seed, lr, batch, n_batches, sample_batch, sample_budget)
    rows = []
    for case in parsed:
        steps, case_rows = _time_steps(case, variants, setup)
        rows += case_rows
        if sample:
            rows += _time_sampling(case, steps.get("selfnorm", steps[variants[0]]), setup)
        del steps
        gc.collect()
    sweep = scaling.sweep(dims, variants, 1, setup, "snf")  # one dense layer: case dense-D
    dense = [_step_rows(parse_case(f"dense-{d}"), steps, stats, setup) for d, steps, stats in sweep]
    return rows, [r for case_rows in dense for r in case_rows]


# -- targets, tables, outputs -------------------------------------------------------------------

#: (description, case, measure, variant, minimum speed-up) — the library's targets, B = 100
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("SNF FCFlow-2L step vs exact, D=784", "fc2l-784", "step", "selfnorm", 1.3),
    ("SNF FCFlow-2L step vs exact, D=3072", "fc2l-3072", "step", "selfnorm", 3.0),
    ("single SNF 3x3 conv step vs exact, 1x28x28", "conv-1x28x28", "step", "selfnorm", 5.0),
)


def check_targets(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets that the rows allow to check: the speed-ups above, and sampling
    through R faster than through the exact inverse (cached factorisation) for every case."""
    by_key = {(r["case"], r["measure"], r["variant"]): r for r in rows}
    checks = list(TARGETS)
    for case in dict.fromkeys(r["case"] for r in rows):
        text = f"sampling through R vs exact inverse, {case}"
        checks.append((text, case, "sample", "learned-inverse", 1.0))
    out = []
    for text, case, measure, variant, minimum in checks:
        row = by_key.get((case, measure, variant))
        if row is None or row.get("speedup") is None:
            continue
        x = float(row["speedup"])
        met = x > minimum if minimum == 1.0 else x >= minimum
        out.append({"target": text, "case": case, "speedup": x, "minimum": minimum, "met": met})
    return out


#: the columns of the text table: (header, measure, variant, key, digits)
_TABLE = (
    ("step exact", "step", "exact", "median_ms", 2),
    ("step SNF", "step", "selfnorm", "median_ms", 2),
    ("x", "step", "selfnorm", "speedup", 2),
    ("sample exact-inv", "sample", "exact-inverse", "median_ms", 3),
    ("cold", "sample", "exact-inverse-cold", "median_ms", 3),
    ("sample R", "sample", "learned-inverse", "median_ms", 3),
    ("x", "sample", "learned-inverse", "speedup", 2),
)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Text table: per case, median ms per step (both modes) and per sample (three ways),
    with the speed-ups, then the targets."""
    get = {(r["case"], r["measure"], r["variant"]): r for r in rows}
    lines = []
    for c, dim in dict.fromkeys((r["case"], r["dim"]) for r in rows):
        cells = [c, str(dim)]
        for _, measure, variant, key, digits in _TABLE:
            value = get.get((c, measure, variant), {}).get(key)
            cells.append("-" if value is None else f"{float(value):.{digits}f}")
        lines.append(cells)
    out = common.text_table(["case", "D", *(col[0] for col in _TABLE)], lines, left=1)
    out.append(
        "(ms per training step, B as in the CSV; ms per sample; x = exact / SNF; cold = exact "
        "inverse with the factorisations recomputed)"
    )
    targets = check_targets(rows)
    if targets:
        out.append("targets:")
    for t in targets:
        mark, op = "met" if t["met"] else "NOT MET", ">" if t["minimum"] == 1.0 else ">="
        out.append(f"  {t['target']}: x{t['speedup']:.2f} (target {op} {t['minimum']:g}) {mark}")
    return "\n".join(out)


def plot_cases(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Two panels of grouped horizontal bars (log scale): ms per step by mode, ms per sample by
    way of inverting, one group per case, with the speed-ups written next to the SNF bars."""
    plt = pyplot(PLOT_HINT)
    cases = list(dict.fromkeys(r["case"] for r in rows))
    get = {(r["case"], r["measure"], r["variant"]): r for r in rows}
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.55 * len(cases) + 2.2), sharey=True)
    panels = (
        ("step", STEP_VARIANTS, "ms per training step (median)"),
        ("sample", SAMPLE_VARIANTS, "ms per sample (median)"),
    )
    for ax, (measure, variants, label) in zip(axes, panels, strict=True):
        present = [v for v in variants if any((c, measure, v) in get for c in cases)]
        height = 0.8 / max(len(present), 1)
        for j, v in enumerate(present):
            mine = [(i, get[c, measure, v]) for i, c in enumerate(cases) if (c, measure, v) in get]
            ys = [i + (j - (len(present) - 1) / 2) * height for i, _ in mine]
            noted = v in ("selfnorm", "learned-inverse")
            notes = [
                f"x{float(r['speedup']):.1f}" if noted and r.get("speedup") else None
                for _, r in mine
            ]
            xs = [float(r["median_ms"]) for _, r in mine]
            common.hbars(ax, ys, xs, notes, label, height=height, color=STYLES[v], label=v)
        ax.legend(fontsize=8)
    axes[0].set_yticks(range(len(cases)), cases)
    axes[0].invert_yaxis()
    fig.suptitle(title or "self-normalizing vs exact", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def write_outputs(
    rows: Sequence[dict[str, Any]],
    scaling_rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    config: dict[str, Any] | None = None,
    elapsed_s: float | None = None,
    plot: bool = True,
    fit_points: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Write the CSVs, ``environment.json`` and (unless ``plot=False``) the two plots."""
    csvs: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    if rows:
        title = f"SNF vs exact, B={rows[0].get('batch')}, {common.describe_rows(rows)}"
        csvs["csv"] = (CSV_NAME, rows, CSV_COLUMNS)
        plots["plot"] = (PLOT_NAME, lambda path, t=title: plot_cases(rows, path, t))
    if scaling_rows:
        title = f"one dense layer, B={scaling_rows[0].get('batch')}"
        _, sweep_plot = scaling.scaling_outputs(scaling_rows, fit_points, "snf-scaling", title)
        csvs["scaling_csv"] = (SCALING_CSV_NAME, scaling_rows, CSV_COLUMNS)
        plots["scaling_plot"] = sweep_plot
    slopes = scaling.fit_loglog_slopes(scaling_rows, fit_points) if scaling_rows else {}
    record = {
        "config": config or {},
        "targets": check_targets(rows),
        "dense_loglog_slopes": slopes,
        "elapsed_s": elapsed_s,
    }
    return common.write_results(out, csvs, record, device=device, plots=plots if plot else None)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jacfree bench snf``."""
    description = (
        "Time one full training step (zero_grad, loss, backward, Adam) and one sample of "
        "self-normalizing vs exact flows side by side (dense layer, SNF 3x3 convolutions, "
        "FCFlow-2L, CNN-9L, Glow), and a dense layer's step time vs D."
    )
    cases = "cases: dense-D, fc2l-D, conv-CxHxW, cnn9l-CxHxW, glow-CxHxW"
    dims = "D of the dense-layer sweep, --dims with no value: none"
    options: list[common.Option] = [
        ("--cases", common.list_type(lambda t: parse_case(t).name), DEFAULT_CASES, cases),
        ("--dims", common.positive_int_list, DEFAULT_DIMS, dims, "*"),
        ("--batch", int, 100, "training batch size B (100)"),
        ("--sample-batch", int, 100, "samples per timed sampling call (100)"),
        ("--sample-budget", float, 4.0, "adaptive: seconds of timed sampling per case (4)"),
        ("--fit-points", int, 3, "log-log slopes over this many largest D (3)"),
        ("--no-sample", bool, False, "do not time sampling"),
    ]
    outputs = f"{CSV_NAME}, {SCALING_CSV_NAME}, {PLOT_NAME}, {SCALING_PLOT_NAME}, {ENV_NAME}"
    out = (DEFAULT_OUT, outputs)
    common.add_timing_arguments(parser, description, options, 8.0, "case", out, lr=1e-4)


def run(args: argparse.Namespace) -> int:
    """Run ``jacfree bench snf``: benchmark, print the tables, write CSVs, JSON and plots."""
    t0 = time.perf_counter()
    timing, setup, recorded = common.start(args)
    sizes = {"batch": args.batch, "sample_batch": args.sample_batch}
    sampling = {"sample": not args.no_sample, "sample_budget": args.sample_budget}
    config = {"cases": args.cases, "dims": args.dims, **sizes, "sample": sampling["sample"]}
    config |= {"variants": list(STEP_VARIANTS), **recorded, "sample_budget_s": args.sample_budget}
    rows, scaling_rows = snf_benchmark(
        args.cases, args.dims, timing=timing, **sizes, **sampling, **setup
    )
    where = common.describe_setup(args.device, args.dtype, args.clock, args.compile)
    if rows:
        print(f"SNF vs exact, B={args.batch}, {args.sample_batch} samples per draw, {where}:")
        print(format_table(rows))
    if scaling_rows:
        print(f"one dense layer, B={args.batch}, {where}: median ms per full training step")
        print(scaling.format_table(scaling_rows, args.fit_points))
    elapsed = time.perf_counter() - t0
    kw = {"plot": not args.no_plot, "fit_points": args.fit_points, "device": args.device}
    common.print_paths(
        write_outputs(rows, scaling_rows, args.out, config=config, elapsed_s=elapsed, **kw)
    )
    print(f"done in {elapsed:.0f} s")
    return 0

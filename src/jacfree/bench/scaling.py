"""``jacfree bench scaling``: time of one full training step of ``FCFlow(D, layers=L)`` vs D, in the
gradient modes ``exact``, ``relative``, ``selfnorm`` and the no-log-det ``floor``
(:func:`~jacfree.bench.step.floor_loss`); the one time-vs-D sweep, also behind ``bench snf``.
What it measures and the figures: ``docs/relative-gradient.md``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import math
import statistics
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from ..flows import FCFlow
from ..plots import pyplot, save_figure
from . import common
from .runner import Run, TimingOptions, check_run, check_variants, run_variants, setup_columns
from .step import TrainingStep, normal_batches
from .step import floor_loss as floor_loss  # re-exported
from .step import variant_loss as variant_loss  # re-exported

DEFAULT_DIMS: tuple[int, ...] = (256, 512, 784, 1024, 2048, 3072)
VARIANTS: tuple[str, ...] = ("exact", "relative", "selfnorm", "floor")
DEFAULT_VARIANTS: tuple[str, ...] = ("exact", "relative", "floor")
DEFAULT_OUT = Path("bench-results") / "scaling"
CSV_NAME = "scaling.csv"
PLOT_NAME = "scaling.png"

#: columns of ``scaling.csv``, in order
CSV_COLUMNS = ("dim", "variant", *common.STAT_COLUMNS, "ratio_to_floor", "batch", "layers")
CSV_COLUMNS += ("warmup", "optimizer", "device", "dtype", "threads", "clock")
CSV_COLUMNS += common.PROFILE_COLUMNS

#: colour and marker of each variant in the plot
STYLES = {"exact": ("C3", "o"), "relative": ("C0", "s"), "selfnorm": ("C1", "D")}
STYLES["floor"] = ("C2", "^")

#: the ratios of the text table, where both variants ran
RATIOS = (("relative", "floor"), ("selfnorm", "floor"), ("exact", "relative"))
RATIOS += (("exact", "selfnorm"), ("exact", "floor"))


# -- the sweep --------------------------------------------------------------------------------


def sweep(
    dims: Iterable[int], variants: Sequence[str], layers: int, run: Run, label: str = "scaling"
) -> Iterator[tuple[int, dict[str, TrainingStep], dict[str, dict[str, Any]]]]:
    """For each D: build ``FCFlow(D, layers)`` once per variant (the same initial weights, the
    same standard normal batches), time the steps with
    :func:`~jacfree.bench.runner.run_variants`, and yield ``(D, steps, rows)``."""
    for dim in dims:
        batches = normal_batches((run.batch, dim), run.n_batches, run.seed, run.device, run.dtype)
        torch.manual_seed(run.seed)
        base = FCFlow(dim, layers=layers).to(device=run.device, dtype=run.dtype)
        steps = {
            v: TrainingStep(copy.deepcopy(base), v, batches, run.lr, compile=run.timing.compile)
            for v in variants
        }
        del base
        rows = run_variants(steps, run.timing, run.device, what=f"D={dim}", label=label)
        yield dim, steps, rows
        del steps, rows
        gc.collect()


def scaling_benchmark(
    dims: Sequence[int] = DEFAULT_DIMS,
    batch: int = 100,
    layers: int = 2,
    *,
    variants: Sequence[str] = DEFAULT_VARIANTS,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    lr: float = 1e-4,
    n_batches: int = 4,
    timing: TimingOptions | None = None,
    **options: Any,
) -> list[dict[str, Any]]:
    """Time one full training step of ``FCFlow(D, layers)`` per variant (among :data:`VARIANTS`),
    for every D in ``dims``, on ``n_batches`` standard normal batches of B = ``batch`` rows.

    ``timing``, or its fields as keyword arguments (:class:`~jacfree.bench.timing.TimingOptions`;
    ``budget``: seconds per D, default 10), says how. Returns one dict per (D, variant) with the
    columns of :data:`CSV_COLUMNS`, times in ms; ``ratio_to_floor`` is the median over the
    floor's at the same D (``None`` without a floor variant).
    """
    variants = check_variants(variants, VARIANTS)
    timing = TimingOptions.of(timing, options, budget=10.0)
    dims = tuple(dims)
    if not dims:
        raise ValueError("dims must not be empty.")
    sizes = {"batch": batch, "layers": layers, "n_batches": n_batches}
    device = check_run(device, dtype, **sizes, **{f"D={d}": d for d in dims})
    setup = {"batch": batch, "layers": layers, **setup_columns(timing, device, dtype)}
    out: list[dict[str, Any]] = []
    run = Run(timing, device, dtype, seed, lr, batch, n_batches)
    for dim, _, rows in sweep(dims, variants, layers, run):
        floor = rows["floor"]["median_ms"] if "floor" in rows else None
        for v, row in rows.items():
            ratio = None if floor is None else row["median_ms"] / floor
            out.append({"dim": dim, "variant": v, **row, "ratio_to_floor": ratio, **setup})
    return out


# -- analysis and outputs ---------------------------------------------------------------------


def step_medians(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """``{variant: {D: median ms}}`` of rows with ``variant``, ``dim`` and ``median_ms``."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["variant"], {})[int(row["dim"])] = float(row["median_ms"])
    return out


def fit_loglog_slopes(rows: Sequence[dict[str, Any]], points: int = 3) -> dict[str, float]:
    """Least-squares slope of log(median time) vs log(D) over each variant's ``points`` largest D
    (near 2: O(D²), near 3: O(D³)); variants with fewer than two distinct D are left out."""
    slopes: dict[str, float] = {}
    for variant, by_dim in step_medians(rows).items():
        dims = sorted(by_dim)[-max(points, 2) :]
        if len(dims) < 2:
            continue
        logs = [(math.log(d), math.log(by_dim[d])) for d in dims]
        slopes[variant] = statistics.linear_regression(*zip(*logs, strict=True)).slope
    return slopes


def format_table(rows: Sequence[dict[str, Any]], fit_points: int = 3) -> str:
    """Text table: D, median ms per step for each variant and the ratios of :data:`RATIOS`
    (where both ran), then the log-log slopes over the ``fit_points`` largest D."""
    med = step_medians(rows)
    variants = [v for v in VARIANTS if v in med]
    dims = sorted({int(r["dim"]) for r in rows})
    ratios = [(a, b) for a, b in RATIOS if a in med and b in med]
    header = ["D", *(f"{v} ms" for v in variants), *(f"{a}/{b}" for a, b in ratios)]
    lines = []
    for d in dims:
        cells = [str(d)]
        cells += [f"{med[v][d]:.2f}" if d in med[v] else "-" for v in variants]
        cells += [
            f"{med[a][d] / med[b][d]:.2f}" if d in med[a] and d in med[b] else "-"
            for a, b in ratios
        ]
        lines.append(cells)
    out = common.text_table(header, lines)
    slopes = fit_loglog_slopes(rows, fit_points)
    if slopes:
        top = dims[-max(fit_points, 2) :]
        out.append(
            f"log-log slope over D in {top}: "
            + ", ".join(f"{v} {slopes[v]:.2f}" for v in variants if v in slopes)
        )
    return "\n".join(out)


def plot_scaling(
    rows: Sequence[dict[str, Any]], path: str | Path, fit_points: int = 3, title: str = ""
) -> Path:
    """Log-log plot of the median ms per training step vs D, a line per variant labelled with its
    fitted slope (:func:`fit_loglog_slopes`), and faint ∝ D² and ∝ D³ guides through the
    largest-D point of the cheapest variant (floor, else selfnorm or relative) and of exact."""
    plt = pyplot(common.PLOT_HINT)
    med = step_medians(rows)
    slopes = fit_loglog_slopes(rows, fit_points)
    dims = sorted({int(r["dim"]) for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for v in (v for v in VARIANTS if v in med):
        ds = sorted(med[v])
        color, marker = STYLES[v]
        label = v if v not in slopes else f"{v} (slope {slopes[v]:.2f})"
        ax.plot(ds, [med[v][d] for d in ds], marker=marker, color=color, label=label)
    cheap = next((v for v in ("floor", "selfnorm", "relative") if v in med), None)
    if len(dims) >= 2:
        for v, power in ((cheap, 2), ("exact", 3)):
            if v in med:
                d0 = max(med[v])
                ys = [med[v][d0] * (d / d0) ** power for d in dims]
                ls = ":" if power == 2 else "--"
                ax.plot(dims, ys, ls, color="0.6", lw=0.8, label=f"∝ D^{power} (through {v})")
    ax.set(xscale="log", yscale="log", xlabel="D (features)")
    ax.set(ylabel="ms per training step (median)")
    ax.set_xticks(dims, [str(d) for d in dims])
    ax.minorticks_off()
    ax.set_title(title or "FCFlow: training step time vs D", fontsize=10)
    top = dims[-max(fit_points, 2) :]
    ax.legend(title=f"slopes fitted over D ∈ {top}", fontsize=8, title_fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def scaling_outputs(
    rows: Sequence[dict[str, Any]], fit_points: int, name: str, title: str
) -> tuple[tuple[str, Sequence[dict[str, Any]], Sequence[str]], tuple[str, Any]]:
    """The CSV entry and the plot entry of a sweep for :func:`~jacfree.bench.common.write_results`
    (``name``: the file stem; ``title``: the plot's title before the run's setup)."""
    where = common.describe_rows(rows)

    def draw(path: Path) -> Path:
        return plot_scaling(rows, path, fit_points, f"{title}, {where}: training step")

    return (f"{name}.csv", rows, CSV_COLUMNS), (f"{name}.png", draw)


def write_outputs(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    config: dict[str, Any] | None = None,
    plot: bool = True,
    fit_points: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Write ``scaling.csv``, ``environment.json`` and (unless ``plot=False``) ``scaling.png``."""
    first = rows[0] if rows else {}
    title = f"FCFlow, L={first.get('layers')}, B={first.get('batch')}"
    csv_entry, plot_entry = scaling_outputs(rows, fit_points, "scaling", title)
    record = {"config": config or {}, "loglog_slopes": fit_loglog_slopes(rows, fit_points)}
    plots = {"plot": plot_entry} if plot else None
    return common.write_results(out, {"csv": csv_entry}, record, device=device, plots=plots)


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jacfree bench scaling``."""
    description = (
        "Time one full training step (zero_grad, forward, backward, Adam step) of FCFlow(D) "
        "for the exact (slogdet), relative, selfnorm and floor (no log-det term) variants, "
        "interleaved."
    )
    options: list[common.Option] = [
        ("--dims", common.positive_int_list, DEFAULT_DIMS, "dimensions D"),
        ("--batch", int, 100, "batch size B (default 100)"),
        ("--layers", int, 2, "square affine layers L (default 2)"),
        (
            "--variants",
            common.choice_list(VARIANTS, "variant(s)"),
            DEFAULT_VARIANTS,
            f"among {' '.join(VARIANTS)}",
        ),
        ("--fit-points", int, 3, "fit the log-log slopes over this many largest D (default 3)"),
    ]
    outputs = f"{CSV_NAME}, {PLOT_NAME}, {common.ENV_NAME}"
    out = (DEFAULT_OUT, outputs)
    common.add_timing_arguments(parser, description, options, 10.0, "D", out, lr=1e-4)


def run(args: argparse.Namespace) -> int:
    """Run ``jacfree bench scaling``: benchmark, print the table, write CSV, JSON and plot."""
    timing, setup, config = common.start(args)
    config = {
        "dims": args.dims,
        "batch": args.batch,
        "layers": args.layers,
        "variants": args.variants,
        **config,
    }
    rows = scaling_benchmark(
        args.dims, args.batch, args.layers, variants=args.variants, timing=timing, **setup
    )
    where = common.describe_setup(args.device, args.dtype, args.clock, args.compile)
    print(f"FCFlow(D, layers={args.layers}), B={args.batch}, {where}: median ms per step")
    print(format_table(rows, args.fit_points))
    kw = {"plot": not args.no_plot, "fit_points": args.fit_points, "device": args.device}
    common.print_paths(write_outputs(rows, args.out, config=config, **kw))
    return 0

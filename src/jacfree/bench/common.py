"""What the ``jacfree bench`` benchmarks share.

* the device and dtype of a run (:func:`resolve_device`, :data:`DTYPES`) and the record of the
  environment the timings depend on (:func:`environment_info`);
* the output files: CSV rows (:func:`write_csv`) and JSON records (:func:`write_json`);
* the analysis of a sweep over the dimension D: per-variant medians, least-squares log-log
  slopes (:func:`fit_loglog_slopes`; a slope near 2 is O(D²) behaviour, near 3 is O(D³)) and
  their plot (:func:`plot_step_scaling`);
* the command-line options of a timing run (repeats, warm-up, budget, device, dtype, threads,
  clock, seed, output folder; :func:`add_timing_arguments`) and their checks
  (:func:`apply_timing_arguments`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..plots import pyplot, save_figure
from .timing import CLOCKS

__all__ = [
    "DTYPES",
    "PLOT_HINT",
    "add_timing_arguments",
    "apply_timing_arguments",
    "choice_list",
    "csv_cell",
    "describe_setup",
    "environment_info",
    "fit_loglog_slopes",
    "flatten",
    "plot_step_scaling",
    "positive_int_list",
    "resolve_device",
    "step_medians",
    "write_csv",
    "write_json",
]

#: the dtypes a benchmark can run in, by their command-line names
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: what ``pyplot`` says when matplotlib is missing and a benchmark was asked for its plots
PLOT_HINT = "the benchmark plots need matplotlib (or pass --no-plot)"


# -- where a benchmark runs -------------------------------------------------------------------


def resolve_device(device: torch.device | str) -> torch.device:
    """``torch.device(device)``, with a clear error when CUDA is asked for and absent."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda was requested but no CUDA device is available; use cpu.")
    return dev


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _affinity() -> list[int] | None:
    """The CPUs this process may run on (``None`` where the OS does not say)."""
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None


def environment_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """Versions, threads and hardware that the timings depend on."""
    device = torch.device(device)
    info: dict[str, Any] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "jacfree": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": _affinity(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "openmp": torch.backends.openmp.is_available(),
        "thread_env": {
            k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ
        },
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe_setup(device: object, dtype: object, clock: str = "wall") -> str:
    """One phrase for table titles: ``"cpu float32, 1 thread(s)"`` plus the clock if not wall."""
    text = f"{device} {dtype}, {torch.get_num_threads()} thread(s)"
    return text if clock == "wall" else f"{text}, {clock} CPU time"


# -- output files -----------------------------------------------------------------------------


#: columns every step benchmark adds to its CSV: the compile mode and the step's profile
PROFILE_COLUMNS: tuple[str, ...] = (
    "compile",
    "ops_per_step",
    "host_reads_per_step",
    "kernels_per_step",
    "device_ms",
    "gpu_busy",
)


def profile_columns(
    step: Callable[[], object], device: torch.device, compile: str | None
) -> dict[str, Any]:
    """The :data:`PROFILE_COLUMNS` of one training step (profiled after its timing)."""
    from .profile import profile_step

    prof = profile_step(step, device)
    return {"compile": compile or "eager", **{k: prof.get(k) for k in PROFILE_COLUMNS[1:]}}


def csv_cell(value: object) -> object:
    """A value as written to the CSV and JSON files: floats to 4 decimals, ``None`` empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"  # ms to 0.1 µs, ratios to 1e-4
    return value


def write_csv(rows: Sequence[dict[str, Any]], path: str | Path, columns: Sequence[str]) -> Path:
    """Write ``rows`` to ``path`` with the given columns in order (extra keys are ignored)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k)) for k in columns})
    return path


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    """Write ``record`` as indented JSON (values JSON cannot hold go through :func:`csv_cell`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=csv_cell) + "\n")
    return path


# -- time vs D ---------------------------------------------------------------------------------


def step_medians(rows: Iterable[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """``{variant: {D: median ms}}`` of rows with ``variant``, ``dim`` and ``median_ms``."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        out.setdefault(row["variant"], {})[int(row["dim"])] = float(row["median_ms"])
    return out


def fit_loglog_slopes(rows: Sequence[dict[str, Any]], points: int = 3) -> dict[str, float]:
    """Least-squares slope of log(median time) vs log(D) over each variant's ``points`` largest D.

    A slope near 2 is O(D²) behaviour, near 3 is O(D³). Variants with fewer than two distinct D
    are left out.
    """
    slopes: dict[str, float] = {}
    for variant, by_dim in step_medians(rows).items():
        dims = sorted(by_dim)[-max(points, 2) :]
        if len(dims) < 2:
            continue
        xs = [math.log(d) for d in dims]
        ys = [math.log(by_dim[d]) for d in dims]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        sxx = sum((a - mx) ** 2 for a in xs)
        slopes[variant] = sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx
    return slopes


def plot_step_scaling(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    variants: Sequence[str],
    styles: dict[str, tuple[str, str]],
    guides: Sequence[tuple[str, int]] = (),
    fit_points: int = 3,
    title: str = "",
) -> Path:
    """Log-log plot of the median ms per training step vs D, a line per variant.

    Each line's label carries its fitted slope (:func:`fit_loglog_slopes`); ``guides`` draws, for
    each ``(variant, power)``, a faint ∝ D^power line through that variant's largest-D point.
    """
    plt = pyplot(PLOT_HINT)
    med = step_medians(rows)
    slopes = fit_loglog_slopes(rows, fit_points)
    dims = sorted({int(r["dim"]) for r in rows})
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for v in (v for v in variants if v in med):
        ds = sorted(med[v])
        color, marker = styles[v]
        label = v if v not in slopes else f"{v} (slope {slopes[v]:.2f})"
        ax.plot(ds, [med[v][d] for d in ds], marker=marker, color=color, label=label)
    if len(dims) >= 2:
        for v, power in guides:
            if v in med:
                d0 = max(med[v])
                ys = [med[v][d0] * (d / d0) ** power for d in dims]
                ls = ":" if power == 2 else "--"
                ax.plot(dims, ys, ls, color="0.6", lw=0.8, label=f"∝ D^{power} (through {v})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(dims)
    ax.set_xticklabels([str(d) for d in dims])
    ax.minorticks_off()
    ax.set_xlabel("D (features)")
    ax.set_ylabel("ms per training step (median)")
    ax.set_title(title or "training step time vs D", fontsize=10)
    top = dims[-max(fit_points, 2) :]
    ax.legend(title=f"slopes fitted over D ∈ {top}", fontsize=8, title_fontsize=8)
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


# -- command line -----------------------------------------------------------------------------


def _split(text: str) -> list[str]:
    return [t for t in text.replace(",", " ").split() if t]


def positive_int_list(text: str) -> list[int]:
    """argparse type: space- or comma-separated positive integers."""
    try:
        values = [int(t) for t in _split(text)]
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected integers, got {text!r}") from err
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """argparse type: a non-empty space- or comma-separated list of names among ``choices``."""

    def parse(text: str) -> list[str]:
        values = _split(text)
        bad = [v for v in values if v not in choices]
        if bad or not values:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {', '.join(bad) or repr(text)}; choose among {', '.join(choices)}"
            )
        return values

    return parse


def flatten(groups: Sequence[Sequence[Any]] | None, default: Sequence[Any]) -> list[Any]:
    """The values of a ``nargs="+"`` option of list-typed values, or ``default`` if not given."""
    return list(default) if groups is None else [v for group in groups for v in group]


def add_timing_arguments(
    parser: argparse.ArgumentParser,
    *,
    budget: float,
    per: str,
    out: Path,
    outputs: str,
    lr: float | None = None,
) -> None:
    """Options every timing benchmark has.

    Args:
        budget: default of ``--budget``, seconds of timed rounds per ``per``.
        per: what one budget is spent on (``"D"``, ``"case"``, ``"model"``).
        out: default output folder; ``outputs`` names what is written there.
        lr: default of ``--lr`` (Adam's learning rate), or ``None`` for no such option.
    """
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"timed rounds per {per} (default: adaptive, see --budget)",
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument(
        "--budget",
        type=float,
        default=budget,
        help=f"adaptive repeats: seconds of timed rounds per {per} (default {budget:g})",
    )
    parser.add_argument(
        "--min-repeats", type=int, default=7, help="adaptive repeats: at least (default 7)"
    )
    parser.add_argument(
        "--max-repeats", type=int, default=200, help="adaptive repeats: at most (default 200)"
    )
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    if lr is not None:
        parser.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate ({lr:g})")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch.set_num_threads (default 1: reproducible, and fair on a shared machine; "
        "0 = torch's choice)",
    )
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall: wall-clock time (default; use it on a quiet machine); process: CPU time of "
        "this process, which leaves out the waits for a core on a busy machine (with --threads 1)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compile",
        default=None,
        choices=("default", "reduce-overhead", "max-autotune"),
        help="time the steps with the loss compiled by torch.compile(fullgraph=True) in this "
        "mode (reduce-overhead: also a CUDA graph on a GPU); default: eager. The profile columns "
        "(operations per step, host reads, GPU busy) are written either way",
    )
    parser.add_argument(
        "--out", type=Path, default=out, help=f"output folder for {outputs} (default {out})"
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def apply_timing_arguments(args: argparse.Namespace) -> None:
    """Check the options of :func:`add_timing_arguments`, set the thread count, and make sure
    matplotlib is there when plots are wanted (an error now, not after minutes of timing)."""
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0: torch's choice), got {args.threads}.")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}.")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}.")
    if args.budget <= 0:
        raise ValueError(f"--budget must be > 0 seconds, got {args.budget}.")
    if args.min_repeats < 1 or args.max_repeats < args.min_repeats:
        raise ValueError(
            f"need 1 <= --min-repeats <= --max-repeats, got {args.min_repeats} and "
            f"{args.max_repeats}."
        )
    resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_plot:
        pyplot(PLOT_HINT)

"""What the ``jacfree bench`` benchmarks share.

* the device and dtype of a run (:func:`resolve_device`, :data:`DTYPES`) and the record of the
  environment the timings depend on (:func:`environment_info`);
* the outputs: text tables (:func:`text_table`), CSV rows (:func:`write_csv`), JSON records
  (:func:`write_json`), and a benchmark's whole output folder (:func:`write_results`: its CSVs,
  ``environment.json`` and plots);
* the command-line options of a timing run (repeats, warm-up, budget, device, dtype, threads,
  clock, seed, output folder; :func:`add_timing_arguments`) and their checks
  (:func:`apply_timing_arguments`).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..plots import pyplot
from .step import COMPILE_MODES
from .timing import CLOCKS, TimingOptions

__all__ = [
    "DTYPES",
    "ENV_NAME",
    "PLOT_HINT",
    "PROFILE_COLUMNS",
    "STAT_COLUMNS",
    "add_list_option",
    "add_options",
    "add_timing_arguments",
    "apply_timing_arguments",
    "choice_list",
    "csv_cell",
    "describe_rows",
    "describe_setup",
    "environment_info",
    "flatten",
    "positive_int_list",
    "profile_columns",
    "resolve_device",
    "setup_arguments",
    "text_table",
    "timing_config",
    "write_csv",
    "write_json",
    "write_results",
]

#: the dtypes a benchmark can run in, by their command-line names
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: the file every benchmark writes its environment, settings and checks to
ENV_NAME = "environment.json"

THREADS_HELP = "torch.set_num_threads (default 1: reproducible, and fair on a shared machine; 0 = "
THREADS_HELP += "torch's choice)"

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


def describe_rows(rows: Sequence[dict[str, Any]]) -> str:
    """:func:`describe_setup` of the first of ``rows`` (for plot titles)."""
    first = rows[0] if rows else {}
    return describe_setup(first.get("device"), first.get("dtype"), first.get("clock", "wall"))


# -- output files -----------------------------------------------------------------------------


#: columns every step benchmark adds to its CSV: the compile mode and the step's profile
PROFILE_COLUMNS = ("compile", "ops_per_step", "host_reads_per_step", "kernels_per_step")
PROFILE_COLUMNS += ("device_ms", "gpu_busy")


def profile_columns(
    step: Callable[[], object], device: torch.device, compile: str | None
) -> dict[str, Any]:
    """The :data:`PROFILE_COLUMNS` of one training step (profiled after its timing)."""
    from .profile import profile_step

    prof = profile_step(step, device)
    return {"compile": compile or "eager", **{k: prof.get(k) for k in PROFILE_COLUMNS[1:]}}


#: the summary columns of a timed step, in CSV order (:func:`.runner.stats_columns`)
STAT_COLUMNS = ("median_ms", "min_ms", "max_ms", "q1_ms", "q3_ms", "iqr_ms", "mean_ms", "repeats")


def csv_cell(value: object, float_format: str | None = ".4f") -> object:
    """A value as written to the CSV and JSON files: floats to 4 decimals (``float_format``;
    ``None`` writes them as they are), ``None`` empty."""
    if value is None:
        return ""
    if isinstance(value, float) and float_format:
        return format(value, float_format)  # ms to 0.1 µs, ratios to 1e-4
    return value


def write_csv(
    rows: Sequence[dict[str, Any]],
    path: str | Path,
    columns: Sequence[str] | None = None,
    float_format: str | None = ".4f",
) -> Path:
    """Write ``rows`` to ``path`` with the given columns in order (extra keys are ignored);
    without ``columns``, the keys of the rows in the order they first appear."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: csv_cell(row.get(k), float_format) for k in columns})
    return path


def write_json(record: dict[str, Any], path: str | Path) -> Path:
    """Write ``record`` as indented JSON (values JSON cannot hold go through :func:`csv_cell`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, default=csv_cell) + "\n")
    return path


def write_results(
    out: str | Path,
    csvs: Mapping[str, tuple[str, Sequence[dict[str, Any]], Sequence[str]]],
    record: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    plots: Mapping[str, tuple[str, Callable[[Path], Path]]] | None = None,
) -> dict[str, Path]:
    """Write a benchmark's output folder ``out`` and return the paths written, by key.

    Args:
        csvs: ``{key: (file name, rows, columns)}``, one CSV each (see :func:`write_csv`).
        record: written to :data:`ENV_NAME` after ``"environment"`` (:func:`environment_info`).
        plots: ``{key: (file name, draw)}``; ``draw(path)`` writes one plot. ``None``: no plots.
    """
    out = Path(out)
    paths = {key: write_csv(rows, out / name, cols) for key, (name, rows, cols) in csvs.items()}
    env = {"environment": environment_info(device), **record}
    paths["environment"] = write_json(env, out / ENV_NAME)
    for key, (name, draw) in (plots or {}).items():
        paths[key] = draw(out / name)
    return paths


def text_table(header: Sequence[str], lines: Sequence[Sequence[str]], left: int = 0) -> list[str]:
    """Lines of a plain-text table; the first ``left`` columns flush left, the others right."""
    widths = [max([len(h), *(len(c[i]) for c in lines)]) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return [fmt(header), *(fmt(cells) for cells in lines)]


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


def add_options(
    parser: argparse.ArgumentParser, options: Sequence[tuple[str, type | None, Any, str]]
) -> None:
    """One option per ``(flag, type, default, help)``."""
    for flag, kind, default, text in options:
        parser.add_argument(flag, type=kind, default=default, help=text)


def add_list_option(
    parser: argparse.ArgumentParser,
    flag: str,
    parse: Callable[[str], list[Any]],
    default: Sequence[Any],
    text: str,
    nargs: str = "+",
) -> None:
    """An option of space- or comma-separated values (read back with :func:`flatten`)."""
    shown = " ".join(map(str, default))
    parser.add_argument(flag, type=parse, nargs=nargs, help=f"{text} (default: {shown})")


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
    adaptive = "adaptive repeats: "
    options: list[tuple[str, type | None, Any, str]] = [
        ("--repeats", int, None, f"timed rounds per {per} (default: adaptive, see --budget)"),
        ("--warmup", int, 2, "untimed rounds first (default 2)"),
        ("--budget", float, budget, f"{adaptive}seconds of timed rounds per {per} ({budget:g})"),
        ("--min-repeats", int, 7, f"{adaptive}at least (default 7)"),
        ("--max-repeats", int, 200, f"{adaptive}at most (default 200)"),
        ("--device", None, "cpu", "torch device (default cpu)"),
        ("--lr", float, lr, f"Adam learning rate ({lr or 0:g})"),
        ("--threads", int, 1, THREADS_HELP),
        ("--seed", int, 0, "seed of the initial weights and the data (default 0)"),
        ("--out", Path, out, f"output folder for {outputs} (default {out})"),
    ]
    add_options(parser, [o for o in options if o[0] != "--lr" or lr is not None])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--clock",
        default="wall",
        choices=sorted(CLOCKS),
        help="wall: wall-clock time (default; use it on a quiet machine); process: CPU time of "
        "this process, which leaves out the waits for a core on a busy machine (with --threads 1)",
    )
    parser.add_argument(
        "--compile",
        default=None,
        choices=COMPILE_MODES,
        help="time the steps with the loss compiled by torch.compile(fullgraph=True) in this "
        "mode (reduce-overhead: also a CUDA graph on a GPU); default: eager. The profile columns "
        "(operations per step, host reads, GPU busy) are written either way",
    )
    parser.add_argument("--no-plot", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def timing_config(args: argparse.Namespace) -> dict[str, Any]:
    """The options of :func:`add_timing_arguments` as recorded in ``environment.json``."""
    config = {
        "repeats": args.repeats,
        "warmup": args.warmup,
        "budget_s": args.budget,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "device": args.device,
        "dtype": args.dtype,
        "seed": args.seed,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "optimizer": "jacfree.train.make_adam",
    }
    return {**config, "lr": args.lr} if hasattr(args, "lr") else config


def setup_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """``device``, ``dtype``, ``seed`` and (where the benchmark has it) ``lr`` of the options of
    :func:`add_timing_arguments`, as keyword arguments of a benchmark function."""
    setup = {"device": args.device, "dtype": DTYPES[args.dtype], "seed": args.seed}
    return {**setup, "lr": args.lr} if hasattr(args, "lr") else setup


def apply_timing_arguments(args: argparse.Namespace) -> TimingOptions:
    """Check the options of :func:`add_timing_arguments`, set the thread count, make sure
    matplotlib is there when plots are wanted (an error now, not after minutes of timing), and
    return the timing options."""
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
    return TimingOptions.from_args(args)

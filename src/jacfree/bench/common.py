"""What the ``jacfree bench`` benchmarks share: where a run happens and the record of its
environment, the output files (text tables, CSVs, ``environment.json``, plots) and the
command-line options of a timing run."""

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
from .._checks import resolve_device
from ..plots import pyplot
from .step import COMPILE_MODES
from .timing import CLOCKS, TimingOptions

#: the dtypes a benchmark can run in, by their command-line names
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}

#: the file every benchmark writes its environment, settings and checks to
ENV_NAME = "environment.json"

THREADS_HELP = "torch.set_num_threads (default 1: reproducible, and fair on a shared machine; 0 = "
THREADS_HELP += "torch's choice)"

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")

#: what ``pyplot`` says when matplotlib is missing and a benchmark was asked for its plots
PLOT_HINT = "the benchmark plots need matplotlib (or pass --no-plot)"


# -- where a benchmark runs -------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
        "cpu_affinity": sorted(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "openmp": torch.backends.openmp.is_available(),
        "thread_env": {k: os.environ[k] for k in THREAD_VARIABLES if k in os.environ},
        "device": str(device),
    }
    if device.type == "cuda" and torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def describe_setup(
    device: object, dtype: object, clock: str = "wall", compile: str | None = None
) -> str:
    """One phrase for table titles: ``"cpu float32, 1 thread(s)"``, the clock if not wall and the
    compile mode if any."""
    text = f"{device} {dtype}, {torch.get_num_threads()} thread(s)"
    text += "" if clock == "wall" else f", {clock} CPU time"
    return text + ("" if compile is None else f", loss compiled ({compile})")


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


def write_results(
    out: str | Path,
    csvs: Mapping[str, tuple[str, Sequence[dict[str, Any]], Sequence[str]]],
    record: dict[str, Any],
    *,
    device: torch.device | str = "cpu",
    plots: Mapping[str, tuple[str, Callable[[Path], Path]]] | None = None,
) -> dict[str, Path]:
    """Write a benchmark's output folder ``out`` and return the paths written, by key: the
    ``csvs`` (``{key: (file name, rows, columns)}``), ``record`` after the environment in
    :data:`ENV_NAME`, the ``plots`` (``{key: (file name, draw)}``, ``draw(path)`` writes one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {key: write_csv(rows, out / name, cols) for key, (name, rows, cols) in csvs.items()}
    env = {"environment": environment_info(device), **record}
    paths["environment"] = out / ENV_NAME  # values JSON cannot hold go through csv_cell
    paths["environment"].write_text(json.dumps(env, indent=2, default=csv_cell) + "\n")
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


def list_type(convert: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """argparse type: space- or comma-separated values, each through ``convert`` (whose
    ``ValueError`` becomes the usage error)."""

    def parse(text: str) -> list[Any]:
        try:
            values = [convert(t) for t in text.replace(",", " ").split()]
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from err
        if not values:
            raise argparse.ArgumentTypeError(f"expected at least one value, got {text!r}")
        return values

    return parse


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"expected positive integers, got {text!r}")
    return int(text)


def choice_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    """argparse type: a non-empty space- or comma-separated list of names among ``choices``."""

    def choice(name: str) -> str:
        if name not in choices:
            raise ValueError(f"unknown {what} {name}; choose among {', '.join(choices)}")
        return name

    return list_type(choice)


#: argparse type: space- or comma-separated positive integers
positive_int_list = list_type(_positive_int)


class _Flatten(argparse.Action):
    """A list option: every value parses to a list; the option holds them all, in order."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, [v for group in values for v in group])


#: one command-line option: ``(flag, type, default, help)``. A tuple ``type`` lists the choices,
#: ``bool`` makes a switch, a tuple ``default`` a list option (``type`` parses one space- or
#: comma-separated group; an optional fifth item is its ``nargs``, default ``"+"``).
Option = tuple


def add_options(parser: argparse.ArgumentParser, options: Sequence[Option]) -> None:
    """One argparse option per :data:`Option` of ``options``."""
    for flag, kind, default, text, *nargs in options:
        if kind is bool:
            parser.add_argument(flag, action="store_true", help=text)
        elif isinstance(kind, tuple):
            parser.add_argument(flag, default=default, choices=kind, help=text)
        elif isinstance(default, tuple):
            text = f"{text} (default: {' '.join(map(str, default))})"
            nargs = nargs[0] if nargs else "+"
            parser.add_argument(
                flag, type=kind, nargs=nargs, action=_Flatten, default=list(default), help=text
            )
        else:
            parser.add_argument(flag, type=kind, default=default, help=text)


def add_timing_arguments(
    parser: argparse.ArgumentParser,
    description: str,
    options: Sequence[Option],
    budget: float,
    per: str,
    out: tuple[Path, str],
    lr: float | None = None,
) -> None:
    """The benchmark's ``description`` and ``options``, then the options every timing benchmark
    has: ``budget`` (seconds of timed rounds per ``per``: ``"D"``, ``"case"``, ``"model"``),
    ``out`` (the default folder, and what is written there) and ``lr`` (``None``: no ``--lr``)."""
    out, outputs = out
    parser.description = description
    adaptive = "adaptive repeats: "
    clock = "wall: wall-clock time (default; use it on a quiet machine); process: CPU time of this "
    clock += "process, which leaves out the waits for a core on a busy machine (with --threads 1)"
    compile = "time the steps with the loss compiled by torch.compile(fullgraph=True) in this "
    compile += "mode (reduce-overhead: also a CUDA graph on a GPU); default: eager. The profile "
    compile += "columns (operations per step, host reads, GPU busy) are written either way"
    timing: list[Option] = [
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
        ("--dtype", tuple(sorted(DTYPES)), "float32", None),
        ("--clock", tuple(sorted(CLOCKS)), "wall", clock),
        ("--compile", COMPILE_MODES, None, compile),
        ("--no-plot", bool, False, "do not write the PNG plots"),
        ("--quiet", bool, False, "no progress lines on stderr"),
    ]
    add_options(parser, [*options, *(o for o in timing if o[0] != "--lr" or lr is not None)])


def start(args: argparse.Namespace) -> tuple[TimingOptions, dict[str, Any], dict[str, Any]]:
    """Check the options of :func:`add_timing_arguments`, set the thread count, make sure of
    matplotlib when plots are wanted (now, not after minutes of timing); return the timing
    options, ``device``, ``dtype``, ``seed`` (and ``lr``) as keyword arguments of a benchmark
    function, and the options as recorded in ``environment.json``."""
    checks = (
        ("--threads", args.threads >= 0, ">= 0 (0: torch's choice)", args.threads),
        ("--repeats", args.repeats is None or args.repeats >= 1, ">= 1", args.repeats),
        ("--warmup", args.warmup >= 0, ">= 0", args.warmup),
        ("--budget", args.budget > 0, "> 0 seconds", args.budget),
        (
            "--min-repeats",
            1 <= args.min_repeats <= args.max_repeats,
            "between 1 and --max-repeats",
            args.min_repeats,
        ),
    )
    for flag, ok, need, value in checks:
        if not ok:
            raise ValueError(f"{flag} must be {need}, got {value}.")
    resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.no_plot:
        pyplot(PLOT_HINT)
    names = ("repeats", "warmup", "budget", "min_repeats", "max_repeats", "clock", "compile")
    timing = TimingOptions(**{n: getattr(args, n) for n in names}, progress=not args.quiet)
    setup = {"device": args.device, "dtype": DTYPES[args.dtype], "seed": args.seed}
    recorded = ("repeats", "warmup", "budget", "min_repeats", "max_repeats", "device", "dtype")
    config = {("budget_s" if k == "budget" else k): getattr(args, k) for k in recorded}
    config |= {"seed": args.seed, "clock": args.clock, "threads": torch.get_num_threads()}
    config["optimizer"] = "jacfree.train.make_adam"
    if hasattr(args, "lr"):
        setup["lr"] = config["lr"] = args.lr
    return timing, setup, config


def print_paths(paths: Mapping[str, Path]) -> None:
    """Say which files a benchmark wrote."""
    for path in paths.values():
        print(f"wrote {path}")


def hbars(
    ax: Any,
    ys: Sequence[float],
    xs: Sequence[float],
    notes: Sequence[str | None],
    xlabel: str,
    **style: Any,
) -> None:
    """Horizontal bars on a log x axis (``style``: of ``barh``), ``notes`` written after them."""
    ax.barh(ys, xs, **style)
    for y, x, note in zip(ys, xs, notes, strict=True):
        if note:
            ax.text(x, y, f" {note}", va="center", fontsize=7)
    ax.set(xscale="log", xlabel=xlabel)
    ax.grid(True, axis="x", which="major", alpha=0.3)

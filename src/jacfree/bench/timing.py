"""A small wall-clock timing helper shared by the ``jacfree bench`` benchmarks.

What it measures: the wall-clock time of single calls of a function, each bracketed by a device
synchronisation (``torch.cuda.synchronize`` on CUDA; nothing is needed on the CPU, whose kernels
return when done), after a few untimed warm-up calls (allocator growth, kernel selection, caches).
The summary statistics are robust ones — median, min, max and inter-quartile range — because a
shared machine adds one-sided noise: a slow outlier must not move the figure that is reported.

Several functions (the variants of a benchmark) are timed **interleaved**: one call of each per
round, the order rotated from round to round, so slow drift of the machine's speed (other jobs,
thermal state) hits every variant equally and the ratios between variants stay meaningful.

The number of timed rounds can be chosen adaptively from a time budget: after the warm-up, the
duration of one round is estimated and as many rounds are run as fit in the budget, clamped to
``[min_repeats, max_repeats]``.

Example:
    >>> import torch
    >>> from jacfree.bench.timing import time_interleaved
    >>> a, b = torch.randn(64, 64), torch.randn(64, 64)
    >>> stats = time_interleaved({"mm": lambda: a @ b, "add": lambda: a + b}, repeats=5, warmup=1)
    >>> stats["mm"].n
    5
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from .._checks import check_positive_int

__all__ = [
    "CLOCKS",
    "TimingOptions",
    "TimingStats",
    "choose_repeats",
    "synchronize",
    "time_call",
    "time_function",
    "time_interleaved",
]


def synchronize(device: torch.device | str | None) -> None:
    """Wait for every queued kernel on ``device`` (a no-op on the CPU)."""
    if device is None:
        return
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":  # pragma: no cover - hardware dependent
        torch.mps.synchronize()


#: the clocks a timing can use: wall-clock time, or the CPU time of this process (all threads)
CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "process": time.process_time,
}


def time_call(
    fn: Callable[[], object], device: torch.device | str | None = None, clock: str = "wall"
) -> float:
    """Seconds taken by one call of ``fn``, with the device synchronised before and after.

    Python's garbage collector is paused during the call (as :mod:`timeit` does), so a collection
    triggered by earlier allocations is not charged to this call.

    ``clock="process"`` counts the CPU time of this process instead of wall-clock time: on a
    machine shared with other jobs, a single-threaded CPU computation then is not charged the
    time it waits for a core (it sums the CPU time of every thread, and misses GPU time).
    """
    timer = CLOCKS[clock]
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        synchronize(device)
        start = timer()
        fn()
        synchronize(device)
        return timer() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linearly interpolated quantile of already sorted values (numpy's default rule)."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


@dataclass(frozen=True)
class TimingStats:
    """Times of repeated calls, in seconds, with robust summaries."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("TimingStats needs at least one sample.")

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def _sorted(self) -> list[float]:
        return sorted(self.samples)

    @property
    def median(self) -> float:
        return _quantile(self._sorted, 0.5)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def mean(self) -> float:
        return sum(self.samples) / len(self.samples)

    @property
    def q1(self) -> float:
        return _quantile(self._sorted, 0.25)

    @property
    def q3(self) -> float:
        return _quantile(self._sorted, 0.75)

    @property
    def iqr(self) -> float:
        """Inter-quartile range q3 − q1: the spread of the middle half of the samples."""
        return self.q3 - self.q1

    def summary(self, unit: str = "ms", prefix: str = "") -> dict[str, float | int]:
        """Flat dict ``{prefix}median_{unit}``, min, max, mean, q1, q3, iqr and ``{prefix}n``."""
        scale = {"s": 1.0, "ms": 1e3, "us": 1e6}[unit]
        out: dict[str, float | int] = {
            f"{prefix}{name}_{unit}": getattr(self, name) * scale
            for name in ("median", "min", "max", "mean", "q1", "q3", "iqr")
        }
        out[f"{prefix}n"] = self.n
        return out


def choose_repeats(
    seconds_per_round: float, budget: float, min_repeats: int = 3, max_repeats: int = 100
) -> int:
    """How many timed rounds fit in ``budget`` seconds, within ``[min_repeats, max_repeats]``."""
    if min_repeats < 1 or max_repeats < min_repeats:
        raise ValueError(
            f"need 1 <= min_repeats <= max_repeats, got {min_repeats} and {max_repeats}."
        )
    if seconds_per_round <= 0:
        return max_repeats
    return max(min_repeats, min(max_repeats, int(budget / seconds_per_round)))


def time_interleaved(
    fns: Mapping[str, Callable[[], object]],
    *,
    repeats: int | None = None,
    warmup: int = 1,
    device: torch.device | str | None = None,
    setup: Mapping[str, Callable[[], object]] | None = None,
    budget: float = 10.0,
    min_repeats: int = 3,
    max_repeats: int = 100,
    clock: str = "wall",
) -> dict[str, TimingStats]:
    """Time several functions side by side: one call of each per round, order rotated per round.

    Args:
        fns: the functions to time, by name; each is called with no argument.
        repeats: number of timed rounds; ``None`` chooses it from ``budget`` (see
            :func:`choose_repeats`), using the duration of the last warm-up round (or of the first
            timed round when ``warmup == 0``).
        warmup: untimed rounds run first.
        device: the device whose queue is synchronised around every timed call.
        setup: optional untimed callables, by name, run right before each (warm-up or timed) call
            of the function of the same name — e.g. to restore parameters to a fixed state.
        budget: seconds of timed rounds to aim for when ``repeats`` is ``None``.
        min_repeats, max_repeats: bounds of the adaptive choice.
        clock: ``"wall"`` (wall-clock time) or ``"process"`` (CPU time of this process, see
            :func:`time_call`).

    Returns:
        ``{name: TimingStats}`` with one sample per timed round.
    """
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}.")
    if not fns:
        raise ValueError("time_interleaved needs at least one function.")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1 (or None for adaptive), got {repeats}.")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}.")
    names = list(fns)
    setup = dict(setup or {})
    unknown = set(setup) - set(names)
    if unknown:
        raise ValueError(f"setup names {sorted(unknown)} are not among the functions {names}.")
    samples: dict[str, list[float]] = {name: [] for name in names}

    def one_round(index: int) -> dict[str, float]:
        shift = index % len(names)
        times = {}
        for name in names[shift:] + names[:shift]:
            if name in setup:
                setup[name]()
            times[name] = time_call(fns[name], device, clock)
        return times

    last_round = 0.0
    for i in range(warmup):
        last_round = sum(one_round(i).values())
    done = 0
    if repeats is None:
        if warmup == 0:
            first = one_round(0)
            for name, t in first.items():
                samples[name].append(t)
            last_round = sum(first.values())
            done = 1
        repeats = choose_repeats(last_round, budget, min_repeats, max_repeats)
    for i in range(done, repeats):
        for name, t in one_round(warmup + i).items():
            samples[name].append(t)
    return {name: TimingStats(tuple(samples[name])) for name in names}


def time_function(
    fn: Callable[[], object],
    *,
    repeats: int | None = None,
    warmup: int = 1,
    device: torch.device | str | None = None,
    setup: Callable[[], object] | None = None,
    budget: float = 10.0,
    min_repeats: int = 3,
    max_repeats: int = 100,
    clock: str = "wall",
) -> TimingStats:
    """Time one function: :func:`time_interleaved` with a single entry."""
    return time_interleaved(
        {"fn": fn},
        repeats=repeats,
        warmup=warmup,
        device=device,
        setup=None if setup is None else {"fn": setup},
        budget=budget,
        min_repeats=min_repeats,
        max_repeats=max_repeats,
        clock=clock,
    )["fn"]


@dataclass(frozen=True)
class TimingOptions:
    """How the steps of a benchmark are timed (the options of ``add_timing_arguments``).

    ``repeats`` timed rounds after ``warmup`` untimed ones; ``repeats=None`` fits as many rounds
    as take ``budget`` seconds, within ``[min_repeats, max_repeats]``. ``clock`` is ``"wall"`` or
    ``"process"`` (CPU time of the process), ``compile`` a ``torch.compile`` mode of the losses
    or ``None`` (eager), ``progress`` prints progress lines on stderr.
    """

    repeats: int | None = None
    warmup: int = 2
    budget: float = 10.0
    min_repeats: int = 7
    max_repeats: int = 200
    clock: str = "wall"
    compile: str | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        check_positive_int(self.warmup, "warmup", 0)
        check_positive_int(self.min_repeats, "min_repeats")
        if self.repeats is not None:
            check_positive_int(self.repeats, "repeats")
        if not (isinstance(self.budget, int | float) and self.budget > 0):
            raise ValueError(f"budget must be a positive number of seconds, got {self.budget!r}.")
        if self.clock not in CLOCKS:
            raise ValueError(f"unknown clock {self.clock!r}; choose from {', '.join(CLOCKS)}.")

    @classmethod
    def of(
        cls, timing: TimingOptions | None, options: Mapping[str, Any], budget: float
    ) -> TimingOptions:
        """``timing`` if given (then ``options`` must be empty), else built from ``options``
        (keyword arguments of a benchmark function) with a default ``budget``."""
        if timing is not None and options:
            raise TypeError(f"pass timing= or {', '.join(options)}, not both.")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}.")
        return timing or cls(**{"budget": budget, **options})

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TimingOptions:
        """The options of ``add_timing_arguments``, parsed (and checked by
        :func:`~jacfree.bench.common.apply_timing_arguments`)."""
        names = ("repeats", "warmup", "budget", "min_repeats", "max_repeats", "clock", "compile")
        return cls(**{n: getattr(args, n) for n in names}, progress=not args.quiet)

    def time(
        self,
        fns: Mapping[str, Callable[[], object]],
        setup: Mapping[str, Callable[[], object]] | None = None,
        *,
        device: torch.device | str | None,
        budget: float | None = None,
    ) -> dict[str, TimingStats]:
        """:func:`~jacfree.bench.timing.time_interleaved` with these options."""
        return time_interleaved(
            fns,
            setup=setup,
            repeats=self.repeats,
            warmup=self.warmup,
            device=device,
            budget=self.budget if budget is None else budget,
            min_repeats=self.min_repeats,
            max_repeats=self.max_repeats,
            clock=self.clock,
        )

    def say(self, text: str) -> None:
        """A progress line on stderr (unless ``progress=False``)."""
        if self.progress:
            print(text, file=sys.stderr)

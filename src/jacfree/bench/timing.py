"""Timing of single calls, bracketed by device synchronisations, with robust summaries (median,
quartiles: a shared machine adds one-sided noise); several functions are timed interleaved, the
order rotated per round, so a drift of the machine's speed hits them alike. The number of rounds
can be fitted to a time budget. Why the benchmarks time this way: ``docs/bench-sm.md``.

Example:
    >>> import torch
    >>> from jacfree.bench.timing import time_interleaved
    >>> a, b = torch.randn(64, 64), torch.randn(64, 64)
    >>> stats = time_interleaved({"mm": lambda: a @ b, "add": lambda: a + b}, repeats=5, warmup=1)
    >>> stats["mm"].n
    5
"""

from __future__ import annotations

import gc
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from .._checks import check_positive_int


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
    """Seconds taken by one call of ``fn``, the device synchronised before and after, the garbage
    collector paused (as :mod:`timeit` does); ``clock="process"``: CPU time of this process."""
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


@dataclass(frozen=True)
class TimingStats:
    """Times of repeated calls, in seconds, with robust summaries; ``iqr`` = q3 − q1, the spread
    of the middle half of the samples."""

    samples: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("TimingStats needs at least one sample.")

    def quantile(self, q: float) -> float:
        """Linearly interpolated quantile of the samples (numpy's default rule)."""
        values = sorted(self.samples)
        pos = q * (len(values) - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, len(values) - 1)
        return values[lo] + (pos - lo) * (values[hi] - values[lo])

    n = property(lambda self: len(self.samples))
    median = property(lambda self: self.quantile(0.5))
    q1 = property(lambda self: self.quantile(0.25))
    q3 = property(lambda self: self.quantile(0.75))
    iqr = property(lambda self: self.q3 - self.q1)
    min = property(lambda self: min(self.samples))
    max = property(lambda self: max(self.samples))
    mean = property(lambda self: sum(self.samples) / len(self.samples))

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
    """Time the functions ``fns`` (by name, no arguments) side by side: one call of each per
    round, the order rotated per round; return ``{name: TimingStats}``, a sample per timed round.

    ``repeats`` timed rounds follow ``warmup`` untimed ones; ``repeats=None`` fits the rounds
    into ``budget`` seconds (:func:`choose_repeats`, from the last warm-up round, or the first
    timed one). ``setup`` callables, by name, run untimed right before each call of the function
    of that name (e.g. to restore parameters). ``clock``: see :func:`time_call`.
    """
    TimingOptions(repeats, warmup, budget, min_repeats, max_repeats, clock)  # checks them
    if not fns:
        raise ValueError("time_interleaved needs at least one function.")
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
    fn: Callable[[], object], *, setup: Callable[[], object] | None = None, **options: Any
) -> TimingStats:
    """Time one function: :func:`time_interleaved` with a single entry (the same ``options``)."""
    setup_fns = None if setup is None else {"fn": setup}
    return time_interleaved({"fn": fn}, setup=setup_fns, **options)["fn"]


@dataclass(frozen=True)
class TimingOptions:
    """How the steps of a benchmark are timed (:func:`time_interleaved`'s options); ``compile``:
    a ``torch.compile`` mode of the losses (``None``: eager), ``progress``: lines on stderr."""

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
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise TypeError(f"unexpected keyword argument(s) {', '.join(unknown)}.")
        return timing or cls(**{"budget": budget, **options})

    def time(
        self,
        fns: Mapping[str, Callable[[], object]],
        setup: Mapping[str, Callable[[], object]] | None = None,
        *,
        device: torch.device | str | None,
        budget: float | None = None,
    ) -> dict[str, TimingStats]:
        """:func:`~jacfree.bench.timing.time_interleaved` with these options."""
        names = ("repeats", "warmup", "min_repeats", "max_repeats", "clock")
        budget = self.budget if budget is None else budget
        kw = {n: getattr(self, n) for n in names}
        return time_interleaved(fns, setup=setup, device=device, budget=budget, **kw)

    def say(self, text: str) -> None:
        """A progress line on stderr (unless ``progress=False``)."""
        if self.progress:
            print(text, file=sys.stderr)

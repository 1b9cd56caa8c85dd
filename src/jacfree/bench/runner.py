"""The one runner of the step benchmarks: time the variants interleaved, check, summarise.

:func:`run_variants` takes the :class:`~jacfree.bench.step.TrainingStep` of every variant of one
model (or of one D), times their steps **interleaved** — one step of each per round, the order
rotated per round, the parameters restored before every step outside the timed region
(:func:`~jacfree.bench.timing.time_interleaved`) — refuses a variant whose last loss is not finite
(its timings would be meaningless), and returns one row per variant: the robust summaries of the
step times in milliseconds, the optimiser, threads and clock, and the step's profile
(:data:`~jacfree.bench.common.PROFILE_COLUMNS`, :mod:`jacfree.bench.profile`). Each benchmark
adds its own columns (ratios, sizes, memory) to these rows.

Why the steps are timed this way, in every benchmark:

* interleaved rounds: a drift of a shared machine's speed (other jobs, thermal state) hits every
  variant alike, so the ratios between variants stay meaningful;
* the same start: the variants of a model start from the same weights (deep copies, or one
  model with one optimiser), use the same optimiser (``jacfree.train.make_adam``, fused Adam)
  on the same few pre-generated batches;
* the parameters restored before every step: Adam moves every coordinate by ≈ lr per step, which
  at D = 3072 makes a weight matrix badly conditioned within a few dozen steps; restoring keeps
  every timed step on the same weights (the optimiser's moments keep accumulating, which does
  not change the work done). A step's cost depends on the shapes, not on the values;
* robust figures: the median over the timed rounds after warm-up (min, max and quartiles in the
  CSVs), the number of rounds fitted to a time budget unless ``repeats`` is given;
* one thread by default (``--threads``): the per-operation costs are not blurred by how well each
  kernel parallelises (LAPACK's O(D³) factorisations scale with threads better than small
  products do), and a single-threaded run is far less sensitive to other jobs; ``--clock
  process`` counts the CPU time of the process, which leaves out the waits for a core.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch

from .common import profile_columns
from .step import TrainingStep
from .timing import CLOCKS, TimingStats, time_interleaved

__all__ = ["TimingOptions", "run_variants", "stats_columns"]


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
        for name, minimum in (("warmup", 0), ("repeats", 1), ("min_repeats", 1)):
            value = getattr(self, name)
            if (value is not None or name != "repeats") and (
                isinstance(value, bool) or not isinstance(value, int) or value < minimum
            ):
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
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


def stats_columns(stats: TimingStats, scale: float = 1.0) -> dict[str, Any]:
    """``median_ms``, ``min_ms``, … ``mean_ms`` (times ``scale``) and ``repeats`` of ``stats``."""
    summary = stats.summary("ms")
    return {**{k: v * scale for k, v in summary.items() if k.endswith("_ms")}, "repeats": stats.n}


def run_variants(
    steps: Mapping[str, TrainingStep],
    timing: TimingOptions,
    device: torch.device,
    *,
    what: str,
    hint: str = "Try a smaller --lr or --dtype float64.",
) -> dict[str, dict[str, Any]]:
    """Time ``steps`` interleaved, check their losses, and return one row per variant.

    Args:
        steps: the training step of each variant, by name (the row order).
        timing: repeats, warm-up, budget, clock, compile mode.
        device: the device whose queue is synchronised around every timed step.
        what: what the steps train, for the error message (``"D=784"``, ``"mlp"``).
        hint: the advice appended to that message.

    Returns:
        ``{variant: row}`` with :func:`stats_columns`, ``optimizer``, ``threads``, ``clock`` and
        the profile columns of the step (profiled after all timings).

    Raises:
        FloatingPointError: a variant's last loss is NaN or infinite.
    """
    stats = timing.time(
        {k: s.step for k, s in steps.items()},
        {k: s.reset for k, s in steps.items()},
        device=device,
    )
    for k, s in steps.items():
        if s.last_loss is None or not bool(torch.isfinite(s.last_loss)):
            raise FloatingPointError(
                f"the {k} step of {what} produced a non-finite loss ({s.last_loss}); the timings "
                f"would be meaningless. {hint}"
            )
    return {
        k: {
            **stats_columns(stats[k]),
            "optimizer": s.optimizer_name,
            "threads": torch.get_num_threads(),
            "clock": timing.clock,
            **profile_columns(s.step, device, timing.compile),
        }
        for k, s in steps.items()
    }

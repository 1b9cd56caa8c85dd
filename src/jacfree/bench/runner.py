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

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._checks import check_positive_int
from .common import DTYPES, profile_columns, resolve_device
from .step import TrainingStep
from .timing import TimingOptions, TimingStats

__all__ = ["TimingOptions", "check_run", "check_variants", "run_variants", "stats_columns"]


def check_run(
    device: torch.device | str, dtype: torch.dtype, why: str = "", **sizes: int
) -> torch.device:
    """Check the device (returned as a ``torch.device``), the dtype (float32 or float64; ``why``
    explains a refusal further) and that every one of ``sizes`` is a positive integer."""
    for name, value in sizes.items():
        check_positive_int(value, name)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}{why}.")
    return resolve_device(device)


def check_variants(variants: Sequence[str], allowed: Sequence[str]) -> tuple[str, ...]:
    """``variants`` as a tuple, checked: not empty, distinct, among ``allowed``."""
    variants = tuple(variants)
    bad = [v for v in variants if v not in allowed]
    if bad or not variants or len(set(variants)) != len(variants):
        raise ValueError(
            f"unknown, repeated or no variants in {list(variants)}; choose distinct ones among "
            f"{', '.join(allowed)}."
        )
    return variants


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

"""The one runner of the step benchmarks: :func:`run_variants` times the training steps of the
variants interleaved, refuses a non-finite loss, and summarises each variant as a row (robust
step times, optimiser, threads, clock, profile); each benchmark adds its own columns. Why the
steps are timed this way: ``docs/bench-sm.md``, "How the time is measured".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._checks import check_positive_int
from .common import DTYPES, profile_columns, resolve_device
from .step import TrainingStep
from .timing import TimingOptions, TimingStats


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


def setup_columns(
    timing: TimingOptions, device: torch.device, dtype: torch.dtype
) -> dict[str, Any]:
    """``warmup``, ``device`` and ``dtype`` of a run, as in the CSVs."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {"warmup": timing.warmup, "device": str(device), "dtype": dtype_name}


@dataclass(frozen=True)
class Run:
    """What the steps of one benchmark run share (``n_batches``: pre-generated batches)."""

    timing: TimingOptions
    device: torch.device
    dtype: torch.dtype
    seed: int
    lr: float
    batch: int
    n_batches: int


def run_variants(
    steps: Mapping[str, TrainingStep],
    timing: TimingOptions,
    device: torch.device,
    *,
    what: str,
    label: str = "bench",
    hint: str = "Try a smaller --lr or --dtype float64.",
) -> dict[str, dict[str, Any]]:
    """Time ``steps`` (by variant, in row order) interleaved on ``device`` and return
    ``{variant: row}``: :func:`stats_columns`, ``optimizer``, ``threads``, ``clock`` and the
    step's profile (after all timings). ``what`` (``"D=784"``, ``"mlp"``) and ``label`` (the
    benchmark) name the progress lines; a non-finite last loss raises ``FloatingPointError``
    with ``hint``.
    """
    timing.say(f"[{label}] {what}: timing {', '.join(steps)} ...")
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
    medians = ", ".join(f"{k} {s.median * 1e3:.2f} ms" for k, s in stats.items())
    timing.say(f"[{label}] {what}: {next(iter(stats.values())).n} steps each; {medians}")
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

"""Benchmarks behind ``jacfree bench``: a small framework and thin benchmark definitions.

The framework: :mod:`~jacfree.bench.timing` (interleaved timing, robust summaries, the timing
options), :mod:`~jacfree.bench.step` (one full training step of a variant, and its reset),
:mod:`~jacfree.bench.runner` (``run_variants``: time, check, summarise as rows),
:mod:`~jacfree.bench.profile` and :mod:`~jacfree.bench.memory` (what a step asks of the device,
the memory it allocates), :mod:`~jacfree.bench.common` (environment, options, tables, the
writer of CSVs, ``environment.json`` and plots). The benchmarks: :mod:`~jacfree.bench.scaling`
(time per step vs D, the one time-vs-D sweep), :mod:`~jacfree.bench.snf`,
:mod:`~jacfree.bench.sm` and :mod:`~jacfree.bench.data_loading`.
"""

from .runner import run_variants
from .scaling import floor_loss, scaling_benchmark
from .step import TrainingStep
from .timing import TimingOptions, TimingStats, time_function, time_interleaved

__all__ = [
    "TimingOptions",
    "TimingStats",
    "TrainingStep",
    "floor_loss",
    "run_variants",
    "scaling_benchmark",
    "time_function",
    "time_interleaved",
]

"""Benchmarks behind ``jacfree bench``: a small framework (:mod:`~jacfree.bench.timing`,
:mod:`~jacfree.bench.step`, :mod:`~jacfree.bench.runner`, :mod:`~jacfree.bench.profile`,
:mod:`~jacfree.bench.memory`, :mod:`~jacfree.bench.common`) and thin benchmark definitions
(:mod:`~jacfree.bench.scaling`, :mod:`~jacfree.bench.snf`, :mod:`~jacfree.bench.sm`,
:mod:`~jacfree.bench.data_loading`).
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

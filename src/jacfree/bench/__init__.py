"""Benchmarks behind ``jacfree bench``.

* :mod:`jacfree.bench.scaling` — time per training step vs the dimension D for the exact
  (slogdet), relative-gradient and no-log-det ("floor") variants of ``FCFlow``;
* :mod:`jacfree.bench.timing` — the shared timing helper (warm-up, synchronised repeated calls,
  interleaved variants, median / min / IQR).
"""

from .scaling import floor_loss, scaling_benchmark
from .timing import TimingStats, time_function, time_interleaved

__all__ = ["TimingStats", "floor_loss", "scaling_benchmark", "time_function", "time_interleaved"]

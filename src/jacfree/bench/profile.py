"""What one training step asks of the device, under ``torch.profiler``: ``aten::`` operations
(a device-free proxy for kernel launches), host reads of tensor values (each a synchronisation
on a GPU) and, on CUDA, kernels, device time and ``gpu_busy``. See ``docs/gpu.md``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from .timing import synchronize

#: profiler events that read a tensor value on the host (a device synchronisation on a GPU)
HOST_READS = ("aten::_local_scalar_dense", "aten::equal", "aten::is_nonzero")


def profile_step(
    step: Callable[[], object], device: torch.device | str, *, steps: int = 3
) -> dict[str, Any]:
    """Profile ``steps`` calls of ``step`` (after one untimed call): ``ops_per_step``,
    ``host_reads_per_step`` and, on CUDA, ``kernels_per_step``, ``device_ms``, ``wall_ms`` and
    ``gpu_busy`` (device / wall time: kernels on one stream do not overlap)."""
    device = torch.device(device)
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    step()
    synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        wall = (time.perf_counter() - start) / steps
    events = prof.events()
    out: dict[str, Any] = {
        "ops_per_step": sum(e.name.startswith("aten::") for e in events) / steps,
        "host_reads_per_step": sum(e.name in HOST_READS for e in events) / steps,
    }
    if cuda:
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        device_us = sum(e.time_range.elapsed_us() for e in kernels)
        out["kernels_per_step"] = len(kernels) / steps
        out["device_ms"] = device_us / 1e3 / steps
        out["wall_ms"] = wall * 1e3
        out["gpu_busy"] = out["device_ms"] / out["wall_ms"]
    return out

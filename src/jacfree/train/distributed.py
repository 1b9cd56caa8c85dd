"""Data-parallel training over ``torch.distributed`` (DDP), as :func:`jacfree.fit` uses it.

Launch any training script or the CLI with PyTorch's own launcher, e.g.::

    torchrun --nproc-per-node 2 -m jacfree train --data fashion-mnist --gradient relative

Every process holds the whole model; each step, the global batch of ``batch_size`` rows (the same
shuffled indices on every rank) is split into one shard per rank, each rank computes its shard's
loss, and DDP averages the gradients. :func:`jacfree.fit` scales each rank's loss by its share of
the global batch, so the averaged gradient is the gradient of the **global** batch-mean loss.

Why the cheap gradient modes need nothing special: a relative-gradient or self-normalizing weight
gradient is *linear* in the back-propagated errors of the batch, and its data-free part (−W for the
relative gradient, the Rᵀ/Wᵀ terms of SNF) enters each rank with the coefficient of the log-det in
that rank's (scaled) loss, and those coefficients sum to the global one. So the average over ranks
equals the rule applied to the global batch, exactly as for ordinary gradients (tested in
``tests/test_distributed.py`` against single-process training).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


@dataclass(frozen=True)
class Cluster:
    """Where this process stands: ``rank`` of ``world`` processes (``world == 1``: no DDP)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def current() -> Cluster:
    """The cluster of the initialised default process group, else a single process."""
    if dist.is_available() and dist.is_initialized():
        return Cluster(dist.get_rank(), dist.get_world_size())
    return Cluster()


def init_from_env(device: torch.device) -> Cluster:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE``,
    ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); a single process without it.

    The backend is NCCL for CUDA devices and Gloo otherwise. Returns the cluster.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 but this PyTorch has no torch.distributed; install a build with it "
            "or run a single process."
        )
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    return current()


def local_device(device: torch.device) -> torch.device:
    """The CUDA device of this rank (``LOCAL_RANK``) when ``device`` is CUDA, else ``device``."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def broadcast_object(value: Any, cluster: Cluster) -> Any:
    """``value`` of rank 0, on every rank."""
    if not cluster.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(value: Any, cluster: Cluster) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not cluster.active:
        return [value]
    out: list[Any] = [None] * cluster.world
    dist.all_gather_object(out, value)
    return out


def sum_tensors(values: list[Tensor], cluster: Cluster) -> list[Tensor]:
    """Element-wise sums over ranks of scalar tensors (one all-reduce)."""
    if not cluster.active or not values:
        return values
    flat = torch.stack([v.detach().double().reshape(()) for v in values])
    dist.all_reduce(flat)
    return list(flat.unbind())


def barrier(cluster: Cluster) -> None:
    if cluster.active:
        dist.barrier()


class ObjectiveModule(nn.Module):
    """``forward(x) = objective(model, x)``: the module DDP wraps, so that every objective (not
    only ``model.forward``) runs through DDP's forward and its gradients are averaged."""

    def __init__(self, model: nn.Module, objective: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor) -> Tensor:
        return self.objective(self.model, x)


def data_parallel(
    model: nn.Module, objective: Callable[[nn.Module, Tensor], Tensor], device: torch.device
) -> nn.Module:
    """Wrap ``objective(model, ·)`` in DistributedDataParallel (parameters and buffers of rank 0
    are broadcast to every rank here)."""
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(ObjectiveModule(model, objective), device_ids=ids)

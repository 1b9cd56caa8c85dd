r"""Per-sample random numbers that depend on the sample, not on who draws them.

Training draws fresh random numbers for every sample (uniform dequantisation noise, for
example). With torch's global generator those numbers depend on the order of the draws: in
data-parallel training each process draws for its own shard of the batch, so the noise of a
sample changes with the number of processes, and DDP training differs from one-process training.

Inside :func:`indexed`, :func:`rand_like` instead returns, for row ``b`` of a batch whose rows
are the samples ``index``, numbers that are a **function of (seed, epoch, the sample's global
index, the position in the row, the call's rank in the step)** only — the same whichever process
draws them and whatever else is in its shard. They come from a counter-based hash (a
32-bit integer finaliser, "lowbias32" of C. Wellons, applied twice), computed with integer tensor
ops on the tensor's device: no host synchronisation, and traceable by ``torch.compile``.

:func:`jacfree.fit` opens this context around every training step. Outside it (evaluation, user
code) :func:`rand_like` is ``torch.rand_like``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["dequantise", "indexed", "rand_like", "randn_like", "row_keys"]

_MASK = 0xFFFFFFFF


def _mul32(x: Tensor | int, c: int) -> Tensor | int:
    """``x · c mod 2³²`` for ``0 ≤ x < 2³²`` without overflowing int64 (split ``c`` in halves)."""
    lo, hi = c & 0xFFFF, c >> 16
    return (x * lo + (((x * hi) & 0xFFFF) << 16)) & _MASK


def _hash32(x: Tensor | int) -> Tensor | int:
    """A bijective mixing of 32-bit integers (lowbias32; every input bit affects every output)."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_keys(index: Tensor, seed: int, epoch: int) -> Tensor:
    """One 32-bit key per sample (int64 tensor like ``index``): a hash of (seed, epoch, index)."""
    salt = _hash32((_hash32(seed & _MASK) + epoch) & _MASK)
    return _hash32((_hash32(index.long() & _MASK) + salt) & _MASK)


@dataclass
class _State:
    keys: Tensor | None = None
    calls: int = 0


_STATE = _State()


@contextmanager
def indexed(keys: Tensor) -> Iterator[None]:
    """Make :func:`rand_like` draw per-sample numbers keyed by ``keys`` (from :func:`row_keys`)."""
    previous = (_STATE.keys, _STATE.calls)
    _STATE.keys, _STATE.calls = keys, 0
    try:
        yield
    finally:
        _STATE.keys, _STATE.calls = previous


def rand_like(x: Tensor) -> Tensor:
    """Uniform numbers on [0, 1) shaped like ``x`` (its dtype and device).

    Inside :func:`indexed` and for a batch with one row per key, row ``b`` is a function of
    ``keys[b]``, the element's position in the row and how many draws this step made before;
    otherwise ``torch.rand_like(x)``. Float64 gets 32 random bits, other dtypes 24.
    """
    keys = _STATE.keys
    if keys is None or x.dim() == 0 or x.shape[0] != keys.shape[0]:
        return torch.rand_like(x)
    per_row = x[0].numel()
    stream = _STATE.calls
    _STATE.calls = stream + 1
    position = torch.arange(per_row, device=x.device) + stream * per_row
    bits = _hash32(keys.to(x.device).view(-1, 1) ^ _hash32(position & _MASK).view(1, -1))
    bits = _hash32((bits + keys.to(x.device).view(-1, 1)) & _MASK)
    if x.dtype == torch.float64:
        u = bits.to(torch.float64) * 2.0**-32
    else:
        u = ((bits >> 8).to(torch.float32) * 2.0**-24).to(x.dtype)
    return u.reshape(x.shape)


def randn_like(x: Tensor) -> Tensor:
    """Standard normal numbers shaped like ``x``: per sample inside :func:`indexed` (Box–Muller
    from two :func:`rand_like` draws, so the same function of the sample), else
    ``torch.randn_like(x)``."""
    keys = _STATE.keys
    if keys is None or x.dim() == 0 or x.shape[0] != keys.shape[0]:
        return torch.randn_like(x)
    u1, u2 = rand_like(x), rand_like(x)
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # 1 − u1 ∈ (0, 1]: finite
    return radius * torch.cos(2 * math.pi * u2)


def dequantise(x: Tensor, levels: int) -> Tensor:
    """Uniform dequantisation onto [0, 1): ``(x + u) / levels`` for data in {0, …, levels − 1},
    with ``u`` from :func:`rand_like` (per sample inside :func:`indexed`)."""
    return (x + rand_like(x)) / levels

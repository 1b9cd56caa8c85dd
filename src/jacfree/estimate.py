r"""Means over examples with their standard errors, and the one loop that computes per-example
values over a dataset.

Every dataset-level number jacfree reports — the test NLL, bits per dimension, the exact
score-matching loss, an importance-sampling ``log Z`` — is an :class:`Estimate`: a mean over
``n`` examples with its standard error. For i.i.d. per-example values ``v_1..v_n``,

.. math::  \bar v = \frac1n \sum_i v_i, \qquad \mathrm{se}(\bar v) = \frac{s}{\sqrt n},

with ``s`` the sample standard deviation (``n − 1`` in its denominator).

:func:`per_example` is the evaluation loop behind them: batches of the data through a function
in eval mode, without a parameter graph, with any randomness (dequantisation noise, random
projections) seeded inside a forked RNG state so that repeated evaluations agree and the
caller's random stream is untouched.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ._checks import all_finite, check_positive_int

__all__ = ["Estimate", "per_example"]


@dataclass(frozen=True)
class Estimate:
    """A mean over ``n`` examples with its standard error (std / √n)."""

    mean: float
    stderr: float
    n: int

    @classmethod
    def of(cls, values: Tensor) -> Estimate:
        """The mean of per-example ``values`` (1-D) and its standard error (NaN for one value)."""
        values = values.detach().double().flatten()
        n = values.numel()
        stderr = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
        return cls(float(values.mean()), stderr, n)

    @property
    def value(self) -> float:
        """The mean (the name a single estimated quantity, e.g. ``log Z``, reads by)."""
        return self.mean

    def bits_per_dim(self, dim: int) -> tuple[float, float]:
        """For an NLL in nats: (bits/dim, its standard error), −log p(x) / (D ln 2)."""
        scale = 1.0 / (dim * math.log(2))
        return self.mean * scale, self.stderr * scale

    def __str__(self) -> str:
        return f"{self.mean:.4f} ± {self.stderr:.4f} (n={self.n})"


def _modules(f: object) -> list[nn.Module]:
    if isinstance(f, nn.Module):
        return [f]
    owner = getattr(f, "__self__", None)
    return [owner] if isinstance(owner, nn.Module) else []


def _device(f: object, data: Tensor) -> torch.device:
    for m in _modules(f):
        p = next(iter(m.parameters()), None)
        if p is not None:
            return p.device
    return data.device


def per_example(
    fn: Callable[..., Tensor],
    data: Tensor,
    *,
    cond: Tensor | None = None,
    batch_size: int = 100,
    max_n: int | None = None,
    seed: int | None = 0,
    model: object = None,
) -> Tensor:
    """``fn(batch) -> (b,)`` for every row of ``data`` (``fn(batch, cond_batch)`` when per-row
    ``cond`` is given), as one float64 CPU tensor.

    Runs in eval mode (for ``model``, or ``fn`` itself if it is a module or a bound method of
    one; the modes are restored afterwards) under ``no_grad``, on that module's device; with
    ``seed`` not ``None`` the global RNG is seeded inside a forked RNG state. ``max_n``
    evaluates the first ``max_n`` rows only. The data is checked once, here: a non-empty tensor
    with samples first and finite values.
    """
    if not isinstance(data, Tensor) or data.dim() < 2 or len(data) == 0:
        raise ValueError(
            f"data must be a non-empty tensor with samples first, got {type(data).__name__} "
            f"{tuple(getattr(data, 'shape', ()))}."
        )
    check_positive_int(batch_size, "batch_size")
    if data.is_floating_point() and not all_finite(data):
        raise ValueError("data contains NaN/Inf values; clean or impute it before evaluating.")
    if cond is not None and len(cond) != len(data):
        raise ValueError(f"cond must hold one row per data row ({len(data)}), got {len(cond)}.")
    if max_n is not None:
        data = data[:max_n]
        cond = cond[:max_n] if cond is not None else None
    owner = model if model is not None else fn
    device = _device(owner, data)
    mods = _modules(owner)
    modes = [m.training for m in mods]
    for m in mods:
        m.eval()
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked, enabled=seed is not None), torch.no_grad():
            if seed is not None:
                torch.manual_seed(seed)
            if cond is None:
                parts = [fn(b.to(device)) for b in data.split(batch_size)]
            else:
                pairs = zip(data.split(batch_size), cond.split(batch_size), strict=True)
                parts = [fn(b.to(device), c.to(device)) for b, c in pairs]
            parts = [p.detach().double().cpu() for p in parts]
    finally:
        for m, mode in zip(mods, modes, strict=True):
            m.train(mode)
    return torch.cat(parts)

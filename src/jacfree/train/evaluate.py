"""Exact evaluation: negative log-likelihood with its standard error, and bits per dimension."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class NLL:
    """Mean negative log-likelihood in nats per example, with its standard error."""

    mean: float
    stderr: float
    n: int

    def bits_per_dim(self, dim: int) -> tuple[float, float]:
        """(bits/dim, its standard error): −log p(x) / (D ln 2)."""
        scale = 1.0 / (dim * math.log(2))
        return self.mean * scale, self.stderr * scale


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """Bits per dimension of a per-example NLL in nats."""
    return nll_nats / (dim * math.log(2))


@torch.no_grad()
def per_example_nll(
    model: nn.Module,
    data: Tensor | tuple[Tensor, Tensor],
    *,
    batch_size: int = 1000,
    seed: int = 0,
    log_prob: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """−log p(x) for every row of ``data`` (float64, on the CPU), in eval mode.

    Stochastic layers (uniform dequantisation) draw their noise from a generator seeded with
    ``seed`` inside a forked RNG, so repeated evaluations agree and the caller's random stream
    is untouched. ``data`` may be an ``(x, context)`` pair: then −log p(x | context).
    """
    log_prob = log_prob or model.log_prob
    if isinstance(data, tuple):
        x, context = data
        batches = zip(x.split(batch_size), context.split(batch_size), strict=True)
    else:
        batches = ((batch, None) for batch in data.split(batch_size))
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            parts = [
                -_log_prob(log_prob, batch.to(device), c).double().cpu() for batch, c in batches
            ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def _log_prob(log_prob: Callable[..., Tensor], x: Tensor, context: Tensor | None) -> Tensor:
    return log_prob(x) if context is None else log_prob(x, context=context.to(x.device))


def evaluate_nll(
    model: nn.Module,
    data: Tensor | tuple[Tensor, Tensor],
    *,
    batch_size: int = 1000,
    seed: int = 0,
) -> NLL:
    """Mean NLL over ``data`` (or ``(x, context)`` pairs) and its standard error (std / √n)."""
    values = per_example_nll(model, data, batch_size=batch_size, seed=seed)
    n = values.numel()
    stderr = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return NLL(float(values.mean()), stderr, n)

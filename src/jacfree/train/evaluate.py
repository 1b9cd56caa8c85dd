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
    data: Tensor,
    *,
    batch_size: int = 1000,
    seed: int = 0,
    log_prob: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """−log p(x) for every row of ``data`` (float64, on the CPU), in eval mode.

    Stochastic layers (uniform dequantisation) draw their noise from a generator seeded with
    ``seed`` inside a forked RNG, so repeated evaluations agree and the caller's random stream
    is untouched.
    """
    log_prob = log_prob or model.log_prob
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    forked = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed)
            parts = [-log_prob(batch.to(device)).double().cpu() for batch in data.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def evaluate_nll(model: nn.Module, data: Tensor, *, batch_size: int = 1000, seed: int = 0) -> NLL:
    """Mean NLL over ``data`` and its standard error (std / √n)."""
    values = per_example_nll(model, data, batch_size=batch_size, seed=seed)
    n = values.numel()
    stderr = float(values.std() / math.sqrt(n)) if n > 1 else float("nan")
    return NLL(float(values.mean()), stderr, n)

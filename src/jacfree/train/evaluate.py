"""Exact evaluation: negative log-likelihood with its standard error, and bits per dimension."""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

from ..estimate import Estimate, per_example

# Mean negative log-likelihood in nats per example, with its standard error: an Estimate.
NLL = Estimate


def bits_per_dim(nll_nats: float, dim: int) -> float:
    """Bits per dimension of a per-example NLL in nats."""
    return nll_nats / (dim * math.log(2))


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
    is untouched. ``data`` may be an ``(x, context)`` pair: then −log p(x | context). The loop
    is :func:`jacfree.estimate.per_example`.
    """
    log_prob = log_prob or model.log_prob
    x, context = data if isinstance(data, tuple) else (data, None)

    def nll(batch: Tensor, c: Tensor | None = None) -> Tensor:
        return -(log_prob(batch) if c is None else log_prob(batch, context=c))

    return per_example(nll, x, cond=context, batch_size=batch_size, seed=seed, model=model)


def evaluate_nll(
    model: nn.Module,
    data: Tensor | tuple[Tensor, Tensor],
    *,
    batch_size: int = 1000,
    seed: int = 0,
) -> NLL:
    """Mean NLL over ``data`` (or ``(x, context)`` pairs) and its standard error (std / √n),
    on the scale the data is given in (:func:`jacfree.evaluate`: on the data's original scale,
    with bits/dim and a model kind's own metrics)."""
    return Estimate.of(per_example_nll(model, data, batch_size=batch_size, seed=seed))

r"""Evaluation of score-matching models over a dataset: mean ± standard error, in batches.

The *exact SM loss* (Hyvärinen 2005) of a model on data ``x_1..x_n`` is the mean of

.. math::  J(x) = \operatorname{tr}\nabla_x^2\log\tilde p(x) + \tfrac12\|\nabla_x\log\tilde p(x)\|^2

(``tr ∇ₓs + ½‖s‖²`` for a score network). It equals the Fisher divergence to the data up to a
constant that does not depend on the model, so lower is better and values of different models on
the same data are comparable — the number the FD-SM paper reports next to the test NLL (Pang et
al., NeurIPS 2020, Table 1 caption; computed there by ``d`` backward passes). Here it reuses
:func:`~jacfree.scorematching.losses.exact_sm` / :func:`~.losses.exact_sm_scorenet` (chunked
``torch.func`` derivatives), one batch at a time, without a parameter graph.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from ..estimate import Estimate, per_example
from .convention import Energy, ScoreNet
from .losses import exact_sm, exact_sm_scorenet

__all__ = ["Estimate", "evaluate_per_sample", "exact_sm_loss", "exact_sm_loss_scorenet"]


def evaluate_per_sample(fn: Callable[..., Tensor], data: Tensor, **options: Any) -> Estimate:
    """Mean ± standard error of per-sample values ``fn(batch) -> (b,)`` over the rows of
    ``data``: :func:`jacfree.estimate.per_example` (options ``cond``, ``batch_size`` (default
    100), ``max_n``, ``seed``, ``model``: eval mode, no parameter graph, seeded in a forked RNG
    state) summarised by :meth:`Estimate.of`."""
    return Estimate.of(per_example(fn, data, **options))


def exact_sm_loss(
    energy: Energy,
    data: Tensor,
    *,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_n: int | None = None,
    transform: Callable[[Tensor], Tensor] | None = None,
    seed: int | None = 0,
) -> Estimate:
    r"""Exact SM loss ``mean_x J(x)`` of an energy ``E`` (``log p̃ = −E``) over ``data``.

    Args:
        energy: ``E(x) -> (B,)`` (a module, a bound method such as ``nice.energy``, or any
            callable).
        data: rows to evaluate, samples first.
        batch_size: rows per call of :func:`~.losses.exact_sm`.
        chunk_size: coordinates per vectorised Hessian-vector product (memory vs speed).
        max_n: evaluate only the first ``max_n`` rows (for costly ``d``).
        transform: maps a batch to the space the energy models first (e.g. ``nice.preprocess``
            for dequantisation + logit); its noise is seeded by ``seed``.
        seed: seed of any randomness in ``transform`` (``None``: the global stream).
    """

    def fn(x: Tensor) -> Tensor:
        y = transform(x) if transform is not None else x
        return exact_sm(energy, y, chunk_size=chunk_size, reduction="none")

    return evaluate_per_sample(
        fn, data, batch_size=batch_size, max_n=max_n, seed=seed, model=energy
    )


def exact_sm_loss_scorenet(
    score_net: ScoreNet,
    data: Tensor,
    *,
    cond: Tensor | None = None,
    batch_size: int = 100,
    chunk_size: int | None = None,
    max_n: int | None = None,
    seed: int | None = 0,
) -> Estimate:
    r"""Exact SM loss ``mean_x [tr ∇ₓs(x) + ½‖s(x)‖²]`` of a score network over ``data``.

    ``cond`` (one row per row of ``data``) is passed as ``score_net(x, cond)``. For the annealed,
    noise-conditional form (perturbed data, σ² weights) see
    :func:`jacfree.scorematching.ncsn.annealed_loss` with ``objective="sm"``.
    """
    if cond is not None and len(cond) != len(data):
        raise ValueError(f"cond must hold one row per data row ({len(data)}), got {len(cond)}.")

    def fn(x: Tensor, c: Tensor | None = None) -> Tensor:
        return exact_sm_scorenet(score_net, x, chunk_size=chunk_size, cond=c, reduction="none")

    return evaluate_per_sample(
        fn, data, cond=cond, batch_size=batch_size, max_n=max_n, seed=seed, model=score_net
    )

r"""Row statistics of the relative gradient in multiplicative coordinates.

A relative-gradient step moves a square affine layer multiplicatively,
Ŵ ← (I − η Ê) Ŵ for the augmented matrix Ŵ = [[W, b], [0, 1]]. The D×(D+1) matrix

.. math::  Ê = [\,Δᵀ Y + c\,I,\;\; Δᵀ 1\,] ,\qquad [R_W,\ R_b] = Ê\,Ŵ ,

is the gradient in those coordinates (Gresele et al., NeurIPS 2020: Δ = ∂ℓ/∂Y, Y the layer's
output, c the coefficient of log|det W| in the loss, −1 for the batch-mean NLL). Row i of Ê is
how strongly output unit i is pulled; its size does not depend on how large W is, while the same
row of R_W = (ΔᵀY + cI) W does. :class:`jacfree.train.RelativeAdam` normalises each row of the
relative gradient by the running root-mean-square of the row of Ê.

:func:`tap_row_stats` is an identity on ``(y, logdet_marker)`` whose backward writes

.. math::  q_i = \frac{1}{D} \sum_{j \le D} Ê_{ij}^2 \quad\text{and}\quad e_b = Δᵀ1

into a ``(2, D)`` buffer, at cost O(B·D·min(B, D)) (through Ê when B > D, through the B×B Gram
matrix YYᵀ otherwise), never more than the O(B·D²) of the relative step itself. Under
``torch.distributed`` it stores Ê itself (O(B·D²)), which the processes average exactly as they
average gradients. No value is read on the host.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def row_stats(delta: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """``stack([q, e_b])``, shape ``(2, D)``: q_i = mean_j (ΔᵀY + cI)_ij² and e_b = Δᵀ1."""
    b, d = y.shape
    if b > d:  # form Ê's D×D block: O(B·D²) ≤ O(B²·D)
        e = delta.t() @ y
        e.diagonal().add_(c)
        total = e.square().sum(1)
    else:  # ‖Δ_iᵀ Y + c e_i‖² = Δ_iᵀ (YYᵀ) Δ_i + 2c Δ_iᵀ Y_i + c²: O(B²·D)
        k_delta = (y @ y.t()) @ delta
        total = (delta * k_delta).sum(0) + 2 * c * (delta * y).sum(0) + c * c
    return torch.stack([total / d, delta.sum(0)])


def multiplicative_grad(delta: Tensor, y: Tensor, c: Tensor) -> Tensor:
    """Ê = [ΔᵀY + cI, Δᵀ1], shape ``(D, D+1)``: O(B·D²). Linear in the loss, so the Ê of
    data-parallel processes average to the Ê of the whole batch, as their gradients do."""
    e = torch.cat([delta.t() @ y, delta.sum(0)[:, None]], 1)
    e.diagonal().add_(c)
    return e


def stats_of(e: Tensor) -> Tensor:
    """:func:`row_stats` from a formed Ê ``(D, D+1)``."""
    d = e.shape[0]
    return torch.stack([e[:, :d].square().mean(1), e[:, d]])


class _TapRowStats(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y: Tensor, marker: Tensor, out: Tensor):
        ctx.save_for_backward(y)
        ctx.out = out
        return y.view_as(y), marker.view_as(marker)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor, grad_marker: Tensor):
        (y,) = ctx.saved_tensors
        c = grad_marker.sum()  # coefficient of log|det W| in the loss (a device tensor)
        out = ctx.out
        with torch.no_grad():
            if out.shape[1] == y.shape[1] + 1:  # the whole Ê, to be averaged over processes
                out.copy_(multiplicative_grad(grad_y, y, c))
            else:
                out.copy_(row_stats(grad_y, y, c))
        return grad_y, grad_marker, None


def tap_row_stats(y: Tensor, marker: Tensor, out: Tensor) -> tuple[Tensor, Tensor]:
    """Identity on a relative layer's ``(y, logdet_marker)``; the backward fills ``out``.

    ``out`` of shape ``(2, D)`` receives ``[q, e_b]`` (:func:`row_stats`); of shape ``(D, D+1)``
    it receives Ê itself (:func:`multiplicative_grad`), for a data-parallel run whose processes
    must average Ê before taking its row statistics.
    """
    return _TapRowStats.apply(y, marker, out)

"""The relative-gradient rule for a square affine layer (Gresele et al., NeurIPS 2020).

For a layer ``y = x Wᵀ + b`` inside a loss ℓ = ℓ_data(y) + c·log|det W| (the batch-mean NLL has
c = −1), the Euclidean gradient ∂ℓ/∂W = Δᵀ X + c·W⁻ᵀ needs W⁻ᵀ: O(D³). Right-multiplying it by
WᵀW — a positive-definite preconditioner, so the stationary points are unchanged and the step is
a descent direction — gives the *relative gradient*

.. math::  R_W = Δᵀ (Y W) + c\\,W ,\\qquad R_b = Δᵀ (1 + Y b) + c\\,b ,

with Δ = ∂ℓ_data/∂Y and Y the layer's full output (bias included). The bias rule is the relative
gradient of the augmented matrix Ŵ = [[W, b], [0, 1]] (paper, Appendix F); its ``c·b`` term is
the one the reference code omits, which moves the optimum.

No inverse, solve or determinant is evaluated: the cost is three B×D×D products per layer
(forward, input gradient, and ``Δᵀ(YW)``), i.e. O(B·D²) instead of O(D³).

The coefficient c is read from the autograd graph: the layer also returns a zero-valued
"log-det" tensor of shape ``(B,)``; whatever gradient the loss sends to it, summed over the batch,
is c. So the rule stays exact for any loss that uses the log-det linearly (scaled, summed, or
weighted), not only for the batch-mean NLL.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class RelativeAffineFunction(torch.autograd.Function):
    """``(x, W, b) -> (y, logdet_marker)``; backward leaves the relative gradient in W and b."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, paper_bias_rule: bool):
        # classic ctx-style forward: cheaper per call than setup_context (no signature binding)
        y = torch.addmm(bias, x, weight.t())
        ctx.save_for_backward(weight, bias, y)
        ctx.paper_bias_rule = paper_bias_rule
        return y, y.new_zeros(y.shape[0])

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_y: Tensor, grad_logdet: Tensor):
        weight, bias, y = ctx.saved_tensors
        # coefficient of log|det W| in the loss (−1 for the batch-mean NLL): a 0-d tensor that
        # stays on the device (no host read in the step)
        c = grad_logdet.sum()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ weight
        if ctx.needs_input_grad[1]:
            # Δᵀ(YW) + c·W: two B·D² products, accumulated into c·W by one addmm
            grad_w = torch.addmm(weight * c, grad_y.t(), y @ weight)
        if ctx.needs_input_grad[2]:
            # Δᵀ(1 + Yb) + c·b  =  Σ_n Δ_n + Δᵀ(Yb) + c·b
            base = grad_y.sum(0)
            if not ctx.paper_bias_rule:
                base = base + bias * c
            grad_b = torch.addmv(base, grad_y.t(), y @ bias)
        return grad_x, grad_w, grad_b, None


def relative_affine(
    x: Tensor, weight: Tensor, bias: Tensor, paper_bias_rule: bool = False
) -> tuple[Tensor, Tensor]:
    """Affine map ``y = x Wᵀ + b`` whose backward is the relative gradient (see module docs).

    Returns ``(y, logdet_marker)``; the marker is zero-valued and carries the log|det W| coefficient
    of the loss into the backward pass. Add it to the flow's log-det.
    """
    return RelativeAffineFunction.apply(x, weight, bias, paper_bias_rule)

r"""The self-normalizing (SNF) rule (Keller, Peters, Jaini, Hoogeboom, Forré, Welling; ICML 2021).

An SNF linear layer ``z = W h + b`` keeps a learned approximate inverse ``R ≈ W⁻¹`` and is
trained on

.. math::

    \mathcal L(x) = ½ \log p^f(x) + ½ \log p^g(x) - λ \sum_k \| R_k W_k h_k - h_k \|^2 ,

with ``h_k`` the layer's input, detached. The O(D³) term of the log-det gradient,
∂ log|det W|/∂W = W⁻ᵀ, is replaced by Rᵀ (and R⁻ᵀ by Wᵀ for the inverse model), so a training
step needs no inverse and no determinant. In the loss form handed to autograd (the batch-mean
NLL, minimised), with ``g_n = ∂loss/∂z_n`` and ``e_n = Wᵀ g_n`` (the exact input gradient):

.. math::

    \nabla_W = ½ (\textstyle\sum_n g_n h_nᵀ - Rᵀ) + λ ∂E/∂W ,\qquad
    \nabla_R = ½ (-\textstyle\sum_n e_n (W h_n)ᵀ + Wᵀ) + λ ∂E/∂R ,\qquad
    \nabla_b = \textstyle\sum_n g_n ,

E = (1/B) Σ_n ‖h_n − R W h_n‖² (no bias inside). With R = W⁻¹ exactly, ∇_W is half the exact
NLL gradient and ∇_R half the exact gradient of −log p^g.

**Convolutions** (§3.2 and Appendix A.2). For ``z = w ⋆ h + b`` (odd K, stride 1, same zero
padding) with learned inverse ``h ≈ r ⋆ (z − b)``, T(k) the D×D matrix of a convolution
(:mod:`jacfree.flows.toeplitz`), the kernel-space form of T(w)⁻ᵀ is replaced by ``flip(r) ⊙ m``,
the kernel-space form of T(r)ᵀ (z' = w ⋆ h, m = flip(m) the tap multiplicities):

.. math::

    ∇_w &= ½\,(\mathrm{conv\_weight\_grad}(h, g) + c\,\mathrm{flip}(r) ⊙ m) + λ ∂E/∂w ,\\
    ∇_r &= ½\,(\mathrm{conv\_weight\_grad}(z', -e) - c\,\mathrm{flip}(w) ⊙ m) + λ ∂E/∂r ,\\
    ∇_b &= \textstyle\sum_{n,y,x} g ,\qquad E = \tfrac1B \sum_n ‖h_n - r ⋆ (w ⋆ h_n)‖² .

Everything is a convolution or a conv weight-gradient (``torch.nn.grad.conv2d_weight``); the
products with T(k)ᵀ are forward convolutions with flip(k), on CPU several times faster than the
input-gradient kernel for few channels. A dense layer is the case m = 1, flip = transpose; a 1×1
convolution runs the dense rule on its (B·H·W, C) pixel rows (m = H·W).

This module is the one home of the rule: the two fused autograd functions
(:class:`SelfNormAffineFunction`: six B×D×D products per layer in all;
:class:`SelfNormConv2dFunction`: six convolutions), the initial learned inverses
(:func:`dense_initial_inverse`, :func:`conv_initial_inverse`), and the reconstruction weight λ
(:func:`check_recon_weight`, :func:`register_recon_weight`) with the statistics the metrics log
(:func:`reconstruction_stats`). The layers (:class:`~jacfree.flows.linear.InvertibleLinear` and
its subclasses) call them.

**Training-term convention.** A layer's ``training_forward`` returns ``(z, term)`` with the
per-sample ``term_n = −λ‖h_n − R W h_n‖²`` (zero-valued log-det, penalty included), so that
``Flow.loss = −mean(log N(z) + Σ terms)`` is the SNF objective: the batch-mean NLL without the
SNF layers' log|det W| plus λ·E. In the backward pass, the coefficient of log|det W| in the loss is
``c = Σ_n ∂loss/∂term_n`` (−1 for the batch-mean NLL) and the weight of sample n's reconstruction
error is ``−λ ∂loss/∂term_n``, so the rule stays right for any loss that uses the terms linearly.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .toeplitz import conv_matrix, conv_matrix_adjoint, flip_kernel, multiplicity

__all__ = [
    "SelfNormAffineFunction",
    "SelfNormConv2dFunction",
    "check_recon_weight",
    "conv_initial_inverse",
    "dense_initial_inverse",
    "reconstruction_stats",
    "register_recon_weight",
    "selfnorm_affine",
    "selfnorm_conv2d",
]


# -- λ and the reconstruction statistics -------------------------------------------------------


def check_recon_weight(value: float) -> float:
    """λ, the weight of the reconstruction penalty, as a float (≥ 0), or a clear error."""
    value = float(value)
    if not value >= 0:
        raise ValueError(f"recon_weight (λ) must be >= 0, got {value}.")
    return value


def register_recon_weight(layer: nn.Module, value: float) -> None:
    """Give ``layer`` the persistent 0-d buffer ``recon_weight`` (λ), in its weight's dtype and
    device, so that λ is checkpointed and read on the device; set it to ``value``."""
    if "recon_weight" not in layer._buffers:
        ref = next(layer.parameters())
        layer.register_buffer("recon_weight", torch.tensor(0.0, dtype=ref.dtype, device=ref.device))
    layer.recon_weight.fill_(check_recon_weight(value))


def reconstruction_stats(recon: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """``(mean, relative)``: the batch mean of the per-sample errors ``recon`` = ‖h − R W h‖², and
    that mean divided by the batch-mean ‖h‖² (scale-free); detached, on the device."""
    mean = recon.detach().mean()
    return mean, mean / h.detach().square().flatten(1).sum(1).mean()


# -- the initial learned inverse ------------------------------------------------------------------


def dense_initial_inverse(weight: Tensor) -> Tensor:
    """R = W⁻¹ (float64 inverse, in W's dtype, row-major like W).

    ``linalg.inv`` returns a column-major matrix, and an R in that layout makes every SNF step pay
    transposed copies of D×D gradients (and a slower Adam), hence the contiguous copy.
    """
    with torch.no_grad():
        inv = torch.linalg.inv(weight.detach().double()).to(weight.dtype)
    return inv.contiguous()


def conv_initial_inverse(weight: Tensor, spatial_size: tuple[int, int]) -> Tensor:
    """The K×K kernel r whose same-padded convolution is closest to T(w)⁻¹.

    For a centre-tap-only w (T(w) = W_C ⊗ I, a 1×1 convolution) this is the exact inverse, centre
    tap W_C⁻¹, with no O(D³) work. Otherwise it is the least-squares projection of T(w)⁻¹ onto the
    K×K convolutions on images of ``spatial_size``, ``r = adjoint(T(w)⁻¹) / m`` (the A_k are
    orthogonal with ‖A_k‖² = m_k): one D×D inverse. (The reference code starts from
    r = flip(w), the kernel of the *adjoint* T(w)ᵀ, which is T(w)⁻¹ only for an orthogonal T(w).)
    """
    w = weight.detach()
    p = (w.shape[-1] - 1) // 2
    with torch.no_grad():
        off_centre = w.clone()
        off_centre[:, :, p, p] = 0
        if not bool(off_centre.any()):
            r = torch.zeros_like(w)
            r[:, :, p, p] = torch.linalg.inv(w[:, :, p, p].double()).to(w.dtype)
            return r
        target = torch.linalg.inv(conv_matrix(w.double(), spatial_size))
        m = multiplicity(w.shape[-1], spatial_size, dtype=torch.float64, device=w.device)
        proj = conv_matrix_adjoint(target, tuple(w.shape), spatial_size)
        return torch.where(m > 0, proj / m.clamp(min=1), 0.0).to(w.dtype)


# -- the fused rules ------------------------------------------------------------------------------


def _finish_forward(
    ctx: Any, z: Tensor, tensors: tuple[Tensor, ...], rho: Tensor, lam: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Save ``(*tensors, rho, lam)``; return ``(z, term, recon)`` with recon = ‖ρ‖² per sample."""
    recon = rho.square().sum(tuple(range(1, rho.dim())))
    ctx.save_for_backward(*tensors, rho, lam)
    ctx.mark_non_differentiable(recon)
    return z, recon * -lam, recon


def _log_det_and_penalty_weights(g_term: Tensor, rho: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``(½ c, 2aρ)``: c = Σ_n ∂loss/∂term_n, the coefficient of log|det W| in the loss (−1 for the
    mean NLL), and a_n = −λ ∂loss/∂term_n, the weight of sample n's ‖ρ_n‖², applied to its residual
    and doubled. Both stay on the device."""
    return 0.5 * g_term.sum(), rho * (g_term * (-2.0 * lam)).view(-1, *[1] * (rho.dim() - 1))


class SelfNormAffineFunction(torch.autograd.Function):
    """``(h, W, R, b, λ) -> (z, term, recon)`` for a dense SNF layer ``z = h Wᵀ + b`` (λ a 0-d
    tensor, not differentiated).

    ``term`` (B,) is −λ‖h_n − R W h_n‖² (the training term, see the module docs) and ``recon``
    (B,) the non-differentiable ‖h_n − R W h_n‖². The backward pass leaves the SNF gradients in
    W, R and b and the exact input gradient Wᵀg in h; the reconstruction gradient never reaches h.
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, inv: Tensor, bias: Tensor, lam: Tensor):
        u = h @ weight.t()  # W h, rows
        rho = torch.addmm(h, u, inv.t(), beta=-1)  # R W h − h
        return _finish_forward(ctx, u + bias, (h, weight, inv, u), rho, lam)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor, g_term: Tensor, _g_recon: Tensor | None):
        h, weight, inv, u, rho, lam = ctx.saved_tensors
        half_c, wrho = _log_det_and_penalty_weights(g_term, rho, lam)
        e = g @ weight  # exact input gradient Wᵀg (rows), also used by the R rule
        grad_h = e if ctx.needs_input_grad[0] else None
        grad_w = grad_r = grad_b = None
        if ctx.needs_input_grad[1]:
            # ½(Σ g hᵀ + c Rᵀ) + Σ 2a (Rᵀρ) hᵀ  =  (½ g + 2aρR)ᵀ h + ½ c Rᵀ
            a = torch.addmm(g, wrho, inv, beta=0.5)
            grad_w = torch.addmm(inv.t() * half_c, a.t(), h)
        if ctx.needs_input_grad[2]:
            # ½(−Σ e (Wh)ᵀ − c Wᵀ) + Σ 2a ρ (Wh)ᵀ  =  (2aρ − ½ e)ᵀ u − ½ c Wᵀ
            grad_r = torch.addmm(weight.t() * -half_c, wrho.sub_(e, alpha=0.5).t(), u)
        if ctx.needs_input_grad[3]:
            grad_b = g.sum(0)
        return grad_h, grad_w, grad_r, grad_b, None


class SelfNormConv2dFunction(torch.autograd.Function):
    """``(h, w, r, b, λ) -> (z, term, recon)`` for an SNF convolution ``z = w ⋆ h + b``.

    ``term`` (B,) is −λ‖h_n − r ⋆ (w ⋆ h_n)‖² (the training term) and ``recon`` (B,) the
    non-differentiable ‖h_n − r ⋆ (w ⋆ h_n)‖². The backward pass leaves the SNF gradients of the
    module docs in w, r and b and the exact input gradient in h; the penalty never reaches h.
    Two convolutions forward (w ⋆ h, r ⋆ z'), four backward (e = flip(w) ⋆ g,
    T(r)ᵀρ = flip(r) ⋆ ρ, two weight-gradients).
    """

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, inv: Tensor, bias: Tensor, lam: Tensor):
        p = (weight.shape[-1] - 1) // 2
        u = F.conv2d(h, weight, padding=p)  # z' = w ⋆ h
        rho = F.conv2d(u, inv, padding=p).sub_(h)  # r ⋆ (w ⋆ h) − h
        return _finish_forward(ctx, u + bias.view(1, -1, 1, 1), (h, weight, inv, u), rho, lam)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor, g_term: Tensor, _g_recon: Tensor | None):
        h, weight, inv, u, rho, lam = ctx.saved_tensors
        p = (weight.shape[-1] - 1) // 2
        needs_h, needs_w, needs_r, needs_b = ctx.needs_input_grad[:4]
        half_c, wrho = _log_det_and_penalty_weights(g_term, rho, lam)
        m = multiplicity(weight.shape[-1], h.shape[-2:], dtype=weight.dtype, device=weight.device)
        e = None
        if needs_h or needs_r:  # exact input gradient T(w)ᵀ g = flip(w) ⋆ g (same padding)
            e = F.conv2d(g, flip_kernel(weight), padding=p)
        grad_w = grad_r = grad_b = None
        if needs_w:
            # ½ conv_weight_grad(h, g) + conv_weight_grad(h, T(r)ᵀ 2aρ) + ½ c flip(r) ⊙ m
            out = F.conv2d(wrho, flip_kernel(inv), padding=p).add_(g, alpha=0.5)  # + T(r)ᵀ 2aρ
            grad_w = torch.nn.grad.conv2d_weight(h, weight.shape, out, padding=p)
            grad_w = grad_w + flip_kernel(inv) * m * half_c
        if needs_r:
            # conv_weight_grad(z', 2aρ − ½ e) − ½ c flip(w) ⊙ m
            out = wrho.sub_(e, alpha=0.5)
            grad_r = torch.nn.grad.conv2d_weight(u, inv.shape, out, padding=p)
            grad_r = grad_r - flip_kernel(weight) * m * half_c
        if needs_b:
            grad_b = g.sum((0, 2, 3))
        return (e if needs_h else None), grad_w, grad_r, grad_b, None


def selfnorm_affine(
    h: Tensor, weight: Tensor, inverse_weight: Tensor, bias: Tensor, recon_weight: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense SNF layer: ``(z, term, recon)``, see :class:`SelfNormAffineFunction`.

    ``recon_weight`` (λ) may be a 0-d tensor (the layer's buffer: read on the device, so an
    adaptive λ never forces a host read) or a number.
    """
    lam = torch.as_tensor(recon_weight, dtype=h.dtype, device=h.device)
    return SelfNormAffineFunction.apply(h, weight, inverse_weight, bias, lam)


def selfnorm_conv2d(
    h: Tensor, weight: Tensor, inverse_weight: Tensor, bias: Tensor, recon_weight: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """SNF convolution: ``(z, term, recon)``, see :class:`SelfNormConv2dFunction`.

    ``recon_weight`` (λ): a 0-d tensor (read on the device) or a number.
    """
    lam = torch.as_tensor(recon_weight, dtype=h.dtype, device=h.device)
    return SelfNormConv2dFunction.apply(h, weight, inverse_weight, bias, lam)

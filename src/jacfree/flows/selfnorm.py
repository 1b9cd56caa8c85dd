r"""Self-normalizing layers (Keller, Peters, Jaini, Hoogeboom, Forré, Welling; ICML 2021).

A self-normalizing (SNF) linear layer ``z = W h + b`` keeps a learned approximate inverse
``R ≈ W⁻¹`` and is trained on

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

This module holds the dense rule (:class:`SelfNormAffineFunction`, one fused backward: six
B×D×D products per layer in all) and :class:`SelfNormalizing`, the mixin every SNF layer (dense
or convolutional) shares: the reconstruction weight λ (a buffer, so it is checkpointed), the
last batch's reconstruction error for the metrics, and the convention for the training term.

**Training-term convention.** ``training_forward`` returns ``(z, term)`` with the per-sample
``term_n = −λ‖h_n − R W h_n‖²`` (zero-valued log-det, penalty included), so that
``Flow.loss = −mean(log N(z) + Σ terms)`` is the SNF objective: the batch-mean NLL without the
SNF layers' log|det W| plus λ·E. In the backward pass, the coefficient of log|det W| in the loss is
``c = Σ_n ∂loss/∂term_n`` (−1 for the batch-mean NLL) and the weight of sample n's reconstruction
error is ``−λ ∂loss/∂term_n``, so the rule stays right for any loss that uses the terms linearly.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class SelfNormalizing:
    """Mixin of layers with a learned approximate inverse (the SNF ``selfnorm`` gradient mode).

    Provides the reconstruction weight λ (``recon_weight``, a persistent buffer created by
    :meth:`_init_selfnorm`), ``last_reconstruction`` (the batch-mean ‖h − R W h‖² of the last
    training forward, detached; ``None`` before one), ``last_relative_reconstruction`` (the same
    divided by the batch-mean ‖h‖²: scale-free) and :meth:`approximate_inverse` (through the
    learned inverse: no solve, no Newton).
    """

    last_reconstruction: Tensor | None = None
    last_relative_reconstruction: Tensor | None = None

    def _record_reconstruction(self, recon: Tensor, h: Tensor) -> None:
        """Store the batch means of the per-sample errors ``recon`` of inputs ``h``."""
        mean = recon.detach().mean()
        self.last_reconstruction = mean
        self.last_relative_reconstruction = mean / h.detach().square().flatten(1).sum(1).mean()

    def _init_selfnorm(self, recon_weight: float) -> None:
        """Register λ as a buffer (call once the parameters exist, e.g. on entering selfnorm)."""
        if "recon_weight" not in self._buffers:  # type: ignore[attr-defined]
            ref = next(self.parameters())  # type: ignore[attr-defined]
            lam = torch.tensor(0.0, dtype=ref.dtype, device=ref.device)
            self.register_buffer("recon_weight", lam)  # type: ignore[attr-defined]
        self.set_recon_weight(recon_weight)

    def set_recon_weight(self, value: float) -> None:
        """Set λ, the weight of the reconstruction penalty (≥ 0).

        A layer not yet in the selfnorm mode keeps the value for when it enters it.
        """
        value = float(value)
        if not value >= 0:
            raise ValueError(f"recon_weight (λ) must be >= 0, got {value}.")
        if "recon_weight" in self._buffers:  # type: ignore[attr-defined]
            self.recon_weight.fill_(value)  # type: ignore[attr-defined]
        else:
            self._pending_recon_weight = value

    def _require_inverse(self) -> Tensor:
        """The learned inverse, or a clear error for a layer that has none."""
        inv = getattr(self, "inverse_weight", None)
        if inv is None:
            raise RuntimeError(
                "this layer has no learned inverse; switch it to the selfnorm mode first "
                "(layer.set_gradient('selfnorm'))."
            )
        return inv

    def approximate_inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


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
        z = u + bias
        rho = torch.addmm(h, u, inv.t(), beta=-1)  # R W h − h
        recon = rho.square().sum(1)
        ctx.save_for_backward(h, weight, inv, u, rho, lam)
        ctx.mark_non_differentiable(recon)
        return z, recon * -lam, recon

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor, g_term: Tensor, _g_recon: Tensor | None):
        h, weight, inv, u, rho, lam = ctx.saved_tensors
        # coefficient of log|det W| in the loss (−1 for the mean NLL), kept on the device
        half_c = 0.5 * g_term.sum()
        # per-sample weight of ‖h_n − R W h_n‖² in the loss, applied to its residual, doubled
        wrho = rho * (g_term * (-2.0 * lam)).unsqueeze(1)
        e = g @ weight  # exact input gradient Wᵀg (rows), also used by the R rule
        grad_h = e if ctx.needs_input_grad[0] else None
        grad_w = grad_r = grad_b = None
        if ctx.needs_input_grad[1]:
            # ½(Σ g hᵀ + c Rᵀ) + Σ 2w (Rᵀρ) hᵀ  =  (½ g + 2w ρR)ᵀ h + ½ c Rᵀ
            a = torch.addmm(g, wrho, inv, beta=0.5)
            grad_w = torch.addmm(inv.t() * half_c, a.t(), h)
        if ctx.needs_input_grad[2]:
            # ½(−Σ e (Wh)ᵀ − c Wᵀ) + Σ 2w ρ (Wh)ᵀ  =  (2w ρ − ½ e)ᵀ u − ½ c Wᵀ
            grad_r = torch.addmm(weight.t() * -half_c, wrho.sub_(e, alpha=0.5).t(), u)
        if ctx.needs_input_grad[3]:
            grad_b = g.sum(0)
        return grad_h, grad_w, grad_r, grad_b, None


def selfnorm_affine(
    h: Tensor, weight: Tensor, inverse_weight: Tensor, bias: Tensor, recon_weight: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """Dense SNF layer: ``(z, term, recon)``, see :class:`SelfNormAffineFunction`.

    ``recon_weight`` (λ) may be a 0-d tensor (the layer's buffer: read on the device, so an
    adaptive λ never forces a host read) or a number.
    """
    lam = torch.as_tensor(recon_weight, dtype=h.dtype, device=h.device)
    return SelfNormAffineFunction.apply(h, weight, inverse_weight, bias, lam)

r"""Convolutional self-normalizing layers and invertible 1×1 convolutions (images (B, C, H, W)).

:class:`SelfNormConv2d` — a C→C convolution ``z = w ⋆ h + b`` (odd K, stride 1, "same" zero
padding) with two gradient modes:

* ``"selfnorm"`` (Keller et al., "Self Normalizing Flows", ICML 2021, §3.2 and Appendix A.2):
  the layer keeps a learned approximate inverse, an ordinary convolution ``h ≈ r ⋆ (z − b)`` with
  its own kernel r (``inverse_weight``). With T(k) the D×D matrix of the convolution
  (:mod:`jacfree.flows.toeplitz`, D = C·H·W), the log-det gradient ∂log|det T(w)|/∂w — the
  kernel-space form of T(w)⁻ᵀ, an O(D³) quantity — is replaced by ``flip(r) ⊙ m``, the
  kernel-space form of T(r)ᵀ. In loss form (g = ∂loss/∂z, e = T(w)ᵀg the exact input gradient,
  z' = w ⋆ h, c the coefficient of log|det T(w)| in the loss, −1 for the batch-mean NLL):

  .. math::

      ∇_w &= ½\,(\mathrm{conv\_weight\_grad}(h, g) + c\,\mathrm{flip}(r) ⊙ m) + λ ∂E/∂w ,\\
      ∇_r &= ½\,(\mathrm{conv\_weight\_grad}(z', -e) - c\,\mathrm{flip}(w) ⊙ m) + λ ∂E/∂r ,\\
      ∇_b &= \textstyle\sum_{n,y,x} g ,\qquad E = \tfrac1B \sum_n ‖h_n - r ⋆ (w ⋆ h_n)‖² ,

  (m = flip(m) for same padding). Everything is a convolution or a conv weight-gradient
  (``torch.nn.grad.conv2d_weight``, i.e. ``aten.convolution_backward``); the products with
  T(k)ᵀ are forward convolutions with flip(k), which on CPU is several times faster than the
  input-gradient kernel for few channels. Six convolutions per step in all, no determinant,
  inverse or solve. The reconstruction term is folded into the same autograd
  function (it reuses w ⋆ h) and follows the training-term convention of
  :mod:`jacfree.flows.selfnorm`: ``training_forward`` returns ``(z, term)`` with
  ``term_n = −λ‖h_n − r ⋆ (w ⋆ h_n)‖²``; c and the per-sample penalty weights are read from the
  gradient the loss sends to ``term``, and the penalty never reaches the input.
* ``"exact"`` — the O(D³) baseline: log|det T(w)| from a float64 ``slogdet`` of the explicitly
  built matrix, differentiated by autograd in training.

In both modes the exact log-det (``forward``, hence ``Flow.log_prob``) and the exact inverse use a
float64 LU factorisation of T(w), cached per parameter state and image size.

:class:`Conv1x1` — Glow's invertible 1×1 convolution (Kingma & Dhariwal 2018): a C×C matrix applied
at every pixel, log|det| = H·W·log|det W_C| (float64, cached), exact inverse; in ``"relative"``
and ``"selfnorm"`` modes it runs the dense rules of :mod:`jacfree.flows.relative` /
:mod:`jacfree.flows.selfnorm` on the (B·H·W, C) view (m = H·W, flip = transpose).

**Image size.** Both layers take H, W from their input, so one layer serves any image size. The
data-independent :meth:`~SelfNormConv2d.logabsdet` depends on (H, W): it uses the size passed as
``spatial_size``, else the size of the last input the layer saw (``last_spatial_size``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from .._checks import check_positive_int
from .core import FlowLayer, GradientModeMixin, ParameterStateCache
from .linear import InvertibleMatrix
from .relative import relative_affine
from .selfnorm import SelfNormalizing, selfnorm_affine
from .toeplitz import conv_matrix, conv_matrix_adjoint, flip_kernel, multiplicity

__all__ = ["Conv1x1", "SelfNormConv2d", "SelfNormConv2dFunction", "selfnorm_conv2d"]


# -- the SNF convolution rule ----------------------------------------------------------------


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
        z = u + bias.view(1, -1, 1, 1)
        rho = F.conv2d(u, inv, padding=p).sub_(h)  # r ⋆ (w ⋆ h) − h
        recon = rho.square().sum((1, 2, 3))
        ctx.save_for_backward(h, weight, inv, u, rho, lam)
        ctx.mark_non_differentiable(recon)
        return z, recon * -lam, recon

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, g: Tensor, g_term: Tensor, _g_recon: Tensor | None):
        h, weight, inv, u, rho, lam = ctx.saved_tensors
        p = (weight.shape[-1] - 1) // 2
        needs_h, needs_w, needs_r, needs_b = ctx.needs_input_grad[:4]
        # ½ c, c the coefficient of log|det T(w)| in the loss (−1 for the mean NLL): on the device
        half_c = 0.5 * g_term.sum()
        m = multiplicity(weight.shape[-1], h.shape[-2:], dtype=weight.dtype, device=weight.device)
        # 2 a_n ρ_n with a_n = −λ ∂loss/∂term_n the weight of sample n's ‖ρ_n‖² in the loss
        wrho = rho * (g_term * (-2.0 * lam)).view(-1, 1, 1, 1)
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


def selfnorm_conv2d(
    h: Tensor, weight: Tensor, inverse_weight: Tensor, bias: Tensor, recon_weight: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """SNF convolution: ``(z, term, recon)``, see :class:`SelfNormConv2dFunction`.

    ``recon_weight`` (λ): a 0-d tensor (read on the device) or a number.
    """
    lam = torch.as_tensor(recon_weight, dtype=h.dtype, device=h.device)
    return SelfNormConv2dFunction.apply(h, weight, inverse_weight, bias, lam)


# -- shared pieces of the image layers --------------------------------------------------------


class _ImageLayer:
    """Input checks and the remembered image size of a C→C layer on images (B, C, H, W)."""

    channels: int
    last_spatial_size: tuple[int, int] | None = None

    def _check_image(self, x: object, name: str = "x") -> tuple[int, int]:
        """Check ``x`` is (B, channels, H, W), remember (H, W) and return it."""
        layer = type(self).__name__
        if not isinstance(x, Tensor):
            raise TypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}.")
        if x.dim() != 4:
            raise ValueError(
                f"{layer} expects images of shape (batch, {self.channels}, height, width), got "
                f"shape {tuple(x.shape)}; reshape the data with "
                f"{name}.reshape(-1, {self.channels}, height, width)."
            )
        if x.shape[1] != self.channels:
            raise ValueError(
                f"{layer} was built for {self.channels} channels but {name} has {x.shape[1]} "
                f"(shape {tuple(x.shape)}); build the layer with channels={x.shape[1]} or pass "
                "channels-first images (batch, channels, height, width)."
            )
        size = (int(x.shape[2]), int(x.shape[3]))
        self.last_spatial_size = size
        return size

    def _spatial_size(self, spatial_size: tuple[int, int] | None) -> tuple[int, int]:
        size = spatial_size if spatial_size is not None else self.last_spatial_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}.logabsdet depends on the image size: pass "
                "spatial_size=(height, width), or run the layer on a batch first (it remembers "
                "the size of its last input)."
            )
        H, W = size
        return check_positive_int(int(H), "height"), check_positive_int(int(W), "width")


def _check_kernel_size(kernel_size: object) -> int:
    K = check_positive_int(kernel_size, "kernel_size")
    if K % 2 != 1:
        raise ValueError(
            f"kernel_size must be odd (same padding puts (K−1)/2 zeros on each side, so that "
            f"the layer maps H×W to H×W), got {K}; use {K - 1} or {K + 1}."
        )
    return K


# -- the convolutional SNF layer ----------------------------------------------------------------


class SelfNormConv2d(SelfNormalizing, _ImageLayer, GradientModeMixin, FlowLayer):
    r"""Invertible C→C convolution ``z = w ⋆ h + b`` (odd K, stride 1, same zero padding).

    Args:
        channels: C, input and output channels.
        kernel_size: odd K (Keller et al. use 3).
        gradient: ``"selfnorm"`` (learned inverse, no O(D³) work in training) or ``"exact"``
            (autograd through the float64 ``slogdet`` of the D×D matrix T(w): the O(D³)
            baseline); switch later with :meth:`set_gradient`.
        recon_weight: λ of the selfnorm mode's reconstruction penalty (Keller et al.: 1).

    Parameters: ``weight`` (C, C, K, K), ``bias`` (C,) and, in selfnorm mode, ``inverse_weight``
    r (C, C, K, K): the learned inverse ``h ≈ r ⋆ (z − b)``, an ordinary same-padded convolution.

    **Initialisation: R = W⁻¹ exactly at step 0.** w is zero except its centre tap, a random
    orthogonal C×C matrix Q, so T(w) = Q ⊗ I_{HW} (a 1×1 convolution) whose inverse
    Q⁻¹ ⊗ I_{HW} *is* a convolution: the one with centre tap Q⁻¹ (= Qᵀ, computed as a float64
    inverse), which r is set to. The SNF gradient is then exactly half the exact NLL gradient at
    the first step, and log|det T(w)| = 0. The paper's code initialises r = flip(w), the kernel of
    T(w)ᵀ — the *adjoint*, which equals T(w)⁻¹ only when T(w) is orthogonal; with a
    dirac + noise kernel the surrogate gradient is then ~14 % off and the penalty has to repair it.
    Entering selfnorm mode later (:meth:`set_gradient`) calls :meth:`reset_inverse`, exact again
    for a centre-tap w and otherwise the best K×K approximation; it adds a parameter, so build the
    optimizer afterwards.

    Note that the inverse of a convolution is not in general a convolution: the penalty pushes w
    towards kernels a K×K convolution can invert (Keller et al., Appendix A.2.2).
    """

    supported_gradients = ("exact", "selfnorm")
    inverse_weight: nn.Parameter | None

    def __init__(
        self,
        channels: int,
        kernel_size: int = 3,
        gradient: str = "selfnorm",
        recon_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        self.kernel_size = _check_kernel_size(kernel_size)
        C, K = self.channels, self.kernel_size
        self.padding = (K - 1) // 2
        weight = torch.zeros(C, C, K, K)
        nn.init.orthogonal_(weight[:, :, self.padding, self.padding])
        self.weight = nn.Parameter(weight)
        self.bias = nn.Parameter(torch.zeros(C))
        self.register_parameter("inverse_weight", None)
        self._cache = ParameterStateCache()
        self.set_recon_weight(recon_weight)
        self.set_gradient(gradient)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, gradient={self.gradient!r}"
        )

    def set_gradient(self, mode: str) -> None:
        super().set_gradient(mode)
        if mode == "selfnorm" and self.inverse_weight is None:
            self.reset_inverse()
            self._init_selfnorm(self._pending_recon_weight)

    def reset_inverse(self, spatial_size: tuple[int, int] | None = None) -> None:
        """Set r to the K×K convolution closest to T(w)⁻¹ (creating ``inverse_weight`` if needed).

        For a centre-tap-only w (the initialisation) this is the exact inverse: centre tap
        W_C⁻¹, no O(D³) work. Otherwise it is the least-squares projection of T(w)⁻¹ onto the
        K×K convolutions, ``r = adjoint(T(w)⁻¹) / m`` (the A_k are orthogonal with ‖A_k‖² = m_k),
        for images of ``spatial_size`` (default: the last input size, else (2K+1, 2K+1)); this
        costs one D×D inverse.
        """
        w = self.weight.detach()
        p = self.padding
        with torch.no_grad():
            off_centre = w.clone()
            off_centre[:, :, p, p] = 0
            if not bool(off_centre.any()):
                r = torch.zeros_like(w)
                r[:, :, p, p] = torch.linalg.inv(w[:, :, p, p].double()).to(w.dtype)
            else:
                if spatial_size is None:
                    K = self.kernel_size
                    spatial_size = self.last_spatial_size or (2 * K + 1, 2 * K + 1)
                size = self._spatial_size(spatial_size)
                target = torch.linalg.inv(conv_matrix(w.double(), size))
                m = multiplicity(self.kernel_size, size, dtype=torch.float64, device=w.device)
                proj = conv_matrix_adjoint(target, tuple(w.shape), size)
                r = torch.where(m > 0, proj / m.clamp(min=1), 0.0).to(w.dtype)
        if self.inverse_weight is None:
            self.inverse_weight = nn.Parameter(r)
        else:
            with torch.no_grad():
                self.inverse_weight.copy_(r)

    # -- exact quantities, float64, cached per parameter state and image size -----------------

    def _lu64(self, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        def factor() -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                lu, pivots = torch.linalg.lu_factor(
                    conv_matrix(self.weight.detach().double(), size)
                )
            return lu, pivots

        key = f"lu{size[0]}x{size[1]}"
        return self._cache.get(key, [self.weight], factor)  # type: ignore[return-value]

    def logabsdet(self, spatial_size: tuple[int, int] | None = None) -> Tensor:
        """log|det T(w)| (scalar, in w's dtype) for images of ``spatial_size`` = (H, W).

        Without ``spatial_size``, the size of the last input (see the module docs). Differentiable
        (float64 ``slogdet`` of the explicitly built D×D matrix, O(D³)) when a gradient for w is
        being recorded; otherwise read from the cached float64 LU factorisation.
        """
        size = self._spatial_size(spatial_size)
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.slogdet(conv_matrix(w.double(), size)).logabsdet.to(w.dtype)
        lu, _ = self._lu64(size)
        return lu.diagonal().abs().log().sum().to(w.dtype)

    # -- the layer protocol -------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = self._check_image(x)
        z = F.conv2d(x, self.weight, self.bias, padding=self.padding)
        return z, self.logabsdet(size).expand(x.shape[0])

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.gradient != "selfnorm":
            return self(x)  # exact: autograd through the float64 slogdet of T(w)
        self._check_image(x)
        z, term, recon = selfnorm_conv2d(
            x, self.weight, self.inverse_weight, self.bias, self.recon_weight
        )
        self._record_reconstruction(recon, x)
        return z, term

    def inverse(self, z: Tensor) -> Tensor:
        """h = T(w)⁻¹ vec(z − b), solved in float64 with the cached LU factorisation."""
        size = self._check_image(z, "z")
        lu, pivots = self._lu64(size)
        rhs = (z.double() - self.bias.detach().double().view(1, -1, 1, 1)).flatten(1).t()
        return torch.linalg.lu_solve(lu, pivots, rhs).t().reshape(z.shape).to(z.dtype)

    def approximate_inverse(self, z: Tensor) -> Tensor:
        """h ≈ r ⋆ (z − b) through the learned inverse (selfnorm mode): one convolution.

        Falls back to the exact :meth:`inverse` for a layer that has no learned inverse.
        """
        if self.inverse_weight is None:
            return self.inverse(z)
        self._check_image(z, "z")
        return F.conv2d(z - self.bias.view(1, -1, 1, 1), self.inverse_weight, padding=self.padding)

    def reconstruction_error(self, h: Tensor) -> Tensor:
        """‖h_n − r ⋆ (w ⋆ h_n)‖² per sample (B,), by plain autograd in w and r (h is detached).

        The selfnorm training step folds this penalty into its fused backward; this method is
        for monitoring, or for training r on the penalty alone.
        """
        inv = self._require_inverse()
        self._check_image(h, "h")
        h = h.detach()
        u = F.conv2d(h, self.weight, padding=self.padding)
        return (F.conv2d(u, inv, padding=self.padding) - h).square().sum((1, 2, 3))


# -- the invertible 1×1 convolution ------------------------------------------------------------


class Conv1x1(SelfNormalizing, InvertibleMatrix, _ImageLayer, GradientModeMixin, FlowLayer):
    r"""Invertible 1×1 convolution ``z[:, :, y, x] = W_C h[:, :, y, x] (+ b)`` (Glow).

    log|det ∂z/∂h| = H·W·log|det W_C| for every sample.

    Args:
        channels: C.
        gradient: ``"exact"`` (autograd through a float64 ``slogdet`` of the C×C matrix — cheap,
            the Glow layer), ``"relative"`` (Gresele et al.'s rule, O(B·H·W·C²)) or
            ``"selfnorm"`` (learned inverse R, Keller et al.).
        bias: add a per-channel bias (Glow has none: ActNorm provides it).
        recon_weight: λ of the selfnorm penalty.

    ``weight`` (C, C) starts random orthogonal (log|det| = 0). A 1×1 convolution is a dense layer
    applied at every pixel, so the relative and selfnorm modes run the dense rules on the
    (B·H·W, C) view of the input: each pixel row gets the per-sample log-det coefficient, so their
    sum is H·W·c — exactly the coefficient of log|det W_C| in the loss (m = H·W) — and the
    per-sample training term and penalty are sums over the pixels. In selfnorm mode
    ``inverse_weight`` R (C, C) is set to W_C⁻¹ when the mode is entered (= W_Cᵀ at
    initialisation).
    """

    supported_gradients = ("exact", "relative", "selfnorm")
    inverse_weight: nn.Parameter | None
    bias: nn.Parameter | None

    def __init__(
        self,
        channels: int,
        gradient: str = "exact",
        *,
        bias: bool = False,
        recon_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.channels = C = check_positive_int(channels, "channels")
        self.weight = nn.Parameter(torch.empty(C, C))
        nn.init.orthogonal_(self.weight)
        if bias:
            self.bias = nn.Parameter(torch.zeros(C))
        else:
            self.register_parameter("bias", None)
        self.register_parameter("inverse_weight", None)
        self._cache = ParameterStateCache()
        self.set_recon_weight(recon_weight)
        self.set_gradient(gradient)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}, gradient={self.gradient!r}"

    # -- exact quantities --------------------------------------------------------------------

    def logabsdet(self, spatial_size: tuple[int, int] | None = None) -> Tensor:
        """H·W·log|det W_C| (scalar) for images of ``spatial_size`` (default: the last input's).

        Float64; differentiable when a gradient for W_C is recorded, else from a cached LU.
        """
        H, W = self._spatial_size(spatial_size)
        return (H * W) * self.matrix_logabsdet()

    # -- the layer protocol -------------------------------------------------------------------

    def _bias_or_zero(self, ref: Tensor) -> Tensor:
        return self.bias if self.bias is not None else ref.new_zeros(self.channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        H, W = self._check_image(x)
        z = F.conv2d(x, self.weight[:, :, None, None], self.bias)
        return z, ((H * W) * self.matrix_logabsdet()).expand(x.shape[0])

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.gradient == "exact":
            return self(x)
        H, W = self._check_image(x)
        B, C = x.shape[0], self.channels
        rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # one row per pixel
        bias = self._bias_or_zero(x)
        if self.gradient == "relative":
            y, marker = relative_affine(rows, self.weight, bias)
            term = marker.view(B, H * W).sum(1)
        else:
            y, pixel_terms, recon = selfnorm_affine(
                rows, self.weight, self.inverse_weight, bias, self.recon_weight
            )
            term = pixel_terms.view(B, H * W).sum(1)
            self._record_reconstruction(recon.view(B, H * W).sum(1), x)
        return y.view(B, H, W, C).permute(0, 3, 1, 2).contiguous(), term

    def inverse(self, z: Tensor) -> Tensor:
        """h = W_C⁻¹ (z − b) at every pixel, solved in float64 with the cached LU factorisation."""
        self._check_image(z, "z")
        z64 = z.double()
        if self.bias is not None:
            z64 = z64 - self.bias.detach().double().view(1, -1, 1, 1)
        rhs = z64.transpose(0, 1).reshape(self.channels, -1)
        h = self._solve(rhs).view(self.channels, z.shape[0], *z.shape[2:])
        return h.transpose(0, 1).contiguous().to(z.dtype)

    def approximate_inverse(self, z: Tensor) -> Tensor:
        """h ≈ R (z − b) at every pixel through the learned inverse (selfnorm mode).

        Falls back to the exact :meth:`inverse` for a layer that has no learned inverse.
        """
        if self.inverse_weight is None:
            return self.inverse(z)
        self._check_image(z, "z")
        if self.bias is not None:
            z = z - self.bias.view(1, -1, 1, 1)
        return F.conv2d(z, self.inverse_weight[:, :, None, None])

    def reconstruction_error(self, h: Tensor) -> Tensor:
        """Σ_pixels ‖h − R W_C h‖² per sample (B,), by plain autograd in W_C and R (h detached)."""
        inv = self._require_inverse()
        self._check_image(h, "h")
        h = h.detach()
        u = F.conv2d(h, self.weight[:, :, None, None])
        return (F.conv2d(u, inv[:, :, None, None]) - h).square().sum((1, 2, 3))

r"""Invertible convolutions on images (B, C, H, W): SNF K×K convolutions and Glow's 1×1 ones.

:class:`SelfNormConv2d` — a C→C convolution ``z = w ⋆ h + b`` (odd K, stride 1, "same" zero
padding) with two gradient modes:

* ``"selfnorm"`` (Keller et al., "Self Normalizing Flows", ICML 2021, §3.2 and Appendix A.2):
  the layer keeps a learned approximate inverse, an ordinary convolution ``h ≈ r ⋆ (z − b)`` with
  its own kernel r (``inverse_weight``), and trains with the SNF convolution rule of
  :mod:`jacfree.flows.selfnorm` (:class:`~jacfree.flows.selfnorm.SelfNormConv2dFunction`): the
  kernel-space form of T(w)⁻ᵀ, an O(D³) quantity (T(w) the D×D matrix of the convolution,
  :mod:`jacfree.flows.toeplitz`, D = C·H·W), is replaced by ``flip(r) ⊙ m``, the kernel-space form
  of T(r)ᵀ. Six convolutions per step in all, no determinant, inverse or solve; ``training_forward``
  returns ``(z, term)`` with ``term_n = −λ‖h_n − r ⋆ (w ⋆ h_n)‖²``.
* ``"exact"`` — the O(D³) baseline: log|det T(w)| from a float64 ``slogdet`` of the explicitly
  built matrix, differentiated by autograd in training.

In both modes the exact log-det (``forward``, hence ``Flow.log_prob``) and the exact inverse use a
float64 LU factorisation of T(w), cached per parameter state and image size.

:class:`Conv1x1` — Glow's invertible 1×1 convolution (Kingma & Dhariwal 2018): a C×C matrix applied
at every pixel, log|det| = H·W·log|det W_C| (float64, cached), exact inverse; in ``"relative"``
and ``"selfnorm"`` modes it runs the dense rules of :mod:`jacfree.flows.relative` /
:mod:`jacfree.flows.selfnorm` on the (B·H·W, C) view (m = H·W, flip = transpose).

Both are :class:`~jacfree.flows.linear.InvertibleLinear` layers (through :class:`ImageLinear`,
which adds the image checks and the remembered image size).

**Image size.** Both layers take H, W from their input, so one layer serves any image size. The
data-independent :meth:`~SelfNormConv2d.logabsdet` depends on (H, W): it uses the size passed as
``spatial_size``, else the size of the last input the layer saw (``last_spatial_size``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int
from .linear import InvertibleLinear
from .relative import relative_affine
from .selfnorm import (
    SelfNormConv2dFunction,
    conv_initial_inverse,
    selfnorm_affine,
    selfnorm_conv2d,
)
from .toeplitz import conv_matrix

__all__ = ["Conv1x1", "ImageLinear", "SelfNormConv2d", "SelfNormConv2dFunction", "selfnorm_conv2d"]


class ImageLinear(InvertibleLinear):
    """An :class:`~jacfree.flows.linear.InvertibleLinear` C→C layer on images (B, C, H, W).

    Adds the input checks and the image size (H, W) of the last input (``last_spatial_size``),
    which the data-independent :meth:`logabsdet` uses when given no ``spatial_size``.
    """

    channels: int
    last_spatial_size: tuple[int, int] | None = None

    def _check_input(self, x: object, name: str = "x") -> tuple[int, int]:
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

    def logabsdet(self, spatial_size: tuple[int, int] | None = None) -> Tensor:
        """log|det ∂z/∂h| (scalar, in the weight's dtype) for images of ``spatial_size`` = (H, W),
        by default the last input's size (see the module docs)."""
        return self._logabsdet_at(self._spatial_size(spatial_size))


def _check_kernel_size(kernel_size: object) -> int:
    K = check_positive_int(kernel_size, "kernel_size")
    if K % 2 != 1:
        raise ValueError(
            f"kernel_size must be odd (same padding puts (K−1)/2 zeros on each side, so that "
            f"the layer maps H×W to H×W), got {K}; use {K - 1} or {K + 1}."
        )
    return K


class SelfNormConv2d(ImageLinear):
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
    bias: nn.Parameter

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
        self._init_gradient(gradient, recon_weight)

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, kernel_size={self.kernel_size}, gradient={self.gradient!r}"
        )

    def reset_inverse(self, spatial_size: tuple[int, int] | None = None) -> None:
        """Set r to the K×K convolution closest to T(w)⁻¹ (creating ``inverse_weight`` if needed).

        For a centre-tap-only w (the initialisation) this is the exact inverse: centre tap
        W_C⁻¹, no O(D³) work. Otherwise it is the least-squares projection of T(w)⁻¹ onto the
        K×K convolutions (:func:`~jacfree.flows.selfnorm.conv_initial_inverse`) for images of
        ``spatial_size`` (default: the last input size, else (2K+1, 2K+1)); this costs one D×D
        inverse.
        """
        r = self._initial_inverse(spatial_size)
        if self.inverse_weight is None:
            self.inverse_weight = nn.Parameter(r)
        else:
            with torch.no_grad():
                self.inverse_weight.copy_(r)

    def _initial_inverse(self, spatial_size: tuple[int, int] | None = None) -> Tensor:
        if spatial_size is None:
            K = self.kernel_size
            spatial_size = self.last_spatial_size or (2 * K + 1, 2 * K + 1)
        return conv_initial_inverse(self.weight, self._spatial_size(spatial_size))

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight, bias, padding=self.padding)

    def _logabsdet_at(self, size: tuple[int, int] | None) -> Tensor:
        return self.matrix_logabsdet(self._spatial_size(size))

    def _matrix(self, weight64: Tensor, size: tuple[int, int] | None) -> Tensor:
        return conv_matrix(weight64, size)  # type: ignore[arg-type]

    def _selfnorm_forward(self, x: Tensor, size: object) -> tuple[Tensor, Tensor, Tensor]:
        return selfnorm_conv2d(x, self.weight, self.inverse_weight, self.bias, self.recon_weight)

    def inverse(self, z: Tensor) -> Tensor:
        """h = T(w)⁻¹ vec(z − b), solved in float64 with the cached LU factorisation."""
        size = self._check_input(z, "z")
        rhs = (z.double() - self.bias.detach().double().view(1, -1, 1, 1)).flatten(1).t()
        return self._solve(rhs, size).t().reshape(z.shape).to(z.dtype)


class Conv1x1(ImageLinear):
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
        self.weight = self._orthogonal_weight(C)
        if bias:
            self.bias = nn.Parameter(torch.zeros(C))
        else:
            self.register_parameter("bias", None)
        self._init_gradient(gradient, recon_weight)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, bias={self.bias is not None}, gradient={self.gradient!r}"

    def _logabsdet_at(self, size: tuple[int, int] | None) -> Tensor:
        H, W = size  # type: ignore[misc]
        return (H * W) * self.matrix_logabsdet()

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.conv2d(x, weight[:, :, None, None], bias)

    def _pixel_rule(
        self, x: Tensor, size: tuple[int, int], rule: Callable[[Tensor, Tensor], tuple[Tensor, ...]]
    ) -> tuple[Tensor, ...]:
        """Run a dense rule on the (B·H·W, C) pixel rows of ``x``: the output back as an image,
        then the rule's per-row outputs summed per sample."""
        (H, W), B, C = size, x.shape[0], self.channels
        rows = x.permute(0, 2, 3, 1).reshape(B * H * W, C)  # one row per pixel
        bias = self.bias if self.bias is not None else x.new_zeros(C)
        y, *per_row = rule(rows, bias)
        image = y.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
        return image, *(t.view(B, H * W).sum(1) for t in per_row)

    def _relative_forward(self, x: Tensor, size: object) -> tuple[Tensor, Tensor]:
        def rule(rows: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
            return relative_affine(rows, self.weight, b)

        return self._pixel_rule(x, size, rule)  # type: ignore[arg-type, return-value]

    def _selfnorm_forward(self, x: Tensor, size: object) -> tuple[Tensor, Tensor, Tensor]:
        def rule(rows: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            return selfnorm_affine(rows, self.weight, self.inverse_weight, b, self.recon_weight)

        return self._pixel_rule(x, size, rule)  # type: ignore[arg-type, return-value]

    def inverse(self, z: Tensor) -> Tensor:
        """h = W_C⁻¹ (z − b) at every pixel, solved in float64 with the cached LU factorisation."""
        self._check_input(z, "z")
        z64 = z.double()
        if self.bias is not None:
            z64 = z64 - self.bias.detach().double().view(1, -1, 1, 1)
        rhs = z64.transpose(0, 1).reshape(self.channels, -1)
        h = self._solve(rhs).view(self.channels, z.shape[0], *z.shape[2:])
        return h.transpose(0, 1).contiguous().to(z.dtype)

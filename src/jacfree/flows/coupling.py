r"""Affine (and additive) coupling layers for images and vectors (RealNVP / Glow).

Dinh, Sohl-Dickstein & Bengio, "Density estimation using Real NVP", ICLR 2017; NICE (Dinh et al.
2014) for the additive form; Kingma & Dhariwal, "Glow", NeurIPS 2018 for the zero-initialised
conditioner. The channels of ``x`` (shape ``(B, C, H, W)`` or ``(B, C)``) are split into a kept
part ``x_a`` (``C // 2`` channels) and a moved part ``x_b`` (the other ``C − C//2``):

.. math::
    z_a = x_a,\qquad z_b = x_b \odot e^{\log s} + t,\qquad
    (\tilde s, t) = \mathrm{NN}(x_a),\qquad \log s = \beta \tanh(\tilde s / \beta),

    \log|\det \partial z/\partial x| = \textstyle\sum \log s ,
    \qquad x_b = (z_b - t) \odot e^{-\log s} .

The soft clamp ``β tanh(·/β)`` (β = ``scale_bound`` = 2, as in the reference code of Keller et al.
2021) keeps every scale in ``(e^{-β}, e^{β})`` and equals the identity near 0. The additive
variant (``affine=False``) uses ``z_b = x_b + t`` (log-det 0).

The default conditioner is the one of Glow and of the SNF reference code: conv k×k (C_a → hidden)
→ ReLU → conv 1×1 (hidden → hidden) → ReLU → :class:`ZeroConv2d` k×k (hidden → 2·C_b), whose
weights and bias start at zero, so **the layer is the identity at initialisation**.
For vector inputs ``(B, C)`` build the layer with ``kernel_size=1``: the conditioner is then an
MLP (the vector is viewed as a 1×1 image).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int
from .core import FlowLayer

__all__ = ["AffineCoupling", "ZeroConv2d"]


class ZeroConv2d(nn.Module):
    """Zero-initialised "same" convolution with a learned per-channel output scale (Glow).

    ``y = conv(x; w, b) · exp(logscale_factor · logs)`` with ``w``, ``b`` and ``logs`` all zero at
    initialisation (so ``y = 0``). The factor 3 is Glow's ``logscale_factor``; it lets the output
    scale move faster than the weights.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        logscale_factor: float = 3.0,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size)
        self.kernel_size = kernel_size
        self.logscale_factor = float(logscale_factor)
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.logs = nn.Parameter(torch.zeros(out_channels))

    def extra_repr(self) -> str:
        o, i, k, _ = self.weight.shape
        return f"{i}, {o}, kernel_size={k}, logscale_factor={self.logscale_factor}"

    def forward(self, x: Tensor) -> Tensor:
        y = F.conv2d(x, self.weight, self.bias, padding=self.kernel_size // 2)
        return y * torch.exp(self.logscale_factor * self.logs).view(-1, 1, 1)


def _check_kernel(kernel_size: int) -> None:
    check_positive_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(
            f"kernel_size must be odd (a 'same' convolution keeps the image size), got "
            f"{kernel_size}; use 1 or 3."
        )


def glow_conditioner(n_in: int, n_out: int, hidden: int, kernel_size: int) -> nn.Sequential:
    """conv k×k (n_in → hidden) → ReLU → conv 1×1 → ReLU → zero-initialised conv k×k (→ n_out)."""
    _check_kernel(kernel_size)
    check_positive_int(hidden, "hidden")
    return nn.Sequential(
        nn.Conv2d(n_in, hidden, kernel_size, padding=kernel_size // 2),
        nn.ReLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.ReLU(),
        ZeroConv2d(hidden, n_out, kernel_size),
    )


def split_channels(channels: int, layer: str) -> tuple[int, int]:
    """``(C // 2, C − C // 2)``; at least 2 channels are needed."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 2:
        raise ValueError(
            f"{layer} needs at least 2 channels to split, got {channels!r}; squeeze the input "
            "first (jacfree.Squeeze turns (C, H, W) into (4C, H/2, W/2)) or flatten it into a "
            "vector."
        )
    return channels // 2, channels - channels // 2


def run_conditioner(
    net: Callable[[Tensor], Tensor], x: Tensor, n_out: int, kernel_size: int | None, layer: str
) -> Tensor:
    """Apply an image conditioner to ``(B, C, H, W)`` or, viewed as 1×1 images, to ``(B, C)``."""
    if x.dim() == 2:
        if kernel_size is not None and kernel_size != 1:
            raise ValueError(
                f"{layer} got vector input of shape {tuple(x.shape)} but was built with "
                f"kernel_size={kernel_size}; build it with kernel_size=1 for vectors (the "
                "conditioner is then an MLP)."
            )
        h = net(x[:, :, None, None])
        h = h.reshape(h.shape[0], -1)
        want: tuple[int, ...] = (x.shape[0], n_out)
    else:
        h = net(x)
        want = (x.shape[0], n_out, *x.shape[2:])
    if tuple(h.shape) != want:
        raise ValueError(
            f"{layer}'s conditioner returned shape {tuple(h.shape)}, expected {want}; a custom "
            "net must keep the spatial size and return the documented number of channels."
        )
    return h


def check_image_or_vector(x: Tensor, channels: int, layer: str) -> None:
    if x.dim() not in (2, 4) or x.shape[1] != channels:
        raise ValueError(
            f"{layer} expects input of shape (batch, {channels}, H, W) or (batch, {channels}), "
            f"got {tuple(x.shape)}; build the layer with channels=x.shape[1]."
        )


class AffineCoupling(FlowLayer):
    """Affine coupling ``z_b = x_b·exp(log s(x_a)) + t(x_a)``, ``z_a = x_a`` (identity at init).

    Args:
        channels: C ≥ 2 (dimension 1 of the input ``(B, C, H, W)`` or ``(B, C)``). ``C // 2``
            channels condition, the other ``C − C // 2`` are transformed.
        hidden: width of the default conditioner (the reference uses 512 for MNIST Glow).
        kernel_size: odd size of the first and last convolutions of the default conditioner
            (3 for images; 1 for vector inputs).
        affine: ``False`` gives the additive (NICE) coupling ``z_b = x_b + t(x_a)``, log-det 0.
        swap: condition on the *last* ``C // 2`` channels and transform the first ones, so that
            alternating layers transform every channel.
        scale_bound: β of the soft clamp ``log s = β·tanh(s̃/β)``.
        net: a custom conditioner mapping ``(B, C//2, H, W)`` to ``(B, 2·(C − C//2), H, W)``
            (``(B, C − C//2, …)`` if additive); channel ``2j`` is the raw log-scale and ``2j+1``
            the shift of transformed channel ``j``. Vectors are passed as 1×1 images.
    """

    inverse_is_differentiable = True

    def __init__(
        self,
        channels: int,
        hidden: int = 64,
        kernel_size: int = 3,
        *,
        affine: bool = True,
        swap: bool = False,
        scale_bound: float = 2.0,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.n_kept, self.n_moved = split_channels(channels, "AffineCoupling")
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound}.")
        self.channels = channels
        self.affine = bool(affine)
        self.swap = bool(swap)
        self.scale_bound = float(scale_bound)
        self.n_out = (2 if self.affine else 1) * self.n_moved
        self.kernel_size: int | None = None if net is not None else kernel_size
        self.net = net if net is not None else glow_conditioner(
            self.n_kept, self.n_out, hidden, kernel_size
        )  # fmt: skip

    def extra_repr(self) -> str:
        return (
            f"channels={self.channels}, affine={self.affine}, swap={self.swap}, "
            f"scale_bound={self.scale_bound}"
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        check_image_or_vector(x, self.channels, "AffineCoupling")
        if self.swap:
            return x[:, self.n_moved :], x[:, : self.n_moved]
        return x[:, : self.n_kept], x[:, self.n_kept :]

    def _join(self, kept: Tensor, moved: Tensor) -> Tensor:
        return torch.cat([moved, kept] if self.swap else [kept, moved], dim=1)

    def _params(self, kept: Tensor) -> tuple[Tensor | None, Tensor]:
        h = run_conditioner(self.net, kept, self.n_out, self.kernel_size, "AffineCoupling")
        if not self.affine:
            return None, h
        b = self.scale_bound
        return b * torch.tanh(h[:, 0::2] / b), h[:, 1::2]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        kept, moved = self._split(x)
        log_s, t = self._params(kept)
        if log_s is None:
            return self._join(kept, moved + t), x.new_zeros(x.shape[0])
        z = self._join(kept, moved * log_s.exp() + t)
        return z, log_s.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        kept, moved = self._split(z)
        log_s, t = self._params(kept)
        if log_s is None:
            return self._join(kept, moved - t)
        return self._join(kept, (moved - t) * torch.exp(-log_s))

r"""Multi-scale split with a learned conditional Gaussian prior (RealNVP; Glow's "split").

Dinh et al., "Density estimation using Real NVP", ICLR 2017, §3.6 (multi-scale architecture);
Kingma & Dhariwal, "Glow", NeurIPS 2018 (learned prior of the factored-out half).

:class:`SplitPrior` takes ``x`` of shape ``(B, C, H, W)`` (or ``(B, C)``), keeps ``h₁`` = the first
``C // 2`` channels and factors out ``h₂`` = the other ``C − C // 2`` under the Gaussian
``N(μ(h₁), diag σ(h₁)²)``, by mapping it to

.. math::  ε = (h_2 - μ(h_1)) \odot e^{-\log σ(h_1)},
    \qquad \log|\det| = -\textstyle\sum \log σ(h_1),

while the **inner** layers map ``h₁ ↦ u`` (any further flow layers: more steps, a Squeeze, another
SplitPrior). The output packs the two back into the input's shape::

    z = concat([u.reshape(h₁.shape), ε], dim=1)        # (B, C, H, W) again

``u`` is reshaped row-major to ``h₁``'s shape (a fixed relabelling of coordinates, log-det 0:
inner layers may squeeze, so ``u`` can have another shape with the same number of elements).
Because ``z`` has the input's shape, a model made of these layers remains a plain
:class:`~jacfree.flows.Flow` with one standard Gaussian base over the full event shape, and

.. math:: \log p(x) = \log\mathcal N(u; 0, I) + \log\mathcal N(h_2; μ(h_1), σ(h_1)^2)
    + \text{(inner log-dets)} + \dots

exactly the multi-scale likelihood, with ``log_prob``, ``sample`` and ``loss`` unchanged. The
conditioner ``(μ, log σ) = ZeroConv2d(h₁)`` starts at zero, so the prior starts standard (and the
layer is the identity plus the inner layers' action at initialisation).

It is a composite: each entry point runs the same entry point of the inner layers —
``forward`` sums their exact log-dets, ``training_forward`` their training terms (so
self-normalizing or relative-gradient layers inside keep their special gradients), ``inverse``
and ``approximate_inverse`` their (approximate) inverses. Inner layers that change the event
shape must define ``output_shape(shape)`` (as :class:`~jacfree.flows.Squeeze` does), which the
inverse uses to undo the packing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .core import FlowLayer
from .coupling import ZeroConv2d, check_image_or_vector, run_conditioner, split_channels
from .squeeze import output_shape

__all__ = ["SplitPrior"]


class SplitPrior(FlowLayer):
    """Factor out half the channels under a learned conditional Gaussian; run ``inner`` on the rest.

    Args:
        channels: C ≥ 2 of the input ``(B, C, H, W)`` or ``(B, C)``; ``C // 2`` channels go on
            through ``inner``, ``C − C // 2`` are factored out.
        inner: flow layers applied to the kept half ``(B, C // 2, H, W)``.
        kernel_size: odd kernel size of the zero-initialised prior convolution (1 for vectors).

    The packing of the output and the log-det are described in the module docstring.
    """

    def __init__(
        self, channels: int, inner: Iterable[FlowLayer] = (), kernel_size: int = 3
    ) -> None:
        super().__init__()
        self.n_kept, self.n_factored = split_channels(channels, "SplitPrior")
        self.channels = channels
        self.kernel_size = kernel_size
        self.inner = nn.ModuleList(inner)
        for layer in self.inner:
            if not isinstance(layer, FlowLayer):
                raise TypeError(
                    f"SplitPrior's inner layers must be FlowLayers, got {type(layer).__name__}; "
                    "wrap plain modules in a FlowLayer with a log-det and an inverse."
                )
        self.prior = ZeroConv2d(self.n_kept, 2 * self.n_factored, kernel_size)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, kept={self.n_kept}, factored={self.n_factored}"

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """The output has the input's shape (see the packing in the module docstring)."""
        return tuple(shape)

    def _prior(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        h = run_conditioner(self.prior, kept, 2 * self.n_factored, self.kernel_size, "SplitPrior")
        return h[:, 0::2], h[:, 1::2]

    def _run(self, x: Tensor, entry: str) -> tuple[Tensor, Tensor]:
        check_image_or_vector(x, self.channels, "SplitPrior")
        kept, factored = x[:, : self.n_kept], x[:, self.n_kept :]
        mu, log_sigma = self._prior(kept)
        eps = (factored - mu) * torch.exp(-log_sigma)
        logdet = -log_sigma.flatten(1).sum(1)
        u = kept
        for layer in self.inner:
            u, ld = getattr(layer, entry)(u)
            logdet = logdet + ld
        want = output_shape(self.inner, kept.shape[1:])
        if tuple(u.shape[1:]) != want:
            raise RuntimeError(
                f"SplitPrior's inner layers turned shape {tuple(kept.shape[1:])} into "
                f"{tuple(u.shape[1:])}, but their output_shape() methods predict {want}; a layer "
                "that changes the shape must define output_shape(shape) so the split can be "
                "inverted."
            )
        return torch.cat([u.reshape(kept.shape), eps], dim=1), logdet

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x, "forward")

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._run(x, "training_forward")

    def _invert(self, z: Tensor, approximate: bool) -> Tensor:
        check_image_or_vector(z, self.channels, "SplitPrior.inverse")
        packed, eps = z[:, : self.n_kept], z[:, self.n_kept :]
        u = packed.reshape(z.shape[0], *output_shape(self.inner, packed.shape[1:]))
        for layer in reversed(self.inner):
            u = layer.approximate_inverse(u) if approximate else layer.inverse(u)
        mu, log_sigma = self._prior(u)
        return torch.cat([u, eps * log_sigma.exp() + mu], dim=1)

    def inverse(self, z: Tensor) -> Tensor:
        return self._invert(z, approximate=False)

    def approximate_inverse(self, z: Tensor) -> Tensor:
        return self._invert(z, approximate=True)

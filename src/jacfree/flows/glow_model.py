r"""A Glow-like multi-scale flow whose invertible convolutions can be self-normalizing.

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018, with
the self-normalizing 1×1 convolutions of Keller et al., "Self Normalizing Flows", ICML 2021 (§5.2,
"SNF Glow"; reference code ``selfnorm_glow_mnist.py`` / ``conv1x1_glow_mnist.py``). Each of the
``blocks`` blocks squeezes (space-to-depth) and runs ``steps`` flow steps

.. math::  \text{ActNorm} \;\to\; \text{invertible conv (1×1, or K×K SNF)} \;\to\;
    \text{affine coupling},

and every block but the last ends in a split prior that factors out half of the channels under a
learned conditional Gaussian (:class:`~jacfree.flows.SplitPrior`). On 28×28 grey images with two
blocks::

    (1,28,28) squeeze (4,14,14) [step]×K  split: 2 channels factored out,
              (2,14,14) squeeze (8,7,7) [step]×K                    → z packed into (1,28,28)

The later blocks run *inside* the split prior (which packs their output back into its input's
shape), and one unsqueeze at the end gives the latent the data's shape, as
:class:`~jacfree.flows.Flow` requires.

Gradient modes (``gradient=`` or ``set_gradient`` on the live model) act on the invertible
convolutions only; ActNorm, couplings and priors always use their exact, cheap log-dets:

* ``"exact"`` — Glow's 1×1 convolution, log|det| = H·W·log|det W_C| by autograd through a C×C
  ``slogdet`` (cheap: C ≤ 16 here). With ``conv_kernel`` > 1: the D×D ``slogdet`` of T(w).
* ``"selfnorm"`` — the SNF rule with a learned inverse R per convolution (sampling through R).
* ``"relative"`` — the relative gradient of Gresele et al. on the 1×1 convolutions.

Differences from the reference code, all documented choices: the split prior's conditional
Gaussian comes from one zero-initialised 3×3 convolution of the kept half (Glow), not from a
512-wide coupling network; the 1×1 convolutions have no bias (ActNorm provides one); the default
size is 2 blocks × 8 steps with couplings of width 64, not 2 × 16 of width 512, so that an epoch
of 28×28 images costs minutes, not hours, on a CPU (``steps=16, hidden=512`` is the paper's
"Glow-like 32-layer" model: 9.75 M parameters against 0.15 M).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._checks import check_choice, check_positive_int
from .actnorm import ActNorm
from .conditional import ContextAffine
from .conv import Conv1x1, SelfNormConv2d
from .core import GRADIENT_MODES, FlowLayer
from .coupling import AffineCoupling
from .image import ImageFlow, image_shape
from .multiscale import SplitPrior
from .options import GradientFlowOptions, SharedOptions
from .squeeze import Squeeze

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["GlowFlow"]


class GlowFlow(ImageFlow):
    """Glow-like flow: blocks × steps of ActNorm → invertible conv → affine coupling, split priors.

    Args:
        shape: event shape (C, H, W); H and W must be divisible by 2^blocks. Default (1, 28, 28).
        blocks: number of levels (Keller et al. on MNIST: 2); each starts with a squeeze.
        steps: flow steps per block (default 8; Keller et al.: 16, their "32-layer" model).
        hidden: width of the coupling networks (Keller et al.: 512; default 64, see the module
            docstring).
        gradient: ``"exact"``, ``"selfnorm"`` or ``"relative"`` (``relative`` needs
            ``conv_kernel=1``).
        conv_kernel: 1 for Glow's invertible 1×1 convolutions (:class:`~jacfree.flows.Conv1x1`);
            an odd K > 1 for K×K SNF convolutions (:class:`~jacfree.flows.SelfNormConv2d`, as in
            Keller et al.'s GECO experiment with K = 5).
        coupling_kernel: kernel size of the first and last convolution of the coupling networks.
        split: factor out half of the channels after every block but the last (Glow); without
            it every block works on all channels.
        swap: alternate the half that each coupling transforms (the reference code never swaps:
            the 1×1 convolutions mix the channels).
        **options: the keywords every flow model shares
            (:class:`~jacfree.flows.options.GradientFlowOptions`): ``preprocess``,
            ``recon_weight`` (λ of the SNF penalty; default 100.0, as Keller et al. for their
            Glow), ``validate``, ``context_features``, ``context_classes``, ``context_hidden``.
            With a context, a per-pixel :class:`ContextAffine` ``x ⊙ e^{a(c)} + t(c)`` comes
            first, and a per-channel one after the ActNorm of every step outside the split
            priors (with ``split=True`` the levels inside a split prior see the context only
            through the first layer).

    ActNorm layers initialise from the first training batch (``jf.flows.initialize_actnorm`` does
    it explicitly).

    Example:
        >>> import torch, jacfree as jf
        >>> flow = jf.GlowFlow((1, 8, 8), blocks=2, steps=2, hidden=16, gradient="selfnorm")
        >>> x = torch.randn(16, 1, 8, 8)
        >>> flow.loss(x).backward()
        >>> flow.log_prob(x).shape
        torch.Size([16])
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        blocks: int = 2,
        steps: int = 8,
        hidden: int = 64,
        gradient: str = "selfnorm",
        *,
        conv_kernel: int = 1,
        coupling_kernel: int = 3,
        split: bool = True,
        swap: bool = False,
        **options: Unpack[GradientFlowOptions],
    ) -> None:
        shared = SharedOptions.resolve("GlowFlow", options, recon_weight=100.0)
        encoder = shared.encoder
        check_positive_int(blocks, "blocks")
        check_positive_int(steps, "steps")
        check_positive_int(hidden, "hidden")
        check_positive_int(conv_kernel, "conv_kernel")
        check_choice(gradient, "gradient mode", GRADIENT_MODES)
        if conv_kernel > 1 and gradient not in SelfNormConv2d.supported_gradients:
            raise ValueError(
                f"GlowFlow with conv_kernel={conv_kernel} uses SNF K×K convolutions, which "
                f"support the gradient modes {SelfNormConv2d.supported_gradients}, not "
                f"{gradient!r}; use conv_kernel=1 (1×1 convolutions) for {gradient!r}."
            )
        shape = image_shape(shape, "GlowFlow", blocks, blocks)
        C, H, W = shape

        def conv(c: int) -> FlowLayer:
            if conv_kernel == 1:
                return Conv1x1(c, gradient, recon_weight=shared.recon_weight)
            return SelfNormConv2d(c, conv_kernel, gradient, recon_weight=shared.recon_weight)

        def block(level: int, c: int, top: bool) -> list[FlowLayer]:
            c *= 4
            size = (H >> (level + 1), W >> (level + 1))
            layers: list[FlowLayer] = [Squeeze()]
            for k in range(steps):
                layers.append(ActNorm(c))
                if encoder is not None and top:
                    layers.append(ContextAffine((c, *size), encoder.hidden, per="channel"))
                layers += [
                    conv(c),
                    AffineCoupling(c, hidden, coupling_kernel, swap=swap and k % 2 == 1),
                ]
            if level == blocks - 1:
                return layers
            if split:
                inner = block(level + 1, c // 2, top=False)
                return [*layers, SplitPrior(c, inner, coupling_kernel)]
            return layers + block(level + 1, c, top)

        body = block(0, C, top=True)
        if encoder is not None:
            body.insert(0, ContextAffine(shape, encoder.hidden, per="element"))
        super().__init__(body, shape, 1 if split else blocks, shared)
        self.blocks = blocks
        self.steps = steps
        self.hidden = hidden

r"""The convolutional self-normalizing flow of Keller et al. (ICML 2021): "SNF Conv. 9-layer".

Keller, Peters, Jaini, Hoogeboom, Forré & Welling, "Self Normalizing Flows", ICML 2021, §5.2 and
Appendix A.3 (the MNIST convolutional models; reference code ``selfnorm_cnn_mnist.py``). The
flow stacks ``blocks`` blocks of ``layers_per_block`` invertible 3×3 convolutions
(:class:`~jacfree.flows.SelfNormConv2d`, "same" padding, C → C), an elementwise activation after
every convolution except the very last one, and a space-to-depth squeeze between blocks. With the
defaults on 28×28 grey images (9 convolutions)::

    (1,28,28)  conv σ conv σ conv σ  squeeze
    (4,14,14)  conv σ conv σ conv σ  squeeze
    (16,7,7)   conv σ conv σ conv    unsqueeze unsqueeze  → z (1,28,28) ~ N(0, I)

The trailing unsqueezes give the latent the data's shape (a fixed permutation of an i.i.d.
Gaussian: the density is unchanged), as :class:`~jacfree.flows.Flow` requires. Every layer keeps
the image size D = C·H·W (784 for 28×28), and

.. math::  \log p(x) = \log\mathcal N(z; 0, I) + \sum_k \log|\det T(w_k)|
    + \sum_{\text{activations}} \sum_i \log σ'(y_i) \;(+\text{ pre-processing log-dets}),

where T(w) is the D×D matrix of a convolution. Gradient modes (one switch, ``gradient=`` or
:meth:`~jacfree.flows.Flow.set_gradient` on the live model):

* ``"selfnorm"`` — every convolution keeps a learned inverse convolution r and trains with the SNF
  rule (no determinant, inverse or solve in a step; see ``docs/selfnorm-conv.md``);
* ``"exact"`` — autograd through the float64 ``slogdet`` of every T(w): the O(D³)-per-layer
  baseline (Keller et al.'s "Exact-gradient Conv. 9-layer").

``log_prob`` is exact in both modes (one cached float64 LU of every T(w) per parameter state).

Activations: ``"spline"`` — the reference code's rational-quadratic spline with its own
parameters for every element (``spline_params="element"``, 5 bins, identity outside ±10); or
``"slr"`` — the smooth leaky ReLU α y + (1−α) softplus(y) (α = 0.3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from .._checks import check_choice, check_positive_int
from .activations import SmoothLeakyReLU
from .conditional import ContextAffine
from .conv import SelfNormConv2d
from .core import FlowLayer
from .image import ImageFlow, image_shape
from .options import GradientFlowOptions, SharedOptions
from .spline import RQSplineActivation
from .squeeze import Squeeze

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["CNNFlow"]

ACTIVATIONS = ("spline", "slr")
SPLINE_PARAMS = ("element", "channel", "shared")


class CNNFlow(ImageFlow):
    """Convolutional SNF: blocks of SNF 3×3 convolutions with activations, squeezes in between.

    Args:
        shape: event shape (C, H, W) of the images; H and W must be divisible by
            2^(blocks−1). Default (1, 28, 28).
        blocks: number of blocks (Keller et al.: 3); a squeeze separates consecutive blocks.
        layers_per_block: convolutions per block (Keller et al.: 3, so 9 in all).
        gradient: ``"selfnorm"`` or ``"exact"`` (switch later with ``set_gradient``).
        kernel_size: odd kernel size K of the convolutions (3).
        activation: ``"spline"`` (rational-quadratic spline, the paper's choice) or ``"slr"``
            (smooth leaky ReLU with slope ``alpha``).
        alpha: smooth leaky ReLU slope (``activation="slr"``).
        spline_params: ``"element"`` (one spline per element of the layer's input, the reference
            code's ``individual_weights=True``), ``"channel"`` or ``"shared"``.
        spline_bins: K of the spline (5); spline_bound: its interval [−B, B] (10).
        **options: the keywords every flow model shares
            (:class:`~jacfree.flows.options.GradientFlowOptions`): ``preprocess``,
            ``recon_weight`` (λ of the SNF penalty; default 1.0, as Keller et al.),
            ``validate``, ``context_features``, ``context_classes``, ``context_hidden``. With a
            context, a per-pixel :class:`ContextAffine` ``x ⊙ e^{a(c)} + t(c)`` comes first (a
            class-dependent mean image and scale), and a per-channel one after every convolution.

    Sizes with the defaults on (1, 28, 28): 9 convolutions with K²·C² kernel weights each
    (C = 1, 4, 16: 7,371 in all, and as many again in the learned inverses in selfnorm mode),
    63 biases and 8 element-wise splines of 784·14 parameters (87,808): 95,242 parameters in
    exact mode, 102,613 in selfnorm mode.

    Example:
        >>> import torch, jacfree as jf
        >>> flow = jf.CNNFlow((1, 8, 8), blocks=2, layers_per_block=2, gradient="selfnorm")
        >>> x = torch.randn(16, 1, 8, 8)
        >>> flow.loss(x).backward()           # SNF gradients: no determinant anywhere
        >>> flow.log_prob(x).shape            # exact log-density
        torch.Size([16])
        >>> flow.sample(4, approximate=True).shape   # through the learned inverse convolutions
        torch.Size([4, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        blocks: int = 3,
        layers_per_block: int = 3,
        gradient: str = "selfnorm",
        *,
        kernel_size: int = 3,
        activation: str = "spline",
        alpha: float = 0.3,
        spline_params: str = "element",
        spline_bins: int = 5,
        spline_bound: float = 10.0,
        **options: Unpack[GradientFlowOptions],
    ) -> None:
        shared = SharedOptions.resolve("CNNFlow", options, recon_weight=1.0)
        encoder = shared.encoder
        check_positive_int(blocks, "blocks")
        check_positive_int(layers_per_block, "layers_per_block")
        check_choice(activation, "activation", ACTIVATIONS)
        check_choice(spline_params, "spline_params", SPLINE_PARAMS)
        check_choice(gradient, "gradient mode", SelfNormConv2d.supported_gradients)
        shape = image_shape(shape, "CNNFlow", blocks, blocks - 1)
        C, H, W = shape

        def act(c: int, h: int, w: int) -> FlowLayer:
            if activation == "slr":
                return SmoothLeakyReLU(alpha)
            grid = {"element": (c, h, w), "channel": (c,), "shared": ()}[spline_params]
            return RQSplineActivation(grid, bins=spline_bins, bound=spline_bound)

        body: list[FlowLayer] = []
        if encoder is not None:
            body.append(ContextAffine(shape, encoder.hidden, per="element"))
        for b in range(blocks):
            for k in range(layers_per_block):
                body.append(
                    SelfNormConv2d(C, kernel_size, gradient, recon_weight=shared.recon_weight)
                )
                if encoder is not None:
                    body.append(ContextAffine((C, H, W), encoder.hidden, per="channel"))
                if not (b == blocks - 1 and k == layers_per_block - 1):
                    body.append(act(C, H, W))
            if b < blocks - 1:
                body.append(Squeeze())
                C, H, W = 4 * C, H // 2, W // 2
        super().__init__(body, shape, blocks - 1, shared)
        self.blocks = blocks
        self.layers_per_block = layers_per_block
        self.activation = activation

r"""Image-flow model kinds of ``jacfree train``: ``cnn`` and ``glow`` (Keller et al., ICML 2021).

=====  =====================================================================  ==================
kind   model                                                                  gradient modes
=====  =====================================================================  ==================
cnn    :class:`~jacfree.flows.CNNFlow`: the 9-layer SNF CNN (3 blocks × 3      exact, selfnorm
       SNF 3×3 convolutions, spline activations, squeezes between blocks)
glow   :class:`~jacfree.flows.GlowFlow`: blocks × steps of ActNorm → 1×1      exact, selfnorm,
       conv → affine coupling, split prior between blocks                     relative (K = 1)
=====  =====================================================================  ==================

(The fully connected flow of the paper is the ``fc`` kind of :mod:`jacfree.kinds.registry`.)

Spec options (``--layers``, ``--hidden``, ``--alpha``, ``--recon-weight``, ``--set KEY=VALUE``),
with the paper's defaults unless noted:

* cnn: ``layers`` = convolutions in all (9), ``blocks`` (3; ``layers`` must be a multiple),
  ``activation`` (``"spline"`` or ``"slr"``), ``alpha`` (0.3, for ``slr``), ``spline_params``
  (``"element"``, ``"channel"`` or ``"shared"``), ``spline_bins`` (5), ``spline_bound`` (10),
  ``kernel_size`` (3), ``recon_weight`` (λ = 1).
* glow: ``layers`` = steps per block (8; the paper: 16), ``blocks`` (2), ``hidden`` = coupling
  width (64; the paper: 512), ``conv_kernel`` (1: Glow's 1×1 convolutions; odd K > 1: SNF K×K
  convolutions), ``coupling_kernel`` (3), ``split`` (true), ``swap`` (false), ``recon_weight``
  (λ = 100).

Both need image data (event shape (C, H, W)). Quantised data (``spec["levels"]``: 256 for
Fashion-MNIST) gets :func:`jacfree.kinds.preprocess_layers` in front — uniform dequantisation
and the logit transform with their log-dets — so the NLL and bits/dim are on the [0, 256)^D
scale. Validation and test use the exact NLL (``log_prob``) in every mode; ``jacfree train``
with ``--gradient selfnorm`` logs the reconstruction error (``train_recon``,
``train_recon_rel``) and writes exact and learned-inverse samples side by side.
"""

from __future__ import annotations

from torch import nn

from .._checks import check_image_shape
from ..flows.cnn import CNNFlow
from ..flows.conv import SelfNormConv2d
from ..flows.glow_model import GlowFlow
from .registry import (
    FLOW_OPTIONS,
    ModelKind,
    ModelSpec,
    context_options,
    option,
    preprocess_layers,
    register_model,
)

__all__ = ["build_cnn", "build_glow"]


def _image_shape(spec: ModelSpec, kind: str) -> tuple[int, int, int]:
    return check_image_shape(
        [int(s) for s in spec["data_shape"]],
        f"model kind {kind!r}",
        "Use an image dataset (e.g. --data fashion-mnist) or the fully connected flow "
        "(--model fc).",
    )


def _gradient(spec: ModelSpec, kind: str, supported: tuple[str, ...]) -> str:
    mode = option(spec, "gradient", "selfnorm")
    if mode not in supported:
        raise ValueError(
            f"model kind {kind!r} supports --gradient {' / '.join(supported)}, not {mode!r}; "
            f"pass --gradient {supported[-1]} (or --gradient exact for the O(D³) baseline)."
        )
    return mode


def build_cnn(spec: ModelSpec) -> nn.Module:
    """The ``cnn`` kind: :class:`~jacfree.flows.CNNFlow` from a spec (see the module docs)."""
    shape = _image_shape(spec, "cnn")
    gradient = _gradient(spec, "cnn", SelfNormConv2d.supported_gradients)
    layers, blocks = option(spec, "layers", 9, int), option(spec, "blocks", 3, int)
    if blocks < 1 or layers < blocks or layers % blocks:
        raise ValueError(
            f"model kind 'cnn' spreads --layers (convolutions in all) evenly over "
            f"blocks={blocks}; got layers={layers}. Use a multiple of the number of blocks "
            "(e.g. --layers 9 with --set blocks=3)."
        )
    return CNNFlow(
        shape,
        blocks=blocks,
        layers_per_block=layers // blocks,
        gradient=gradient,
        kernel_size=option(spec, "kernel_size", 3, int),
        activation=option(spec, "activation", "spline"),
        alpha=option(spec, "alpha", 0.3, float),
        spline_params=option(spec, "spline_params", "element"),
        spline_bins=option(spec, "spline_bins", 5, int),
        spline_bound=option(spec, "spline_bound", 10.0, float),
        preprocess=preprocess_layers(spec),
        recon_weight=option(spec, "recon_weight", 1.0, float),
        **context_options(spec),
    )


def build_glow(spec: ModelSpec) -> nn.Module:
    """The ``glow`` kind: :class:`~jacfree.flows.GlowFlow` from a spec (see the module docs)."""
    shape = _image_shape(spec, "glow")
    conv_kernel = option(spec, "conv_kernel", 1, int)
    supported = ("exact", "relative", "selfnorm") if conv_kernel == 1 else ("exact", "selfnorm")
    gradient = _gradient(spec, "glow", supported)
    return GlowFlow(
        shape,
        blocks=option(spec, "blocks", 2, int),
        steps=option(spec, "layers", 8, int),
        hidden=option(spec, "hidden", 64, int),
        gradient=gradient,
        conv_kernel=conv_kernel,
        coupling_kernel=option(spec, "coupling_kernel", 3, int),
        split=option(spec, "split", True, bool),
        swap=option(spec, "swap", False, bool),
        preprocess=preprocess_layers(spec),
        recon_weight=option(spec, "recon_weight", 100.0, float),
        **context_options(spec),
    )


register_model(
    "cnn",
    ModelKind(
        build_cnn,
        "9-layer convolutional SNF of Keller et al. (--layers SNF 3x3 convolutions in 3 "
        "blocks, spline activations, squeezes; --gradient selfnorm or exact)",
        options={
            **FLOW_OPTIONS,
            "layers": int,
            "blocks": int,
            "activation": ("spline", "slr"),
            "alpha": float,
            "spline_params": ("element", "channel", "shared"),
            "spline_bins": int,
            "spline_bound": float,
            "kernel_size": int,
        },
    ),
)
register_model(
    "glow",
    ModelKind(
        build_glow,
        "Glow-like flow (2 blocks x --layers steps of ActNorm, 1x1 conv, affine coupling of "
        "width --hidden; split prior; --gradient selfnorm, exact or relative)",
        options={
            **FLOW_OPTIONS,
            "layers": int,
            "blocks": int,
            "hidden": int,
            "conv_kernel": int,
            "coupling_kernel": int,
            "split": bool,
            "swap": bool,
        },
    ),
)

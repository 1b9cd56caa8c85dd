"""Invertible layers and flows (data → latent)."""

from .activations import (
    SmoothLeakyReLU,
    smooth_leaky_relu,
    smooth_leaky_relu_inverse,
    smooth_leaky_relu_log_derivative,
)
from .actnorm import ActNorm, initialize_actnorm
from .cnn import CNNFlow
from .conditional import ContextAffine, ContextEncoder
from .conv import Conv1x1, SelfNormConv2d
from .core import (
    GRADIENT_MODES,
    Flow,
    FlowLayer,
    ParameterStateCache,
    StandardNormal,
    invalidate_caches,
)
from .coupling import AffineCoupling, ZeroConv2d
from .distribution import FlowDistribution
from .fc import FCFlow
from .glow_model import GlowFlow
from .linear import SquareAffine
from .multiscale import SplitPrior
from .preprocess import Dequantize, LogitTransform
from .relative import relative_affine
from .spline import RQSplineActivation, rational_quadratic_spline, spline_knots
from .squeeze import Squeeze, Unsqueeze

__all__ = [
    "GRADIENT_MODES",
    "ActNorm",
    "AffineCoupling",
    "CNNFlow",
    "ContextAffine",
    "ContextEncoder",
    "Conv1x1",
    "Dequantize",
    "FCFlow",
    "Flow",
    "FlowDistribution",
    "FlowLayer",
    "GlowFlow",
    "LogitTransform",
    "ParameterStateCache",
    "RQSplineActivation",
    "SelfNormConv2d",
    "SmoothLeakyReLU",
    "SplitPrior",
    "SquareAffine",
    "Squeeze",
    "StandardNormal",
    "Unsqueeze",
    "ZeroConv2d",
    "initialize_actnorm",
    "invalidate_caches",
    "rational_quadratic_spline",
    "relative_affine",
    "smooth_leaky_relu",
    "smooth_leaky_relu_inverse",
    "smooth_leaky_relu_log_derivative",
    "spline_knots",
]

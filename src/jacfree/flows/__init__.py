"""Invertible layers and flows (data → latent)."""

from .activations import (
    SmoothLeakyReLU,
    smooth_leaky_relu,
    smooth_leaky_relu_inverse,
    smooth_leaky_relu_log_derivative,
)
from .core import GRADIENT_MODES, Flow, FlowLayer, ParameterStateCache, StandardNormal
from .fc import FCFlow
from .linear import SquareAffine
from .preprocess import Dequantize, LogitTransform
from .relative import relative_affine

__all__ = [
    "GRADIENT_MODES",
    "Dequantize",
    "FCFlow",
    "Flow",
    "FlowLayer",
    "LogitTransform",
    "ParameterStateCache",
    "SmoothLeakyReLU",
    "SquareAffine",
    "StandardNormal",
    "relative_affine",
    "smooth_leaky_relu",
    "smooth_leaky_relu_inverse",
    "smooth_leaky_relu_log_derivative",
]

"""jacfree: train deep density models without paying for their Jacobian terms.

* relative gradients for fully connected flows (Gresele et al., NeurIPS 2020);
* self-normalizing flows (Keller et al., ICML 2021);
* finite-difference score matching (Pang et al., NeurIPS 2020).
"""

__version__ = "0.1.0"

from . import data, latent, train
from .estimate import Estimate
from .flows import (
    GRADIENT_MODES,
    ActNorm,
    AffineCoupling,
    CNNFlow,
    ContextEncoder,
    Conv1x1,
    Dequantize,
    FCFlow,
    Flow,
    FlowDistribution,
    FlowLayer,
    GlowFlow,
    LogitTransform,
    RQSplineActivation,
    SelfNormConv2d,
    SmoothLeakyReLU,
    SplitPrior,
    SquareAffine,
    Squeeze,
    StandardNormal,
    Unsqueeze,
)
from .kinds import Evaluation, evaluate
from .scorematching import DKEF as DKEF
from .scorematching import NCSN as NCSN
from .scorematching import NICE as NICE
from .scorematching import MLPEnergy as MLPEnergy
from .scorematching import ResEBM as ResEBM
from .scorematching import fd
from .scorematching import losses as sm
from .train import evaluate_nll, fit

__all__ = [
    "DKEF",
    "GRADIENT_MODES",
    "NCSN",
    "NICE",
    "ActNorm",
    "AffineCoupling",
    "CNNFlow",
    "ContextEncoder",
    "Conv1x1",
    "Dequantize",
    "Estimate",
    "Evaluation",
    "FCFlow",
    "Flow",
    "FlowDistribution",
    "FlowLayer",
    "GlowFlow",
    "LogitTransform",
    "MLPEnergy",
    "RQSplineActivation",
    "ResEBM",
    "SelfNormConv2d",
    "SmoothLeakyReLU",
    "SplitPrior",
    "SquareAffine",
    "Squeeze",
    "StandardNormal",
    "Unsqueeze",
    "__version__",
    "data",
    "evaluate",
    "evaluate_nll",
    "fd",
    "fit",
    "latent",
    "sm",
    "train",
]

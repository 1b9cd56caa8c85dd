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

__all__ = [  # noqa: RUF022 (grouped by theme, not sorted)
    "__version__",
    # flows (data -> latent) with the three gradient modes, as torch distributions
    "GRADIENT_MODES",
    "Flow",
    "FCFlow",
    "CNNFlow",
    "GlowFlow",
    "FlowDistribution",
    "StandardNormal",
    "ContextEncoder",
    # their layers: the base class, invertible linear maps, nonlinearities, couplings
    "FlowLayer",
    "SquareAffine",
    "Conv1x1",
    "SelfNormConv2d",
    "SmoothLeakyReLU",
    "RQSplineActivation",
    "ActNorm",
    "AffineCoupling",
    # multiscale plumbing and the preprocessing of quantised data
    "Squeeze",
    "Unsqueeze",
    "SplitPrior",
    "Dequantize",
    "LogitTransform",
    # score-matching models, estimators and finite differences
    "MLPEnergy",
    "NICE",
    "DKEF",
    "NCSN",
    "ResEBM",
    "sm",
    "fd",
    # training and evaluation
    "fit",
    "train",
    "evaluate",
    "evaluate_nll",
    "Evaluation",
    "Estimate",
    # packages: datasets and latent-variable models
    "data",
    "latent",
]

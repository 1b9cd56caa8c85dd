"""jacfree: train deep density models without paying for their Jacobian terms.

* relative gradients for fully connected flows (Gresele et al., NeurIPS 2020);
* self-normalizing flows (Keller et al., ICML 2021);
* finite-difference score matching (Pang et al., NeurIPS 2020).
"""

__version__ = "0.1.0"

from . import data, flows, train
from .flows import *  # noqa: F403 (the layers, the flow models and the Flow container)
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
    "NCSN",
    "NICE",
    "MLPEnergy",
    "ResEBM",
    "__version__",
    "data",
    "evaluate_nll",
    "fd",
    "fit",
    "sm",
    "train",
]
__all__ += flows.__all__

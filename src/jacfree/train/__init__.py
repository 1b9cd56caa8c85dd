"""Training: the ``fit`` loop, checkpoints, exact evaluation and optimisers."""

from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluate import NLL, bits_per_dim, evaluate_nll, per_example_nll
from .fit import Callback, FitResult, fit
from .geco import GECO, ReconstructionWatch
from .monitor import TrainNLL
from .optim import make_adam
from .relative_adam import RelativeAdam, default_optimizer, make_optimizer

__all__ = [
    "GECO",
    "NLL",
    "Callback",
    "CheckpointError",
    "FitResult",
    "ReconstructionWatch",
    "RelativeAdam",
    "TrainNLL",
    "bits_per_dim",
    "default_optimizer",
    "distributed",
    "evaluate_nll",
    "fit",
    "load_checkpoint",
    "make_adam",
    "make_optimizer",
    "per_example_nll",
    "save_checkpoint",
]

"""Training: the ``fit`` loop, checkpoints, metrics and optimisers."""

from .optim import make_adam

__all__ = ["make_adam"]

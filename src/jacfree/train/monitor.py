"""A training-set counterpart of the validation NLL, for the loss curves.

The relative-gradient and self-normalizing training losses are **not** the negative
log-likelihood: they leave out Σ log|det W| (and the selfnorm loss adds λ times the
reconstruction error), so their curve cannot be set beside the exact validation NLL.
:class:`TrainNLL` evaluates the exact NLL (``model.log_prob``, as the validation does) on a fixed
subset of the training data after every epoch, as ``train_nll`` in the metrics.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .evaluate import evaluate_nll


class TrainNLL:
    """Adds ``train_nll``, the exact NLL (nats per example) of ``n`` training rows, to every
    epoch's metrics (a :class:`~jacfree.train.fit.Callback`).

    Args:
        train: the training data; rows spread evenly over it are used.
        n: how many rows (cost: one evaluation of that many rows per epoch).
    """

    def __init__(self, train: Tensor | tuple[Tensor, Tensor], n: int = 1000) -> None:
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}.")
        rows = train[0] if isinstance(train, tuple) else train
        step = max(1, len(rows) // n)
        if isinstance(train, tuple):  # (x, context) pairs of a conditional flow
            self.data: Tensor | tuple[Tensor, Tensor] = tuple(t[::step][:n] for t in train)
        else:
            self.data = train[::step][:n]

    def on_step(self, model: nn.Module, loss: Tensor, diagnostics: dict[str, Tensor]) -> None:
        return None

    def on_epoch_end(self, model: nn.Module, row: dict[str, Any]) -> None:
        row["train_nll"] = evaluate_nll(model, self.data).mean

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

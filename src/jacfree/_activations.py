"""Smooth activations by name: the one table behind every model's ``activation=`` option.

Score matching differentiates a model twice in ``x`` (the Hessian trace ``tr ∇²ₓ log p̃``), and its
finite-difference forms assume a smooth ``log p̃``, so the activations must be C². Piecewise
linear ones (ReLU and the like) have a zero Hessian almost everywhere, so score matching sees no
curvature: they are refused with that reason. ``"nsoftplus"`` is the "normalised softplus"
``softplus(x) − log 2`` (zero at zero) of the deep EBMs of Pang et al. (2020).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ACTIVATIONS", "Activation", "activation"]


def _nsoftplus(x: Tensor) -> Tensor:
    return F.softplus(x) - math.log(2.0)


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "softplus": F.softplus,
    "nsoftplus": _nsoftplus,  # softplus(x) − log 2 (zero at zero), the deep EBMs' choice
    "elu": F.elu,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "tanh": torch.tanh,
}
_NOT_SMOOTH = ("relu", "leaky_relu", "relu6", "hardtanh", "hardswish")


def activation(name: str) -> Callable[[Tensor], Tensor]:
    """The smooth activation function called ``name`` (see :data:`ACTIVATIONS`)."""
    if name in _NOT_SMOOTH:
        raise ValueError(
            f"activation {name!r} is piecewise linear: its second derivative is zero almost "
            "everywhere, so score matching (which needs tr ∇²ₓ log p̃) sees no curvature. Use a "
            f"smooth one: {', '.join(map(repr, ACTIVATIONS))}."
        )
    if name not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {', '.join(map(repr, ACTIVATIONS))}."
        )
    return ACTIVATIONS[name]


class Activation(nn.Module):
    """The smooth activation called ``name`` as a module (no parameters)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.fn = activation(name)

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name

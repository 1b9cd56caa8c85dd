r"""An MLP energy ``E(x) -> (B,)`` with smooth activations, for score matching.

Score matching differentiates the model twice in ``x`` (the Hessian trace ``tr ∇²ₓ log p̃``), and
its finite-difference forms assume a smooth ``log p̃``: the activations must be ``C²``. ReLU is
piecewise linear, so its Hessian is zero almost everywhere and score matching sees no curvature
(Pang et al. 2020 use ELU and a "normalised softplus", ``softplus(x) − log 2``, for their deep
EBMs); it is refused here.

The model is

.. math::

    E(x) = \mathrm{MLP}(\mathrm{flatten}(x)) + \frac{\|x\|^2}{2 s^2}\quad(\text{optional}),

with log p̃ = −E (:mod:`jacfree.scorematching.convention`). The optional quadratic term with scale
``s`` (``base_std``) makes ``exp(−E)`` integrable whatever the MLP does in the tails — an MLP with
softplus/ELU units grows at most linearly — so the density can be normalised (on a grid in 2-D).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._activations import ACTIVATIONS, Activation, activation
from .._checks import check_positive, check_positive_int, check_samples
from .sampling import LangevinSampled

__all__ = ["ACTIVATIONS", "MLPEnergy", "activation"]


class MLPEnergy(LangevinSampled, nn.Module):
    r"""Energy ``E(x) = MLP(flatten(x)) [+ ‖x‖²/(2 s²)]``, shape ``(B,)``; ``log p̃ = −E``.

    Args:
        shape: the event shape of one sample (``2`` or ``(2,)`` for 2-D points, ``(1, 28, 28)``
            for images); the input is flattened to ``d = prod(shape)`` features.
        hidden: widths of the hidden layers (e.g. ``(1000, 1000)`` for the MNIST energy of the
            FD-SM paper's timing study; ``(128, 128, 128)`` for a 2-D toy).
        activation: a smooth activation: ``"softplus"`` (default), ``"nsoftplus"``
            (softplus − log 2), ``"elu"``, ``"silu"``/``"swish"``, ``"gelu"`` or ``"tanh"``.
        base_std: scale ``s`` of the optional quadratic term that makes ``exp(−E)`` integrable
            (``None``: no such term).

    No batch-coupled layer is used, so the finite-difference estimators may evaluate ``x``,
    ``x + v`` and ``x − v`` in one concatenated batch.

    Example:
        >>> import torch, jacfree as jf
        >>> energy = jf.MLPEnergy(2, hidden=(64, 64), base_std=3.0)
        >>> x = torch.randn(128, 2)
        >>> jf.sm.fd_ssm(energy, x, eps=0.1).backward()   # no gradient of a gradient
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        hidden: Sequence[int] = (256, 256),
        activation: str = "softplus",
        *,
        base_std: float | None = None,
    ) -> None:
        super().__init__()
        event = (shape,) if isinstance(shape, int) else tuple(shape)
        for s in event:
            check_positive_int(s, "shape entry")
        hidden = (hidden,) if isinstance(hidden, int) else tuple(hidden)
        if not hidden:
            raise ValueError("hidden must list at least one hidden-layer width, e.g. (256, 256).")
        for h in hidden:
            check_positive_int(h, "hidden width")
        if base_std is not None:
            check_positive(base_std, "base_std", "or None")
        self.event_shape = event
        self.dim = math.prod(event)
        self.hidden = hidden
        self.activation = activation
        self.base_std = base_std
        layers: list[nn.Module] = []
        width = self.dim
        for h in hidden:
            layers += [nn.Linear(width, h), Activation(activation)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def extra_repr(self) -> str:
        return f"shape={self.event_shape}, base_std={self.base_std}"

    def forward(self, x: Tensor) -> Tensor:
        """Energies ``E(x)``, shape ``(B,)`` (shapes are checked; values are not: the call is on
        the training step's path, which reads nothing on the host)."""
        check_samples(x, self.event_shape, finite=False)
        flat = x.flatten(1)
        e = self.net(flat).squeeze(-1)
        if self.base_std is not None:
            e = e + flat.square().sum(-1) / (2 * self.base_std**2)
        return e

    def energy(self, x: Tensor) -> Tensor:
        """Same as calling the module: ``E(x)``, shape ``(B,)``."""
        return self(x)

    def _langevin_start(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Langevin starts for :meth:`sample`: ``N(0, s²I)`` (``s = base_std``, else 1) on the
        model's device and dtype."""
        ref = next(self.parameters()).detach()
        scale = self.base_std if self.base_std is not None else 1.0
        return scale * torch.randn(
            (n, *self.event_shape), dtype=ref.dtype, device=ref.device, generator=generator
        )

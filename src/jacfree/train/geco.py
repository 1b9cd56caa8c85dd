r"""Callbacks for self-normalizing flows: GECO for the reconstruction weight λ, and a watch that
warns when the reconstruction error drifts.

**GECO** (Rezende & Viola 2018, "Taming VAEs"; used by Keller et al. 2021, ICML Table A.5) treats
the reconstruction error as a constraint ``C ≤ κ`` and λ as its Lagrange multiplier, updated
multiplicatively after every step from an exponential moving average of the constraint:

.. math::

    \bar C_t = α \bar C_{t-1} + (1 - α) C_t ,\qquad
    λ_{t+1} = \mathrm{clip}\big(λ_t \exp(η (\bar C_t - κ)),\ λ_{\min},\ λ_{\max}\big).

The reference code subtracts no tolerance κ, and since C ≥ 0 its λ can only grow; with κ > 0,
λ falls while the constraint is met and rises while it is violated.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive
from ..flows.core import Flow


def _recon_buffers(model: nn.Module) -> list[Tensor]:
    """The ``recon_weight`` (λ) buffers of the model's self-normalizing layers."""
    layers = model.gradient_layers() if isinstance(model, Flow) else []
    found = [lam for m in layers if (lam := m.reconstruction_weight()) is not None]
    if not found:
        _flow_recon_weight(model)  # raises the clear error
        raise ValueError("GECO found no recon_weight buffer in the model.")
    return found


def _flow_recon_weight(model: nn.Module) -> float:
    value = getattr(model, "recon_weight", None)
    if value is None:
        raise ValueError(
            "GECO needs a model with self-normalizing layers (recon_weight is None); build the "
            "flow with gradient='selfnorm'."
        )
    return float(value)


class GECO:
    """Adapt λ (``model.set_recon_weight``) to keep the reconstruction error near ``target``.

    Args:
        target: κ, the tolerated reconstruction error (the ``recon`` diagnostic: Σ over
            self-normalizing layers of the batch-mean ‖R W h − h‖²).
        lr: η, the step of log λ per unit of constraint violation (reference: 1e-3).
        ema: α of the moving average of the constraint (reference: 0.9).
        min_weight, max_weight: bounds of λ.
    """

    def __init__(
        self,
        target: float,
        lr: float = 1e-3,
        ema: float = 0.9,
        min_weight: float = 1e-3,
        max_weight: float = 1e4,
    ) -> None:
        if not target >= 0:
            raise ValueError(f"target (κ) must be >= 0, got {target}.")
        if not 0 <= ema < 1:
            raise ValueError(f"ema must lie in [0, 1), got {ema}.")
        if not 0 < min_weight <= max_weight:
            raise ValueError(f"need 0 < min_weight <= max_weight, got {min_weight}, {max_weight}.")
        self.target, self.lr, self.ema = float(target), float(lr), float(ema)
        self.min_weight, self.max_weight = float(min_weight), float(max_weight)
        self.average: Tensor | None = None

    def on_step(self, model: nn.Module, loss: Tensor, diagnostics: dict[str, Tensor]) -> None:
        """One GECO update of λ, with tensor operations on the device (no host read): the
        moving average is a tensor and λ is written into the layers' ``recon_weight`` buffers."""
        if "recon" not in diagnostics:
            raise ValueError(
                "GECO found no reconstruction error in the model's training diagnostics; it "
                "needs a flow with layers in the selfnorm gradient mode."
            )
        buffers = _recon_buffers(model)
        c = diagnostics["recon"].detach().to(buffers[0].device, torch.float64)
        if self.average is None:
            self.average = c
        else:
            self.average = self.ema * self.average.to(c) + (1 - self.ema) * c
        lam = torch.stack([b.detach().double() for b in buffers]).max()
        log_lam = (lam.log() + self.lr * (self.average - self.target)).clamp(
            math.log(self.min_weight), math.log(self.max_weight)
        )
        new = log_lam.exp()
        for b in buffers:
            b.copy_(new)

    def on_epoch_end(self, model: nn.Module, row: dict[str, Any]) -> None:
        row["recon_weight"] = _flow_recon_weight(model)

    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        average = state["average"]
        self.average = None if average is None else torch.as_tensor(average, dtype=torch.float64)


class ReconstructionWatch:
    """Warn when an epoch's mean relative reconstruction error exceeds ``threshold``.

    The watched value is ``train_recon_rel``: the largest per-layer ratio of ‖R W h − h‖² to ‖h‖²
    (batch means), so one threshold fits data of any scale.

    A large error means R is no longer close to W⁻¹: the self-normalizing gradient is then far
    from the exact one and samples through R drift from exact samples. The usual fixes are a
    larger λ (``recon_weight``), a smaller learning rate, gradient clipping, or :class:`GECO`.
    Warns once per excursion (again only after the error came back below the threshold).
    """

    def __init__(self, threshold: float) -> None:
        self.threshold = check_positive(threshold, "threshold", "the reconstruction target")
        self.above = False

    def on_step(self, model: nn.Module, loss: Tensor, diagnostics: dict[str, Tensor]) -> None:
        return None

    def on_epoch_end(self, model: nn.Module, row: dict[str, Any]) -> None:
        recon = row.get("train_recon_rel")
        if recon is None:
            return
        if recon > self.threshold and not self.above:
            warnings.warn(
                f"epoch {row.get('epoch')}: the relative reconstruction error ‖RWh − h‖²/‖h‖² "
                f"of a self-normalizing layer is {recon:.3g}, above {self.threshold:g}; R is "
                "drifting from W⁻¹. "
                "Raise recon_weight (λ), lower the learning rate, clip gradients, or use GECO.",
                RuntimeWarning,
                stacklevel=2,
            )
        self.above = recon > self.threshold

    def state_dict(self) -> dict[str, Any]:
        return {"above": self.above}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.above = bool(state["above"])

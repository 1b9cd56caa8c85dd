"""Pre-processing as flow layers, with every log-det counted.

Putting the pre-processing inside the flow makes ``flow.log_prob(x)`` a log-density of the data on
its *original* scale: for discrete data with ``levels`` values per dimension (256 for 8-bit
images, 17 for sklearn's digits) that is the dequantised density on [0, levels)^D, so
bits/dim = −log p(x) / (D ln 2) matches the literature's definition (Keller et al. 2021).
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

from .. import sample_noise
from .._checks import values_visible
from .core import FlowLayer


def _is_finite_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)


def _check_range(x: Tensor, upper: float, layer: str) -> None:
    if not values_visible(x):
        return
    lo, hi = float(x.detach().min()), float(x.detach().max())
    if lo < 0 or hi > upper:
        raise ValueError(
            f"{layer} expects values in [0, {upper:g}], got values in [{lo:g}, {hi:g}]; the data "
            "is not on the scale the model was built for (for example pixels already divided by "
            "255 where raw 0..255 values are expected): rescale it or build the model with the "
            "matching `levels`."
        )


class Dequantize(FlowLayer):
    """Uniform dequantisation: x ↦ x + u, u ~ U[0, 1)^D, for integer data in {0, …, levels−1}.

    The log-likelihood of the dequantised variable is a lower bound on the discrete
    log-probability (Theis et al. 2016); its log-det is 0. The inverse floors and clips back
    to {0, …, levels−1}. A fresh u is drawn on every call, in training and in evaluation.

    In :func:`jacfree.fit` the noise of a sample is a function of the seed, the epoch and the
    sample's index in the training set (:mod:`jacfree.sample_noise`), so data-parallel training
    draws the same noise as one process; elsewhere it comes from torch's global generator.
    """

    def __init__(self, levels: int) -> None:
        super().__init__()
        if not (_is_finite_real(levels) and levels >= 1 and levels == int(levels)):
            raise ValueError(
                f"levels must be a whole number >= 1 (the number of discrete values per "
                f"dimension, e.g. 256 for 8-bit images), got {levels!r}."
            )
        self.levels = int(levels)

    def extra_repr(self) -> str:
        return f"levels={self.levels}"

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error unless every value of ``x`` lies in [0, levels − 1] (a host read)."""
        _check_range(x, self.levels - 1, "Dequantize")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.training_forward(x)

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The map without the range check (training data is checked once, where it enters)."""
        return x + sample_noise.rand_like(x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z.floor().clamp(0, self.levels - 1)


class LogitTransform(FlowLayer):
    """Logit transform of data on [0, levels): y = logit(α + (1−2α)·x/levels).

    Log-det per dimension: log(1−2α) − log(levels) − log p − log(1−p) with p = α + (1−2α)x/levels;
    α keeps the logit finite at the edges (α = 1e-6 as in Keller et al. 2021).
    """

    def __init__(self, levels: float, alpha: float = 1e-6) -> None:
        super().__init__()
        if not 0 <= alpha < 0.5:
            raise ValueError(f"alpha must lie in [0, 0.5), got {alpha}.")
        if not (_is_finite_real(levels) and levels > 0):
            raise ValueError(
                f"levels must be a finite number > 0 (the upper end of the data range [0, levels]"
                f", e.g. 256 for raw 8-bit pixels or 1.0 for pixels in [0, 1]), got {levels!r}."
            )
        self.levels = float(levels)
        self.alpha = float(alpha)

    def extra_repr(self) -> str:
        return f"levels={self.levels:g}, alpha={self.alpha:g}"

    def check_input(self, x: Tensor) -> None:
        """Raise a clear error unless every value of ``x`` lies in [0, levels] (a host read)."""
        _check_range(x, self.levels, "LogitTransform")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x)
        return self.training_forward(x)

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The map without the range check (training data is checked once, where it enters)."""
        a = self.alpha
        p = a + (1 - 2 * a) * x / self.levels
        y = torch.log(p) - torch.log1p(-p)
        const = math.log(1 - 2 * a) - math.log(self.levels)
        logdet = (const - torch.log(p) - torch.log1p(-p)).flatten(1).sum(1)
        return y, logdet

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha) * self.levels

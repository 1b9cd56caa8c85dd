r"""Monotone rational-quadratic spline activation with identity tails (Durkan et al. 2019).

Durkan, Bekasov, Murray & Papamakarios, "Neural Spline Flows", NeurIPS 2019, §3.1 and App. A;
used as the elementwise activation between the SNF convolutions of Keller et al. (2021)
(5 bins, tails at ±10).

On ``[−B, B]`` the map is a monotone rational-quadratic spline through K+1 knots
``(x_k, y_k)`` with ``x_0 = y_0 = −B``, ``x_K = y_K = B`` and positive derivatives ``d_k`` at the
knots (``d_0 = d_K = 1``); outside it is the identity, so the map and its derivative are
continuous everywhere. In bin k, with ``w_k = x_{k+1} − x_k``, ``h_k = y_{k+1} − y_k``,
``s_k = h_k / w_k`` and ``ξ = (x − x_k)/w_k ∈ [0, 1]``:

.. math::
    g(x) = y_k + \frac{h_k\,[s_k ξ^2 + d_k ξ(1-ξ)]}{s_k + (d_{k+1} + d_k - 2 s_k)\,ξ(1-ξ)},

    g'(x) = \frac{s_k^2\,[d_{k+1} ξ^2 + 2 s_k ξ(1-ξ) + d_k (1-ξ)^2]}
                 {[s_k + (d_{k+1} + d_k - 2 s_k)\,ξ(1-ξ)]^2} .

The inverse solves the quadratic ``a ξ² + b ξ + c = 0`` for ``y`` in bin k, with
``δ = y − y_k``, ``c₂ = d_{k+1} + d_k − 2 s_k``:

.. math::
    a = h_k (s_k - d_k) + δ c_2,\quad b = h_k d_k - δ c_2,\quad c = -s_k δ,\qquad
    ξ = \frac{2c}{-b - \sqrt{b^2 - 4ac}},

the root in [0, 1], in the form that does not cancel (Durkan et al., App. A). Its
denominator never vanishes: ``a + b = h_k s_k > 0`` and ``c ≤ 0``.

Parameterisation (unconstrained → spline): widths and heights are ``softmax`` of the raw parameters,
mixed with a minimum share ``min_bin`` per bin; interior derivatives are
``min_derivative + (1 − min_derivative)·softplus(raw)/log 2``, which is exactly 1 at ``raw = 0``:
with every raw parameter zero the spline is the identity, in any dtype, and
:class:`RQSplineActivation` starts there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int
from .core import FlowLayer

__all__ = ["RQSplineActivation", "rational_quadratic_spline", "spline_knots"]


def spline_knots(
    raw_widths: Tensor,
    raw_heights: Tensor,
    raw_derivatives: Tensor,
    bound: float,
    min_bin: float = 1e-3,
    min_derivative: float = 1e-3,
) -> tuple[Tensor, Tensor, Tensor]:
    """Knots ``(x_k)``, ``(y_k)`` (shape ``(..., K+1)``) and derivatives ``(d_k)`` (``(..., K+1)``).

    ``raw_widths``/``raw_heights`` have shape ``(..., K)``, ``raw_derivatives`` ``(..., K−1)``
    (the interior knots; the end derivatives are 1 to match the identity tails).
    """
    k = raw_widths.shape[-1]

    def knots(raw: Tensor) -> Tensor:
        share = min_bin + (1 - min_bin * k) * torch.softmax(raw, dim=-1)
        cum = F.pad(torch.cumsum(share, dim=-1), (1, 0))
        pos = 2 * bound * cum - bound
        # exact ends (the cumulative sum may miss 1 by a rounding error)
        return torch.cat([torch.full_like(pos[..., :1], -bound), pos[..., 1:-1],
                          torch.full_like(pos[..., :1], bound)], dim=-1)  # fmt: skip

    inner = min_derivative + (1 - min_derivative) / math.log(2) * F.softplus(raw_derivatives)
    one = torch.ones_like(raw_widths[..., :1])
    return knots(raw_widths), knots(raw_heights), torch.cat([one, inner, one], dim=-1)


def rational_quadratic_spline(
    x: Tensor, xk: Tensor, yk: Tensor, dk: Tensor, *, inverse: bool = False
) -> tuple[Tensor, Tensor]:
    """Elementwise RQ spline with identity tails: ``(y, log g'(x))``, or its inverse.

    Args:
        x: input, any shape ``S``; its values outside ``[xk[0], xk[-1]]`` (``[yk[0], yk[-1]]``
            for the inverse) pass unchanged. The spline domain must be ``[−B, B]`` on both axes
            with end derivatives 1 (as :func:`spline_knots` makes them) for the tails to join.
        xk, yk, dk: knots and knot derivatives, shape ``(*G, K+1)`` with the parameter grid
            ``G`` of the same rank as ``S`` and broadcastable against it (e.g.
            ``(1, C, 1, 1, K+1)`` for per-channel splines on ``(B, C, H, W)``).
        inverse: return ``(g⁻¹(x), log g'(g⁻¹(x)))`` — note the sign: the log-derivative of the
            *forward* map at the result, so ``inverse`` log-det = −that.

    Returns:
        ``(out, log_derivative)``, both of shape ``S``.
    """
    knots = yk if inverse else xk
    inside = (x >= knots[..., 0]) & (x <= knots[..., -1])
    # outside points go through the spline at 0 (discarded): keeps that branch finite, and
    # inside points keep their exact gradient (clamp/maximum halve it at x = ±B)
    v = torch.where(inside, x, torch.zeros_like(x))
    idx = (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1)  # bin of each element, in [0, K)
    # one gather of every per-bin quantity: a table of (parameter grid × bins) rows
    grid, bins = xk.shape[:-1], xk.shape[-1] - 1
    w, h = xk.diff(dim=-1), yk.diff(dim=-1)
    s = h / w
    d0, d1 = dk[..., :-1], dk[..., 1:]
    table = torch.stack([xk[..., :-1], w, yk[..., :-1], h, d0, d1, s, d1 + d0 - 2 * s], dim=-1)
    row = torch.arange(grid.numel(), device=x.device).view(grid) * bins + idx
    x0, w, y0, h, d0, d1, s, c2 = table.reshape(-1, 8)[row].unbind(-1)
    if inverse:
        delta = v - y0
        a = h * (s - d0) + delta * c2
        b = h * d0 - delta * c2
        c = -s * delta
        disc = (b.square() - 4 * a * c).clamp_min(0.0)
        xi = (2 * c) / (-b - disc.sqrt())
    else:
        xi = (v - x0) / w
    xi_c = 1 - xi
    t = xi * xi_c
    den = s + c2 * t
    out = x0 + xi * w if inverse else y0 + h * (s * xi.square() + d0 * t) / den
    num = d1 * xi.square() + 2 * s * t + d0 * xi_c.square()
    log_der = torch.log(s.square() * num / den.square())
    return torch.where(inside, out, x), torch.where(inside, log_der, torch.zeros_like(log_der))


class RQSplineActivation(FlowLayer):
    """Elementwise monotone rational-quadratic spline, identity outside ``[−bound, bound]``.

    Args:
        shape: shape of the parameter grid, a prefix of the event shape: an int ``C`` (or
            ``(C,)``) for one spline per channel of ``(B, C, H, W)`` or per feature of ``(B, C)``;
            ``(C, H, W)`` for one per pixel (the reference code's ``individual_weights``); ``()``
            for one spline shared by every element (the reference code's default).
        bins: K, the number of bins (Keller et al.: 5).
        bound: B, the spline acts on ``[−B, B]`` (Keller et al.: 10).
        min_bin: minimum width/height share of a bin (stability), ``< 1/K``.
        min_derivative: minimum knot derivative.

    Parameters ``raw_widths``, ``raw_heights`` (``(*shape, K)``) and ``raw_derivatives``
    (``(*shape, K−1)``) start at zero: the identity spline. log-det: Σ over elements of
    log g'(x); the inverse is analytic (quadratic root), see the module docstring.
    """

    def __init__(
        self,
        shape: int | Sequence[int],
        bins: int = 5,
        bound: float = 10.0,
        *,
        min_bin: float = 1e-3,
        min_derivative: float = 1e-3,
    ) -> None:
        super().__init__()
        self.param_shape = (shape,) if isinstance(shape, int) else tuple(int(s) for s in shape)
        for s in self.param_shape:
            check_positive_int(s, "shape entries")
        self.bins = check_positive_int(bins, "bins")
        if not (math.isfinite(bound) and bound > 0):
            raise ValueError(f"bound must be positive and finite, got {bound}.")
        if not 0 <= min_bin < 1 / bins:
            raise ValueError(f"min_bin must lie in [0, 1/bins) = [0, {1 / bins}), got {min_bin}.")
        if not 0 < min_derivative < 1:
            raise ValueError(f"min_derivative must lie in (0, 1), got {min_derivative}.")
        self.bound = float(bound)
        self.min_bin = float(min_bin)
        self.min_derivative = float(min_derivative)
        self.raw_widths = nn.Parameter(torch.zeros(*self.param_shape, bins))
        self.raw_heights = nn.Parameter(torch.zeros(*self.param_shape, bins))
        self.raw_derivatives = nn.Parameter(torch.zeros(*self.param_shape, bins - 1))

    def extra_repr(self) -> str:
        return f"shape={self.param_shape}, bins={self.bins}, bound={self.bound}"

    def knots(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Knots and derivatives, viewed to broadcast against ``x`` of shape ``(B, *event)``."""
        event = tuple(x.shape[1:])
        n = len(self.param_shape)
        if event[:n] != self.param_shape:
            raise ValueError(
                f"RQSplineActivation with parameter shape {self.param_shape} got input of shape "
                f"{tuple(x.shape)}; its per-sample shape must start with {self.param_shape}. "
                "Build it with shape=C (per channel), the full event shape (per element) or () "
                "(shared)."
            )
        xk, yk, dk = spline_knots(
            self.raw_widths,
            self.raw_heights,
            self.raw_derivatives,
            self.bound,
            self.min_bin,
            self.min_derivative,
        )
        view = (1, *self.param_shape, *([1] * (len(event) - n)), self.bins + 1)
        return xk.view(view), yk.view(view), dk.view(view)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y, log_der = rational_quadratic_spline(x, *self.knots(x))
        return y, log_der.flatten(1).sum(1)

    def inverse(self, z: Tensor) -> Tensor:
        x, _ = rational_quadratic_spline(z, *self.knots(z), inverse=True)
        return x

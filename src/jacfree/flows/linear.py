"""Square dense affine layer ``y = x Wᵀ + b`` (W ∈ R^{D×D}) with a switchable gradient mode.

Its log-det is log|det W| for every sample. How its *gradient* is obtained in training is the
layer's ``gradient`` mode:

* ``"exact"`` — autograd through ``torch.linalg.slogdet``: the O(D³) baseline;
* ``"relative"`` — the relative gradient of Gresele et al. (2020), O(B·D²), no inverse or
  determinant anywhere (:mod:`jacfree.flows.relative`);
* ``"selfnorm"`` — the self-normalizing rule of Keller et al. (2021): a learned approximate
  inverse ``R ≈ W⁻¹`` (``inverse_weight``) replaces W⁻ᵀ by Rᵀ, trained with a reconstruction
  penalty λ‖R W h − h‖² (:mod:`jacfree.flows.selfnorm`); O(B·D²), and sampling through R.

Exact evaluation (:meth:`SquareAffine.forward`, used by ``Flow.log_prob``) and the inverse share
one float64 LU factorisation of W, computed once per parameter state and cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_positive_int
from .core import FlowLayer, GradientModeMixin, ParameterStateCache
from .relative import relative_affine
from .selfnorm import SelfNormalizing, selfnorm_affine


class InvertibleMatrix:
    """A layer built on one square weight matrix ``weight`` (W, D×D).

    Provides what every such layer needs besides its own map: the float64 LU factorisation of W,
    computed once per parameter state and cached (:meth:`_lu64`); log|det W|
    (:meth:`matrix_logabsdet`); W⁻¹ applied to columns (:meth:`_solve`); and, on entering the
    selfnorm mode, the learned inverse ``inverse_weight`` R set to W⁻¹ and the λ buffer.
    Put it before :class:`GradientModeMixin` in the bases.
    """

    weight: nn.Parameter
    inverse_weight: nn.Parameter | None
    _cache: ParameterStateCache

    def set_gradient(self, mode: str) -> None:
        super().set_gradient(mode)  # type: ignore[misc]
        if mode == "selfnorm" and self.inverse_weight is None:
            with torch.no_grad():
                inv = torch.linalg.inv(self.weight.detach().double()).to(self.weight.dtype)
            # row-major like W: linalg.inv returns a column-major matrix, and an R in that layout
            # makes every SNF step pay transposed copies of D×D gradients (and a slower Adam)
            self.inverse_weight = nn.Parameter(inv.contiguous())
            self._init_selfnorm(self._pending_recon_weight)  # type: ignore[attr-defined]

    def _lu64(self) -> tuple[Tensor, Tensor]:
        def factor() -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                lu, pivots = torch.linalg.lu_factor(self.weight.detach().double())
            return lu, pivots

        return self._cache.get("lu", [self.weight], factor)  # type: ignore[return-value]

    def matrix_logabsdet(self) -> Tensor:
        """log|det W| (scalar, in W's dtype).

        Differentiable (float64 ``slogdet``) when a gradient for W is being recorded; otherwise read
        from the cached float64 LU factorisation.
        """
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.slogdet(w.double()).logabsdet.to(w.dtype)
        lu, _ = self._lu64()
        return lu.diagonal().abs().log().sum().to(w.dtype)

    def _solve(self, columns: Tensor) -> Tensor:
        """W⁻¹ · columns (D, N), float64, with the cached LU factorisation."""
        lu, pivots = self._lu64()
        return torch.linalg.lu_solve(lu, pivots, columns.double())


class SquareAffine(SelfNormalizing, InvertibleMatrix, GradientModeMixin, FlowLayer):
    """Invertible affine layer ``y = x Wᵀ + b`` (the ``nn.Linear`` convention).

    Args:
        features: D, the width of input and output.
        gradient: ``"exact"``, ``"relative"`` or ``"selfnorm"`` (switch later with
            :meth:`set_gradient`).
        paper_bias_rule: in relative mode, drop the ``−b`` of the bias rule as the reference code
            of Gresele et al. does. This moves the optimum away from the MLE; use it only to
            reproduce the paper.
        recon_weight: λ of the selfnorm mode's reconstruction penalty (Keller et al.: 1 for the
            fully connected MNIST model).

    W starts orthogonal (log|det W| = 0) and b at zero, as in Gresele et al. In selfnorm mode the
    layer also has ``inverse_weight`` R, set to W⁻¹ when the mode is entered (R = Wᵀ at
    initialisation), so the SNF gradient is exactly half the exact one at the first step, and the
    buffer ``recon_weight`` (λ). Entering selfnorm mode on a live model adds that parameter: build
    the optimizer afterwards.
    """

    supported_gradients = ("exact", "relative", "selfnorm")
    inverse_weight: nn.Parameter | None

    def __init__(
        self,
        features: int,
        gradient: str = "relative",
        *,
        paper_bias_rule: bool = False,
        recon_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.features = check_positive_int(features, "features")
        self.weight = nn.Parameter(torch.empty(features, features))
        self.bias = nn.Parameter(torch.zeros(features))
        nn.init.orthogonal_(self.weight)
        self.register_parameter("inverse_weight", None)
        self.paper_bias_rule = paper_bias_rule
        self._cache = ParameterStateCache()
        self.set_recon_weight(recon_weight)
        self.set_gradient(gradient)

    def extra_repr(self) -> str:
        return f"features={self.features}, gradient={self.gradient!r}"

    def logabsdet(self) -> Tensor:
        """log|det W| (scalar), the same for every sample; see :meth:`matrix_logabsdet`."""
        return self.matrix_logabsdet()

    # -- the layer protocol ------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = F.linear(x, self.weight, self.bias)
        return y, self.logabsdet().expand(x.shape[0])

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.gradient == "relative":
            return relative_affine(x, self.weight, self.bias, self.paper_bias_rule)
        if self.gradient == "selfnorm":
            z, term, recon = selfnorm_affine(
                x, self.weight, self.inverse_weight, self.bias, self.recon_weight
            )
            self._record_reconstruction(recon, x)
            return z, term
        # exact: autograd through slogdet in the parameters' own dtype (the O(D³) baseline)
        y = F.linear(x, self.weight, self.bias)
        return y, torch.linalg.slogdet(self.weight).logabsdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        """x = W⁻¹(z − b), solved in float64 with the cached LU factorisation."""
        return self._solve((z.double() - self.bias.detach().double()).t()).t().to(z.dtype)

    def reconstruction_error(self, h: Tensor) -> Tensor:
        """‖h_n − R W h_n‖² per sample (B,), by plain autograd in W and R (h is detached).

        The selfnorm training step folds this penalty into its fused backward; this method is
        for monitoring, or for training R on the penalty alone.
        """
        inv = self._require_inverse()
        h = h.detach()
        return (F.linear(F.linear(h, self.weight), inv) - h).square().sum(1)

    def approximate_inverse(self, z: Tensor) -> Tensor:
        """x ≈ R(z − b) through the learned inverse (selfnorm mode): O(D²), no solve.

        Falls back to the exact :meth:`inverse` for a layer that has no learned inverse.
        """
        if self.inverse_weight is None:
            return self.inverse(z)
        return F.linear(z - self.bias, self.inverse_weight)

"""Invertible linear layers with a switchable gradient mode, and the square dense one.

:class:`InvertibleLinear` is the base class of every layer ``z = A(W) h + b`` whose matrix A(W)
is a function of one weight — a dense matrix (:class:`SquareAffine`), a 1×1 or a K×K
convolution (:mod:`jacfree.flows.conv`). Its log-det is log|det A(W)| for every sample. How its
*gradient* is obtained in training is the layer's ``gradient`` mode:

* ``"exact"`` — autograd through ``torch.linalg.slogdet``: the O(D³) baseline;
* ``"relative"`` — the relative gradient of Gresele et al. (2020), O(B·D²), no inverse or
  determinant anywhere (:mod:`jacfree.flows.relative`);
* ``"selfnorm"`` — the self-normalizing rule of Keller et al. (2021): a learned approximate
  inverse ``R ≈ W⁻¹`` (``inverse_weight``) replaces W⁻ᵀ by Rᵀ, trained with a reconstruction
  penalty λ‖R W h − h‖² (:mod:`jacfree.flows.selfnorm`); O(B·D²), and sampling through R.

The base class holds what the modes share (mode switching, λ, the exact log-det and inverse from
one cached float64 LU factorisation, the approximate inverse through R); a subclass supplies its
map through a few hooks. :class:`~jacfree.flows.Flow` asks its layers through the same class.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from .core import GRADIENT_MODES, FlowLayer, ParameterStateCache
from .relative import relative_affine
from .selfnorm import (
    check_recon_weight,
    dense_initial_inverse,
    reconstruction_stats,
    register_recon_weight,
    selfnorm_affine,
)

Size = tuple[int, int] | None


class InvertibleLinear(FlowLayer):
    """Base class of an invertible linear layer ``z = A(weight) h + b`` with a gradient mode.

    Subclasses set ``supported_gradients``, create ``weight`` and ``bias`` (or ``None``), then call
    :meth:`_init_gradient`, and supply the hooks:

    * :meth:`_map` ``(x, weight, bias)`` — the map with a given weight (W, or R for the learned
      inverse); :meth:`_matrix` ``(weight64, size)`` — A(weight) as a float64 matrix;
    * :meth:`_logabsdet_at` ``(size)`` — the exact per-sample log-det for inputs of that size;
    * :meth:`inverse` — the exact inverse (with :meth:`_lu64`);
    * :meth:`_initial_inverse` — R on entering the selfnorm mode;
    * :meth:`_relative_forward` / :meth:`_selfnorm_forward` — the training forwards of the
      modes the layer supports (see :mod:`jacfree.flows.relative` / :mod:`~jacfree.flows.selfnorm`);
    * optionally :meth:`_check_input` (input checks; returns the size A depends on) and
      :meth:`_exact_training_forward` (default: the exact forward, differentiated by autograd).

    Attributes: ``gradient`` (the mode), ``inverse_weight`` (R, ``None`` until the layer first
    enters selfnorm mode), the buffer ``recon_weight`` (λ, from then on; checkpointed),
    ``last_reconstruction`` (the batch-mean ‖h − R W h‖² of the last selfnorm training forward,
    detached; ``None`` before one) and ``last_relative_reconstruction`` (the same divided by the
    batch-mean ‖h‖²: scale-free).
    """

    supported_gradients: tuple[str, ...] = ("exact",)
    gradient: str = "exact"
    weight: nn.Parameter
    bias: nn.Parameter | None
    inverse_weight: nn.Parameter | None
    last_reconstruction: Tensor | None = None
    last_relative_reconstruction: Tensor | None = None

    def _init_gradient(self, gradient: str, recon_weight: float) -> None:
        """Finish construction (after ``weight`` and ``bias``): no R yet, the LU cache, λ, mode."""
        self.register_parameter("inverse_weight", None)
        self._cache = ParameterStateCache()
        self.set_recon_weight(recon_weight)
        self.set_gradient(gradient)

    @staticmethod
    def _orthogonal_weight(n: int) -> nn.Parameter:
        """A random orthogonal n×n weight (log|det| = 0), from torch's global generator."""
        weight = nn.Parameter(torch.empty(n, n))
        nn.init.orthogonal_(weight)
        return weight

    # -- hooks --------------------------------------------------------------------------------

    def _check_input(self, x: Tensor, name: str = "x") -> Size:
        """Check an input; return the size the matrix depends on (``None`` for a dense layer)."""
        return None

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        raise NotImplementedError  # pragma: no cover - hook

    def _matrix(self, weight64: Tensor, size: Size) -> Tensor:
        """A(weight) as a matrix; by default ``weight`` itself (a dense layer)."""
        return weight64

    def _logabsdet_at(self, size: Size) -> Tensor:
        """The exact log-det (scalar, the same for every sample) for inputs of ``size``."""
        return self.matrix_logabsdet(size)

    def _initial_inverse(self) -> Tensor:
        """R on entering selfnorm mode; by default W⁻¹ (a dense matrix)."""
        return dense_initial_inverse(self.weight)

    def _exact_training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self(x)

    def _relative_forward(self, x: Tensor, size: Size) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover - unreachable: set_gradient refuses

    def _selfnorm_forward(self, x: Tensor, size: Size) -> tuple[Tensor, Tensor, Tensor]:
        """``(z, term, recon)`` with the per-sample ‖h − R W h‖² in ``recon``."""
        raise NotImplementedError  # pragma: no cover - unreachable: set_gradient refuses

    # -- gradient modes and λ -----------------------------------------------------------------

    def set_gradient(self, mode: str) -> None:
        """Switch the gradient mode (works on a live model).

        Entering ``selfnorm`` the first time creates ``inverse_weight`` R (:meth:`_initial_inverse`)
        and the buffer ``recon_weight``: build the optimizer afterwards.
        """
        check_choice(mode, "gradient mode", GRADIENT_MODES)
        if mode not in self.supported_gradients:
            raise NotImplementedError(
                f"{type(self).__name__} supports gradient modes "
                f"{', '.join(map(repr, self.supported_gradients))}, not {mode!r}."
            )
        self.gradient = mode
        if mode == "selfnorm" and self.inverse_weight is None:
            self.inverse_weight = nn.Parameter(self._initial_inverse())
            register_recon_weight(self, self._pending_recon_weight)

    def set_recon_weight(self, value: float) -> None:
        """Set λ, the weight of the reconstruction penalty (≥ 0).

        A layer not yet in the selfnorm mode keeps the value for when it enters it.
        """
        value = check_recon_weight(value)
        if "recon_weight" in self._buffers:
            self.recon_weight.fill_(value)
        else:
            self._pending_recon_weight = value

    def reconstruction_weight(self) -> Tensor | None:
        """λ (the 0-d buffer ``recon_weight``), or ``None`` before the layer entered selfnorm."""
        return self._buffers.get("recon_weight")

    def reconstruction_stats(self) -> tuple[Tensor, Tensor] | None:
        """``(last_reconstruction, last_relative_reconstruction)`` in selfnorm mode after a
        training forward, else ``None``."""
        if self.gradient != "selfnorm" or self.last_reconstruction is None:
            return None
        return self.last_reconstruction, self.last_relative_reconstruction  # type: ignore[return-value]

    def _require_inverse(self) -> Tensor:
        """The learned inverse, or a clear error for a layer that has none."""
        if self.inverse_weight is None:
            raise RuntimeError(
                "this layer has no learned inverse; switch it to the selfnorm mode first "
                "(layer.set_gradient('selfnorm'))."
            )
        return self.inverse_weight

    # -- exact quantities: one float64 LU factorisation, cached per parameter state -----------

    def _lu64(self, size: Size = None) -> tuple[Tensor, Tensor]:
        def factor() -> tuple[Tensor, Tensor]:
            with torch.no_grad():
                lu, pivots = torch.linalg.lu_factor(
                    self._matrix(self.weight.detach().double(), size)
                )
            return lu, pivots

        key = "lu" if size is None else f"lu{size[0]}x{size[1]}"
        return self._cache.get(key, [self.weight], factor)  # type: ignore[return-value]

    def matrix_logabsdet(self, size: Size = None) -> Tensor:
        """log|det A(W)| (scalar, in W's dtype).

        Differentiable (float64 ``slogdet``) when a gradient for W is being recorded; otherwise read
        from the cached float64 LU factorisation.
        """
        w = self.weight
        if torch.is_grad_enabled() and w.requires_grad:
            return torch.linalg.slogdet(self._matrix(w.double(), size)).logabsdet.to(w.dtype)
        lu, _ = self._lu64(size)
        return lu.diagonal().abs().log().sum().to(w.dtype)

    def _solve(self, columns: Tensor, size: Size = None) -> Tensor:
        """A(W)⁻¹ · columns, float64, with the cached LU factorisation."""
        lu, pivots = self._lu64(size)
        return torch.linalg.lu_solve(lu, pivots, columns.double())

    def _unbias(self, z: Tensor) -> Tensor:
        """z − b (b broadcast over the trailing dimensions of an image)."""
        if self.bias is None:
            return z
        return z - self.bias.view(-1, *[1] * (z.dim() - 2))

    # -- the layer protocol -------------------------------------------------------------------

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        size = self._check_input(x)
        z = self._map(x, self.weight, self.bias)
        return z, self._logabsdet_at(size).expand(x.shape[0])

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.gradient == "exact":
            return self._exact_training_forward(x)
        size = self._check_input(x)
        if self.gradient == "relative":
            return self._relative_forward(x, size)
        z, term, recon = self._selfnorm_forward(x, size)
        self.last_reconstruction, self.last_relative_reconstruction = reconstruction_stats(recon, x)
        return z, term

    def approximate_inverse(self, z: Tensor) -> Tensor:
        """h ≈ R(z − b) through the learned inverse (selfnorm mode): O(D²), no solve.

        Falls back to the exact :meth:`inverse` for a layer that has no learned inverse.
        """
        if self.inverse_weight is None:
            return self.inverse(z)
        self._check_input(z, "z")
        return self._map(self._unbias(z), self.inverse_weight)

    def reconstruction_error(self, h: Tensor) -> Tensor:
        """‖h_n − R W h_n‖² per sample (B,), by plain autograd in W and R (h is detached).

        The selfnorm training step folds this penalty into its fused backward; this method is
        for monitoring, or for training R on the penalty alone.
        """
        inv = self._require_inverse()
        self._check_input(h, "h")
        h = h.detach()
        rho = self._map(self._map(h, self.weight), inv) - h
        return rho.square().sum(tuple(range(1, h.dim())))


class SquareAffine(InvertibleLinear):
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
    bias: nn.Parameter

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
        self.weight = self._orthogonal_weight(features)
        self.bias = nn.Parameter(torch.zeros(features))
        self.paper_bias_rule = paper_bias_rule
        self._init_gradient(gradient, recon_weight)

    def extra_repr(self) -> str:
        return f"features={self.features}, gradient={self.gradient!r}"

    def logabsdet(self) -> Tensor:
        """log|det W| (scalar), the same for every sample; see :meth:`matrix_logabsdet`."""
        return self.matrix_logabsdet()

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x, weight, bias)

    def _exact_training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # autograd through slogdet in the parameters' own dtype (the O(D³) baseline)
        y = F.linear(x, self.weight, self.bias)
        return y, torch.linalg.slogdet(self.weight).logabsdet.expand(x.shape[0])

    def _relative_forward(self, x: Tensor, size: Size) -> tuple[Tensor, Tensor]:
        return relative_affine(x, self.weight, self.bias, self.paper_bias_rule)

    def _selfnorm_forward(self, x: Tensor, size: Size) -> tuple[Tensor, Tensor, Tensor]:
        return selfnorm_affine(x, self.weight, self.inverse_weight, self.bias, self.recon_weight)

    def inverse(self, z: Tensor) -> Tensor:
        """x = W⁻¹(z − b), solved in float64 with the cached LU factorisation."""
        return self._solve((z.double() - self.bias.detach().double()).t()).t().to(z.dtype)

r"""Deep kernel exponential family (DKEF; Wenliang, Sutherland, Strathmann, Gretton, ICML 2019).

The unnormalised log-density is a kernel expansion on ``M`` trainable inducing points ``z_m`` over a
fixed base ``q0``:

.. math::

    \log\tilde p(x) = f_\alpha(x) = \sum_{m=1}^{M} \alpha_m\, k(x, z_m) + \log q_0(x),\qquad
    q_0 = \mathcal N(0, s_0^2 I),

    k(x, z) = \sum_{r=1}^{R} w_r \exp\Big(-\frac{\|\varphi_r(x) - \varphi_r(z)\|^2}
                                               {2\cdot 10^{\ell_r}}\Big),\qquad
    w = \mathrm{softmax}(\omega),

with learned deep features ``φ_r`` (each an MLP ``d → h → h → h`` with softplus units and a linear
skip ``d → h``), log-bandwidths ``ℓ_r`` (the exponent is not squared, as in the DKEF and FD-SM
reference code) and mixture logits ``ω``. FD-SM paper settings (Pang et al., NeurIPS 2020, after
Song et al., UAI 2019): ``R = 3``, ``h = 30``, ``ℓ = (0, 0.5185, 1)``, ``M = 200`` inducing points
initialised from training data, ``s0 = 2``, ``log₁₀ λ = −2``.

**Closed-form α.** ``f_α`` is linear in ``α``, so the score-matching objective on a set of points
is a quadratic in ``α``. Along directions ``e_p`` (the ``d`` coordinate vectors for the exact
objective; one Rademacher vector per point for the sliced one, as the reference code does),

.. math::

    J(\alpha) = \frac1N\sum_{n,p}\Big[D^2_{e_p} f_\alpha(x_n) + \tfrac12 (D_{e_p} f_\alpha(x_n))^2
        \Big] = \alpha^\top b + \tfrac12 \alpha^\top G \alpha + \text{const},

    G = \frac1N\sum_{n,p} D_{e_p}k(x_n)\, D_{e_p}k(x_n)^\top,\qquad
    b = \frac1N\sum_{n,p}\big[D^2_{e_p}k(x_n) + D_{e_p}k(x_n)\, D_{e_p}\log q_0(x_n)\big],

and the minimiser of ``J(α) + ½λ‖α‖²`` with ``λ = 10^{log₁₀ λ}`` is
``α = −(G + λI)⁻¹ b`` (:func:`alpha_normal_equations`, :func:`solve_alpha`). Training (one step):
split the batch in halves ``X_t``, ``X_v``; solve ``α(θ)`` on ``X_t``; minimise a score-matching
loss of ``f_{α(θ)}`` on ``X_v`` (SSM, FD-SSM, …) by backpropagating through the solve. The kernel
derivatives are computed in closed form by second-order forward differentiation of the feature
networks (:meth:`FeatureNet.jet`), so the α solve needs no autograd graph of the input.

**Evaluation.** The α used for evaluation (``fitted_alpha``) is solved with the exact objective on
the training points remembered during the first epoch (up to ``alpha_points`` of them; all of them
for the UCI wine sets), and ``log Z = log E_{q0}[exp(αᵀk(x))]`` (``q0`` is normalised) is estimated
by importance sampling from ``q0`` with a standard error (:meth:`DKEF.log_partition`); both are
cached per parameter state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice, check_positive, check_positive_int, check_samples
from ..estimate import Estimate
from ..flows.core import CachedStateModule, ParameterStateCache
from .sampling import LangevinSampled

__all__ = [
    "ALPHA_SOLVES",
    "DKEF",
    "FeatureNet",
    "LogPartition",
    "alpha_normal_equations",
    "solve_alpha",
]

ALPHA_SOLVES = ("exact", "sliced")


class FeatureNet(nn.Module):
    """Deep features ``φ(x) = W₃ σ(W₂ σ(W₁x + b₁) + b₂) + b₃ + S x`` (softplus σ, skip ``S``).

    Initialised as the reference code: weights and biases ``N(0, 1/fan_out)``.
    """

    def __init__(self, dim: int, hidden: int = 30, *, skip: bool = True) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        check_positive_int(hidden, "hidden")
        self.lin = nn.ModuleList(
            [nn.Linear(dim, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)]
        )
        self.skip = nn.Linear(dim, hidden, bias=False) if skip else None
        with torch.no_grad():
            for m in [*self.lin, self.skip]:
                if m is None:
                    continue
                m.weight.normal_(0, 1 / math.sqrt(m.weight.shape[0]))
                if m.bias is not None:
                    m.bias.normal_(0, 1 / math.sqrt(m.bias.shape[0]))

    def forward(self, x: Tensor) -> Tensor:
        h = F.softplus(self.lin[0](x))
        h = F.softplus(self.lin[1](h))
        out = self.lin[2](h)
        return out + self.skip(x) if self.skip is not None else out

    def jet(self, x: Tensor, directions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r"""``φ(x)`` and its first and second directional derivatives along ``P`` directions.

        Args:
            x: points ``(N, d)``.
            directions: ``(P, d)`` (shared) or ``(N, P, d)`` (per point).

        Returns:
            ``(φ(x) (N, h), D_e φ(x) (N, P, h), D²_e φ(x) (N, P, h))``, computed by propagating
            the first- and second-order Taylor coefficients through the layers
            (``D²(σ∘g) = σ''(g)(Dg)² + σ'(g)D²g``); differentiable in the parameters.
        """
        W1, W2, W3 = (m.weight for m in self.lin)
        p1 = self.lin[0](x)  # (N, h)
        a1 = directions @ W1.T  # (P, h) or (N, P, h)
        if a1.dim() == 2:
            a1 = a1.expand(x.shape[0], *a1.shape)
        s1 = torch.sigmoid(p1)
        t1 = s1 * (1 - s1)
        h1 = F.softplus(p1)
        dh1 = s1[:, None] * a1
        d2h1 = t1[:, None] * a1 * a1
        p2 = self.lin[1](h1)
        dp2 = dh1 @ W2.T
        d2p2 = d2h1 @ W2.T
        s2 = torch.sigmoid(p2)
        t2 = s2 * (1 - s2)
        h2 = F.softplus(p2)
        dh2 = s2[:, None] * dp2
        d2h2 = t2[:, None] * dp2 * dp2 + s2[:, None] * d2p2
        out = self.lin[2](h2)
        dout = dh2 @ W3.T
        d2out = d2h2 @ W3.T
        if self.skip is not None:
            out = out + self.skip(x)
            sk = directions @ self.skip.weight.T
            dout = dout + (sk if sk.dim() == 3 else sk.expand_as(dout))
        return out, dout, d2out


def _square_distances(a: Tensor, b: Tensor) -> Tensor:
    """``‖a_n − b_m‖²`` (N, M) as ‖a‖² + ‖b‖² − 2abᵀ: one matrix product, no (N, M, h) tensor."""
    d2 = a.square().sum(1)[:, None] + b.square().sum(1)[None, :] - 2 * (a @ b.T)
    return d2.clamp_min(0)


def alpha_normal_equations(dk: Tensor, d2k: Tensor, dlogq0: Tensor) -> tuple[Tensor, Tensor]:
    r"""``(G, b)`` of the quadratic ``J(α) = αᵀb + ½αᵀGα + const`` (score-matching objective).

    Args:
        dk: ``D_{e_p} k(x_n, z_m)``, shape ``(N, M, P)``.
        d2k: ``D²_{e_p} k(x_n, z_m)``, shape ``(N, M, P)`` (or already summed over ``p``:
            ``(N, M)``).
        dlogq0: ``D_{e_p} log q0(x_n)``, shape ``(N, P)``.

    Returns:
        ``G = (1/N) Σ_{n,p} dk dkᵀ`` (M, M) and
        ``b = (1/N) Σ_{n,p} (d2k + dk · dlogq0)`` (M,).
    """
    if dk.dim() != 3 or dlogq0.shape != (dk.shape[0], dk.shape[2]):
        raise ValueError(
            f"dk must be (N, M, P) and dlogq0 (N, P); got {tuple(dk.shape)} and "
            f"{tuple(dlogq0.shape)}."
        )
    N = dk.shape[0]
    G = torch.einsum("nmp,nkp->mk", dk, dk) / N
    curv = d2k.sum(-1) if d2k.dim() == 3 else d2k
    b = (curv.sum(0) + torch.einsum("nmp,np->m", dk, dlogq0)) / N
    return G, b


def solve_alpha(G: Tensor, b: Tensor, lam: Tensor | float) -> Tensor:
    r"""``α = −(G + λI)⁻¹ b``, the minimiser of ``αᵀb + ½αᵀGα + ½λ‖α‖²``.

    Solved by a Cholesky factorisation in float64 (``G + λI`` is symmetric positive definite for
    ``λ > 0``), differentiable in ``G``, ``b`` and ``λ``; returned in ``b``'s dtype.
    """
    M = b.shape[-1]
    if G.shape != (M, M):
        raise ValueError(f"G must be ({M}, {M}) to match b {tuple(b.shape)}, got {tuple(G.shape)}")
    if not isinstance(lam, Tensor) and not lam > 0:  # a tensor λ (10^log λ) is > 0 by design
        raise ValueError(f"the ridge λ must be > 0, got {lam}")
    lam_t = torch.as_tensor(lam, device=G.device)
    wide = torch.float64 if G.device.type != "mps" else G.dtype
    A = G.to(wide) + lam_t.to(wide) * torch.eye(M, dtype=wide, device=G.device)
    # cholesky_ex and two triangular solves: no LAPACK/cuSOLVER error flag read back on the host
    # (A is positive definite by construction), so the training step never synchronises here
    L = torch.linalg.cholesky_ex(A).L
    y = torch.linalg.solve_triangular(L, b.to(wide)[:, None], upper=False)
    alpha = -torch.linalg.solve_triangular(L.mT, y, upper=True)[:, 0]
    return alpha.to(b.dtype)


# An importance-sampling estimate of ``log Z`` with its (delta-method) standard error: an
# :class:`~jacfree.estimate.Estimate` (``.value`` reads its mean).
LogPartition = Estimate


class DKEF(LangevinSampled, CachedStateModule):
    r"""Deep kernel exponential family ``log p̃(x) = Σ_m α_m k(x, z_m) + log q0(x)``.

    Args:
        dim: data dimension d.
        n_inducing: number M of inducing points (paper: 200).
        hidden: width of the feature networks (paper: 30).
        n_kernels: number R of Gaussian kernels, each on its own feature network (paper: 3).
        log_sigma: initial log-bandwidths ``ℓ_r`` (default ``(0, 0.5185, 1)``; cycled if R > 3).
        q0_std: standard deviation ``s0`` of the base ``q0 = N(0, s0² I)`` (paper: 2).
        log_lambda: initial ``log₁₀`` of the ridge ``λ`` (paper: −2); trained.
        alpha_solve: directions of the training-time α solve: ``"sliced"`` (one Rademacher
            vector per point, the reference code's choice) or ``"exact"`` (all d coordinates).
        alpha_points: how many training points to remember (first epoch) for the evaluation α.
        logz_samples: importance samples for ``log Z`` (paper: 10⁶).
        inducing: initial inducing points ``(M, d)``; if omitted they are taken from the first
            training batch seen by :meth:`remember` (with replacement and a small jitter when the
            batch has fewer than M rows).
        train_inducing: whether the inducing points are trained.
    """

    def __init__(
        self,
        dim: int,
        n_inducing: int = 200,
        hidden: int = 30,
        n_kernels: int = 3,
        *,
        log_sigma: Sequence[float] = (0.0, 0.5185, 1.0),
        q0_std: float = 2.0,
        log_lambda: float = -2.0,
        alpha_solve: str = "sliced",
        alpha_points: int = 4000,
        logz_samples: int = 1_000_000,
        inducing: Tensor | None = None,
        train_inducing: bool = True,
    ) -> None:
        super().__init__()
        check_positive_int(dim, "dim")
        check_positive_int(n_inducing, "n_inducing")
        check_positive_int(n_kernels, "n_kernels")
        check_positive_int(alpha_points, "alpha_points")
        check_positive_int(logz_samples, "logz_samples")
        check_choice(alpha_solve, "alpha_solve", ALPHA_SOLVES)
        check_positive(q0_std, "q0_std", "the base's standard deviation")
        if len(log_sigma) == 0:
            raise ValueError("log_sigma must hold at least one initial log-bandwidth.")
        self.dim = dim
        self.event_shape = (dim,)
        self.n_inducing = n_inducing
        self.q0_std = float(q0_std)
        self.alpha_solve = alpha_solve
        self.logz_samples = logz_samples
        self.features = nn.ModuleList([FeatureNet(dim, hidden) for _ in range(n_kernels)])
        init = [float(log_sigma[r % len(log_sigma)]) for r in range(n_kernels)]
        self.log_sigma = nn.Parameter(torch.tensor(init))
        self.kernel_logits = nn.Parameter(torch.zeros(n_kernels))
        self.log_lambda = nn.Parameter(torch.tensor(float(log_lambda)))
        z = torch.randn(n_inducing, dim) if inducing is None else inducing.detach().clone()
        if z.shape != (n_inducing, dim):
            raise ValueError(
                f"inducing must have shape ({n_inducing}, {dim}), got {tuple(z.shape)}"
            )
        self.inducing = nn.Parameter(z, requires_grad=train_inducing)
        self.register_buffer("initialised", torch.tensor(inducing is not None))
        self.register_buffer("alpha_x", torch.zeros(alpha_points, dim))
        self.register_buffer("alpha_count", torch.tensor(0))
        self.register_buffer("alpha_complete", torch.tensor(False))
        self._cache = ParameterStateCache()
        # Python mirrors of the buffers ``remember`` branches on (no host read per step), kept in
        # step by ``remember`` and by loading a state
        self._initialised = inducing is not None
        self._rows = 0
        self.register_load_state_dict_post_hook(_sync_mirrors)

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, n_inducing={self.n_inducing}, q0_std={self.q0_std}, "
            f"alpha_solve={self.alpha_solve!r}"
        )

    # -- the model ---------------------------------------------------------------------------

    @property
    def kernel_weights(self) -> Tensor:
        """Mixture weights ``w = softmax(ω)`` of the kernels, shape ``(R,)``."""
        return torch.softmax(self.kernel_logits, 0)

    @property
    def ridge(self) -> Tensor:
        """``λ = 10^{log₁₀ λ}``."""
        return torch.pow(10.0, self.log_lambda)

    def _bandwidths(self) -> Tensor:
        return torch.pow(10.0, self.log_sigma)  # the "σ" in exp(−‖·‖²/(2σ)), not squared

    def log_q0(self, x: Tensor) -> Tensor:
        """Normalised ``log N(x; 0, s0² I)``, shape ``(N,)``."""
        s2 = self.q0_std**2
        return -0.5 * x.square().sum(-1) / s2 - 0.5 * self.dim * math.log(2 * math.pi * s2)

    def kernel(self, x: Tensor) -> Tensor:
        """``k(x_n, z_m)``, shape ``(N, M)``."""
        w, bw = self.kernel_weights, self._bandwidths()
        total = x.new_zeros(x.shape[0], self.n_inducing)
        for r, phi in enumerate(self.features):
            d2 = _square_distances(phi(x), phi(self.inducing))
            total = total + w[r] * torch.exp(-d2 / (2 * bw[r]))
        return total

    def kernel_jet(self, x: Tensor, directions: Tensor) -> tuple[Tensor, Tensor]:
        r"""``D_e k(x_n, z_m)`` and ``D²_e k(x_n, z_m)`` along directions ``e``, each
        ``(N, M, P)`` (``directions``: ``(P, d)`` shared, or ``(N, P, d)``).

        With ``u = φ(x) − φ(z)``, ``a = D_eφ(x)``, ``c = D²_eφ(x)`` and bandwidth ``β``:
        ``D_e k = −k uᵀa/β`` and ``D²_e k = k[(uᵀa)²/β² − (‖a‖² + uᵀc)/β]``.
        """
        w, bw = self.kernel_weights, self._bandwidths()
        dk = d2k = None
        for r, phi in enumerate(self.features):
            fx, a, c = phi.jet(x, directions)
            fz = phi(self.inducing)  # (M, h)
            k = torch.exp(-_square_distances(fx, fz) / (2 * bw[r]))  # (N, M)
            # uᵀa with u = φ(x_n) − φ(z_m), without forming the (N, M, h) differences
            ua = (fx[:, None, :] @ a.transpose(1, 2)) - (a @ fz.T).transpose(1, 2)  # (N, M, P)
            uc = (fx[:, None, :] @ c.transpose(1, 2)) - (c @ fz.T).transpose(1, 2)
            aa = a.square().sum(-1)[:, None, :]  # (N, 1, P)
            first = -(w[r] / bw[r]) * k[..., None] * ua
            second = w[r] * k[..., None] * (ua.square() / bw[r] ** 2 - (aa + uc) / bw[r])
            dk = first if dk is None else dk + first
            d2k = second if d2k is None else d2k + second
        assert dk is not None and d2k is not None
        return dk, d2k

    def log_density(self, x: Tensor, alpha: Tensor | None = None) -> Tensor:
        """Unnormalised ``log p̃(x) = k(x)ᵀα + log q0(x)``, shape ``(N,)`` (``alpha`` default:
        :meth:`fitted_alpha`)."""
        check_samples(x, self.event_shape, finite=False)  # shapes only: a training-step call
        alpha = self.fitted_alpha() if alpha is None else alpha
        return self.kernel(x) @ alpha + self.log_q0(x)

    def energy(self, x: Tensor, alpha: Tensor | None = None) -> Tensor:
        """``E(x) = −log p̃(x)``, shape ``(N,)``."""
        return -self.log_density(x, alpha)

    def forward(self, x: Tensor) -> Tensor:
        """The energy with the fitted α: ``E(x) = −log p̃(x)``, shape ``(N,)``."""
        return self.energy(x)

    # -- the alpha solve ---------------------------------------------------------------------

    def normal_equations(
        self, x: Tensor, mode: str = "exact", *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """``(G, b)`` of the score-matching objective on the points ``x`` (see the module doc).

        ``mode="exact"`` uses the d coordinate directions (the exact objective); ``"sliced"``
        one Rademacher direction per point (unbiased for the same ``G`` and ``b``).
        """
        check_choice(mode, "alpha solve mode", ALPHA_SOLVES)
        check_samples(x, self.event_shape, finite=False)
        if mode == "exact":
            dirs = torch.eye(self.dim, dtype=x.dtype, device=x.device)  # (P=d, d)
            dq = -x / self.q0_std**2  # D_{e_i} log q0 = −x_i/s0²
        else:
            r = torch.randint(0, 2, x.shape, device=x.device, generator=generator)
            v = r.to(x.dtype) * 2 - 1
            dirs = v[:, None, :]  # (N, 1, d)
            dq = (-(x * v).sum(-1) / self.q0_std**2)[:, None]
        dk, d2k = self.kernel_jet(x, dirs)
        return alpha_normal_equations(dk, d2k, dq)

    def solve_alpha(
        self, x: Tensor, mode: str | None = None, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """``α = −(G + λI)⁻¹ b`` on the points ``x``; differentiable in the parameters.

        ``mode`` defaults to the model's ``alpha_solve`` (the training-time choice).
        """
        G, b = self.normal_equations(x, mode or self.alpha_solve, generator=generator)
        return solve_alpha(G, b, self.ridge)

    def _fit_alpha(self) -> Tensor:
        n = int(self.alpha_count)
        ref = self.inducing
        if n == 0:
            return ref.new_zeros(self.n_inducing)
        x = self.alpha_x[:n].to(ref.dtype)
        G = ref.new_zeros(self.n_inducing, self.n_inducing)
        b = ref.new_zeros(self.n_inducing)
        for chunk in x.split(500):
            Gc, bc = self.normal_equations(chunk, "exact")
            G = G + Gc * len(chunk)
            b = b + bc * len(chunk)
        return solve_alpha(G / n, b / n, self.ridge)

    def _state(self) -> list[Tensor]:
        return [*self.parameters(), self.alpha_x, self.alpha_count]  # what α and log Z depend on

    def fitted_alpha(self) -> Tensor:
        """The evaluation α: exact solve on the remembered training points (cached per
        parameter state; zeros before any training point was seen, so that ``p = q0``)."""

        def compute() -> Tensor:
            with torch.no_grad():
                return self._fit_alpha()

        return self._cache.get("alpha", self._state(), compute)  # type: ignore[return-value]

    @torch.no_grad()
    def remember(self, x: Tensor) -> None:
        """Initialise the inducing points from ``x`` (first call) and store training points for
        the evaluation α. Called by the training objective with every batch: rows are stored
        until ``alpha_points`` are held or a row comes back (the second epoch), so that with
        ``alpha_points ≥ n_train`` the evaluation α is solved on the whole training set once.

        Reads no tensor value on the host: the number of rows written is mirrored in Python,
        and "a row came back" is a flag kept on the device (``alpha_complete``) that stops
        ``alpha_count``; rows written after it are ignored.
        """
        x = x.detach().to(self.alpha_x)
        if not self._initialised:
            M = self.n_inducing
            if len(x) >= M:
                z = x[:M]
            else:
                idx = torch.randint(len(x), (M,), device=x.device)
                z = x[idx] + 0.1 * torch.randn(M, self.dim, dtype=x.dtype, device=x.device)
            self.inducing.copy_(z.to(self.inducing))
            self.initialised.fill_(True)
            self._initialised = True
        n, cap = self._rows, self.alpha_x.shape[0]
        if n >= cap:
            return
        take = x[: cap - n]
        if n > 0:
            # A row seen before means a second pass over the training set: stop counting, so
            # every training row counts once in the evaluation α.
            seen = (take[:, None, :] == self.alpha_x[None, :n, :]).all(-1).any()
            self.alpha_complete.logical_or_(seen)
        self.alpha_x[n : n + len(take)] = take
        self.alpha_count.add_((~self.alpha_complete).long() * len(take))
        self._rows = n + len(take)

    def set_alpha_points(self, x: Tensor) -> None:
        """Replace the remembered training points (for the evaluation α) by the rows of ``x``
        (at most ``alpha_points`` of them)."""
        check_samples(x, self.event_shape)
        self.alpha_count.zero_()
        self.alpha_complete.fill_(False)
        self._rows = 0
        self.remember(x)
        self.alpha_complete.fill_(True)
        self._rows = self.alpha_x.shape[0]

    # -- normalisation -----------------------------------------------------------------------

    @torch.no_grad()
    def log_partition(
        self, n_samples: int | None = None, *, seed: int = 0, batch_size: int = 10_000
    ) -> LogPartition:
        r"""``log Z = log ∫ exp(αᵀk(x)) q0(x) dx`` by importance sampling from ``q0``.

        ``Ẑ = (1/n) Σ_j exp(αᵀk(x_j))``, ``x_j ~ q0`` (the reference code's proposal,
        ``N(0, 4I)`` for ``s0 = 2``), evaluated with a running log-sum-exp; the standard error of
        ``log Ẑ`` is the delta-method ``sd(w)/(√n · mean(w))``. Seeded (``seed``), on the model's
        device and dtype; cached per parameter state for the default arguments.
        """
        n = self.logz_samples if n_samples is None else check_positive_int(n_samples, "n_samples")

        def compute() -> LogPartition:
            return self._log_partition(n, seed, batch_size)

        if n_samples is None and seed == 0:
            return self._cache.get("log_z", self._state(), compute)  # type: ignore[return-value]
        return compute()

    def _log_partition(self, n: int, seed: int, batch_size: int) -> LogPartition:
        ref = self.inducing
        alpha = self.fitted_alpha()
        gen = torch.Generator(device=ref.device).manual_seed(seed)
        logs = []
        done = 0
        while done < n:
            m = min(batch_size, n - done)
            x = self.q0_std * torch.randn(
                m, self.dim, dtype=ref.dtype, device=ref.device, generator=gen
            )
            logs.append((self.kernel(x) @ alpha).double())
            done += m
        a = torch.cat(logs)
        shift = a.max()
        w = torch.exp(a - shift)
        mean = w.mean()
        value = float(torch.log(mean) + shift)
        stderr = float(w.std() / (math.sqrt(n) * mean)) if n > 1 else float("nan")
        return LogPartition(value, stderr, n)

    def log_prob(self, x: Tensor) -> Tensor:
        """``log p(x) = log p̃(x) − log Ẑ`` (nats, shape ``(N,)``) with the fitted α and the
        cached importance-sampling estimate of ``log Z``."""
        return self.log_density(x) - self.log_partition().value

    def _langevin_start(self, n: int, generator: torch.Generator | None) -> Tensor:
        """Langevin starts for :meth:`sample` (DKEF has no exact sampler): draws from ``q0``."""
        ref = self.inducing.detach()
        return self.q0_std * torch.randn(
            n, self.dim, dtype=ref.dtype, device=ref.device, generator=generator
        )

    def _langevin_energy(self) -> Callable[[Tensor], Tensor]:
        alpha = self.fitted_alpha()
        return lambda y: self.energy(y, alpha)


def _sync_mirrors(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, DKEF)
    module._initialised = bool(module.initialised)
    done = bool(module.alpha_complete) or int(module.alpha_count) >= module.alpha_x.shape[0]
    module._rows = module.alpha_x.shape[0] if done else int(module.alpha_count)

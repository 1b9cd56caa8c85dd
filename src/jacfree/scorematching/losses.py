r"""Score-matching estimators, autograd and finite-difference, under one convention.

Every estimator here works with the unnormalised log-density ``log p̃ = −E`` of an energy
``E(x) -> (B,)`` (see :mod:`jacfree.scorematching.convention`, the only place the sign lives) or
with a score network ``s(x) -> x.shape``. All SM-type estimators target the same per-sample value

.. math::

    J(x) = \operatorname{tr} \nabla_x^2 \log \tilde p(x) + \tfrac12 \|\nabla_x \log \tilde p(x)\|^2

(``tr ∇ₓ s(x) + ½‖s(x)‖²`` for a score network; Hyvärinen 2005), averaged over the batch, so their
numbers are directly comparable. The DSM forms target
``½ ‖s(x̃) + (x̃ − x)/σ²‖²`` (Vincent 2011), which equals ``J`` of the noise-smoothed data plus the
constant ``d/(2σ²)``.

=================  =========  =============================================  ================
function           model      estimates                                      cost
=================  =========  =============================================  ================
exact_sm           energy     J exactly (Hessian trace via torch.func)       d HVPs (chunked)
exact_sm_scorenet  score net  J exactly (Jacobian trace)                     d JVPs (chunked)
ssm                energy     J, random projections (Song et al. 2019)       double backward
ssm_scorenet       score net  J, random projections                          double backward
fd_ssm             energy     J, central differences (Pang et al. 2020)      1 forward (3B)
fd_ssm_vr          score net  J, central differences, VR form                1 forward (2B)
dsm                energy     DSM (one σ or annealed σ's)                    double backward
dsm_scorenet       score net  DSM (one σ or annealed σ's)                    1 backward
fd_dsm             energy     DSM, central differences                       1 forward (2B)
mdsm               energy     multiscale DSM (per-sample σ_b, target σ0)     double backward
fd_mdsm            energy     multiscale DSM, central differences            1 forward (2B)
=================  =========  =============================================  ================

**Finite-difference forms** (Pang, Xu, Li, Song, Ermon, Zhu, NeurIPS 2020). With ``u`` uniform on
the unit sphere and ``v = εu``, ``E[vvᵀ] = (ε²/d) I``, so ``tr A = (d/ε²) E[vᵀAv]`` and
``‖a‖² = (d/ε²) E[(vᵀa)²]``; the directional derivatives ``vᵀ∇f`` and ``vᵀ∇²f v`` are then
replaced by central differences (:mod:`jacfree.scorematching.fd`). The FD forms need **no gradient
with respect to x** and build **no double-backward graph**: one batched forward pass over the
concatenated stencil points (``parallel=True``) or one pass per point (``parallel=False``, the
paper's "non-parallel" variant), then one ordinary backward. They are exact for quadratic
log-densities for every ``ε`` and otherwise biased by ``O(ε²)`` (leading constants in the
docstrings). They refuse float16/bfloat16 inputs and autocast, because the differences cancel
leading digits. A BatchNorm layer in training mode breaks the concatenated batch — its statistics
mix ``x``, ``x+v`` and ``x−v`` — so such energies are refused in parallel mode.

Common keyword arguments: ``reduction`` — ``"mean"`` (default, a scalar tensor), ``"sum"`` or
``"none"`` (per-sample values, shape ``(B,)``); ``return_terms`` — return
:class:`SMTerms` ``(loss, curvature, norm)`` with the trace term and the ``½‖s‖²`` term separately
(reduced the same way); ``generator`` — a ``torch.Generator`` for the random directions/noise;
``cond`` — per-sample conditioning passed as ``model(x, cond)`` (e.g. a noise level or label).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import check_positive_int, values_visible
from .._compile import is_compiling
from .convention import Energy, ScoreNet, ScoreNetModel, log_density, score, score_function
from .fd import (
    check_batch_coupling,
    check_fd_precision,
    directional_derivatives,
    evaluate_on_line,
    sphere_directions,
)

__all__ = [
    "PROJECTIONS",
    "SMTerms",
    "dsm",
    "dsm_scorenet",
    "exact_sm",
    "exact_sm_scorenet",
    "fd_dsm",
    "fd_mdsm",
    "fd_ssm",
    "fd_ssm_vr",
    "jacobian_trace",
    "log_density",
    "mdsm",
    "mdsm_sigmas",
    "random_projections",
    "score",
    "sphere_directions",
    "ssm",
    "ssm_scorenet",
]

Reduction = Literal["mean", "sum", "none"]
Projection = Literal["rademacher", "gaussian", "sphere"]
PROJECTIONS: tuple[str, ...] = ("rademacher", "gaussian", "sphere")
Sigma = float | Sequence[float] | Tensor


class SMTerms(NamedTuple):
    """An SM estimate split into its two terms: ``loss = curvature + norm``.

    ``curvature`` estimates ``tr ∇ₓ² log p̃`` (``tr ∇ₓ s`` for score networks); ``norm`` estimates
    ``½‖∇ₓ log p̃‖²``. All three are reduced alike (scalars for ``reduction="mean"``).
    """

    loss: Tensor
    curvature: Tensor
    norm: Tensor


# --------------------------------------------------------------------------------------------
# argument checks and small helpers


def _check_x(x: object, name: str = "x") -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (batch, *event)")
    if not x.is_floating_point():
        raise TypeError(f"{name} has dtype {x.dtype}; convert it with {name}.float()")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (batch, *event) with batch >= 1, got {tuple(x.shape)}; "
            f"add a batch dimension with {name}.unsqueeze(0)"
        )
    # No value scan here: an estimator reads no tensor value on the host, so that a training step
    # never waits for the device; check data once where it enters (``jacfree.fit`` does).
    return x


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps):
        raise ValueError(f"eps must be a positive finite number, got {eps!r}")
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps!r}")
    return float(eps)


def _dim(x: Tensor) -> int:
    return x[0].numel()


def _event_sum(t: Tensor, event_dims: int) -> Tensor:
    return t.flatten(t.dim() - event_dims).sum(-1) if event_dims else t


def _reduce(values: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"unknown reduction {reduction!r}; choose 'mean', 'sum' or 'none'")


def _finish(
    curvature: Tensor, norm: Tensor, reduction: Reduction, return_terms: bool
) -> Tensor | SMTerms:
    """Average particles (leading dim of (n, B) values), reduce over the batch, package."""
    if curvature.dim() == 2:
        curvature = curvature.mean(0)
    if norm.dim() == 2:
        norm = norm.mean(0)
    loss = curvature + norm
    if return_terms:
        return SMTerms(
            _reduce(loss, reduction), _reduce(curvature, reduction), _reduce(norm, reduction)
        )
    return _reduce(loss, reduction)


def _as_particles(v: Tensor, x: Tensor, name: str) -> Tensor:
    if tuple(v.shape) == tuple(x.shape):
        return v.unsqueeze(0)
    if v.dim() == x.dim() + 1 and tuple(v.shape[1:]) == tuple(x.shape):
        return v
    raise ValueError(
        f"{name} must have the shape of x {tuple(x.shape)} or (n_particles, *x.shape), "
        f"got {tuple(v.shape)}"
    )


def random_projections(
    x: Tensor,
    kind: Projection = "rademacher",
    n: int = 1,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""``n`` projection vectors per sample with ``E[v vᵀ] = I``, shape ``(n, B, *event)``.

    ``"rademacher"``: entries ±1; ``"gaussian"``: N(0, I); ``"sphere"``: ``√d · g/‖g‖`` (uniform on
    the sphere of radius ``√d``). Rademacher gives the lowest-variance trace estimate (Hutchinson).
    """
    shape = (n, *x.shape)
    if kind == "rademacher":
        r = torch.randint(0, 2, shape, device=x.device, generator=generator)
        return r.to(x.dtype) * 2 - 1
    if kind == "gaussian":
        return torch.randn(shape, dtype=x.dtype, device=x.device, generator=generator)
    if kind == "sphere":
        return sphere_directions(x, math.sqrt(_dim(x)), n=n, generator=generator)
    raise ValueError(f"unknown projection {kind!r}; choose one of {PROJECTIONS}")


def _check_fd(
    model: object,
    x: Tensor,
    eps: object,
    n_particles: object,
    parallel: bool,
    reduction: str,
    what: str,
) -> tuple[float, int]:
    """The argument checks every finite-difference estimator shares; ``(eps, n_particles)``."""
    _check_x(x)
    _check_reduction(reduction)
    check_fd_precision(x, what=what)
    check_batch_coupling(model, parallel)
    return _check_eps(eps), check_positive_int(n_particles, "n_particles")


def _unit_directions(
    x: Tensor, n_particles: int, directions: Tensor | None, generator: torch.Generator | None
) -> Tensor:
    """Unit sphere directions ``u``, shape (n, B, *event): drawn, or checked if given."""
    if directions is None:
        return sphere_directions(x, 1.0, n=n_particles, generator=generator)
    u = _as_particles(directions, x, "directions")
    if n_particles != 1 and u.shape[0] != n_particles:
        raise ValueError(
            f"directions holds {u.shape[0]} directions per sample but n_particles={n_particles}"
        )
    if values_visible(u):
        norms = torch.linalg.vector_norm(u.flatten(2), dim=-1)
        tol = 1e-4 if u.dtype == torch.float32 else 1e-10
        if not bool(((norms - 1).abs() <= tol).all()):
            raise ValueError(
                "directions must be unit vectors (the eps scaling is applied inside); normalise "
                "them with u / u.flatten(1).norm(dim=1).view(-1, *[1] * (u.dim() - 1))"
            )
    return u.to(x.dtype)


def _autograd_input(x: Tensor, n: int) -> Tensor:
    """``x`` repeated ``n`` times along the batch, as a tensor autograd can differentiate at."""
    if x.requires_grad:
        return x if n == 1 else x.repeat(n, *([1] * (x.dim() - 1)))
    xd = x.detach()
    xd = xd if n == 1 else xd.repeat(n, *([1] * (x.dim() - 1)))
    return xd.requires_grad_(True)


def _repeat_cond(cond: Tensor | None, n: int) -> Tensor | None:
    if cond is None or n == 1:
        return cond
    return cond.repeat(n, *([1] * (cond.dim() - 1)))


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}; choose 'mean', 'sum' or 'none'")


# --------------------------------------------------------------------------------------------
# exact score matching


def jacobian_trace(
    g: ScoreNet, x: Tensor, *, chunk_size: int | None = None, cond: Tensor | None = None
) -> Tensor:
    r"""Per-sample ``tr ∂g(x_b)/∂x_b``, shape ``(B,)``, of a row-wise map ``g`` (``x.shape`` out).

    Forward-mode ``torch.func.jvp`` with the basis tangents ``e_i`` (one for every sample at once),
    vectorised with ``torch.func.vmap`` over ``chunk_size`` coordinates at a time (default 32) and
    reduced to the diagonal immediately, so memory is ``O(chunk · B · activations)`` rather than
    ``O(d · B · d)`` — ``d = 784`` fits easily. The result is differentiable with respect to ``g``'s
    parameters when grad mode is on (functorch composes with ordinary autograd).
    """
    x = x.detach()
    B = x.shape[0]
    d = _dim(x)
    k = min(d, 32 if chunk_size is None else int(chunk_size))
    if k < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")

    def gfun(y: Tensor) -> Tensor:
        return g(y) if cond is None else g(y, cond)

    def column(t: Tensor) -> Tensor:
        return torch.func.jvp(gfun, (x,), (t,))[1]

    batched = torch.func.vmap(column)
    total: Tensor | None = None
    for start in range(0, d, k):
        idx = torch.arange(start, min(start + k, d), device=x.device)
        m = idx.numel()
        rows = torch.arange(m, device=x.device)
        tangents = torch.zeros(m, B, d, dtype=x.dtype, device=x.device)
        tangents[rows, :, idx] = 1
        out = batched(tangents.reshape(m, *x.shape)).reshape(m, B, d)
        part = out[rows, :, idx].sum(0)
        total = part if total is None else total + part
    assert total is not None
    return total


def exact_sm(
    energy: Energy,
    x: Tensor,
    *,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
    return_terms: bool = False,
    cond: Tensor | None = None,
) -> Tensor | SMTerms:
    r"""Exact score matching (Hyvärinen 2005) for an energy model; meant for evaluation.

    .. math::

        J_{SM}(x) = \operatorname{tr} \nabla_x^2 \log\tilde p(x)
                    + \tfrac12\|\nabla_x\log\tilde p(x)\|^2, \qquad \log\tilde p = -E.

    The Hessian trace is exact: forward-over-reverse ``torch.func`` Hessian-vector products with
    the ``d`` coordinate vectors, chunked (``chunk_size`` coordinates per vectorised call,
    default 32) so that ``d = 784`` fits in memory. Cost ``≈ d/chunk`` vectorised calls; Pang et
    al. (2020) and Song et al. (2019) use this only to report the "exact SM loss" on test data.
    Differentiable with respect to the energy's parameters when grad mode is on. Returns a scalar
    tensor (``reduction="mean"``), per-sample values, or :class:`SMTerms`.
    """
    _check_x(x)
    _check_reduction(reduction)
    x = x.detach()
    score_of = score_function(energy, cond)
    curvature = jacobian_trace(score_of, x, chunk_size=chunk_size)
    s = score_of(x)
    norm = 0.5 * _event_sum(s * s, x.dim() - 1)
    return _finish(curvature, norm, reduction, return_terms)


def exact_sm_scorenet(score_net: ScoreNet, x: Tensor, **options: Any) -> Tensor | SMTerms:
    r"""Exact score matching for a score network: ``J(x) = tr ∇ₓ s(x) + ½‖s(x)‖²``.

    :func:`exact_sm` with the network's output as the score (:class:`ScoreNetModel`): the
    Jacobian trace is computed exactly by chunked ``torch.func`` Jacobian-vector products.
    Keyword arguments (``chunk_size``, ``reduction``, ``return_terms``, ``cond``) and the return
    value as in :func:`exact_sm`.
    """
    return exact_sm(ScoreNetModel(score_net), x, **options)


# --------------------------------------------------------------------------------------------
# sliced score matching (autograd)


def ssm(
    energy: Energy,
    x: Tensor,
    vr: bool = False,
    *,
    projection: Projection = "rademacher",
    n_particles: int = 1,
    v: Tensor | None = None,
    reduction: Reduction = "mean",
    return_terms: bool = False,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor | SMTerms:
    r"""Sliced score matching (Song, Garg, Shi, Ermon, UAI 2019) for an energy model, by autograd.

    With projections ``v`` satisfying ``E[v vᵀ] = I`` and ``f = log p̃ = −E``:

    .. math::

        J_{SSM} = \mathbb E_v\big[v^\top \nabla_x^2 f\, v
                  + \tfrac12 (v^\top \nabla_x f)^2\big], \qquad
        J_{SSM\text{-}VR} = \mathbb E_v\big[v^\top \nabla_x^2 f\, v\big]
                           + \tfrac12\|\nabla_x f\|^2 .

    Both are unbiased for ``J(x)``. Computed with a ``create_graph`` backward for the score and a
    second backward for ``∇ₓ(vᵀs) = H v``; the parameter gradient is a gradient of a gradient.
    Under ``torch.compile`` the same products come from ``torch.func.vjp``, which the compiler
    traces as one graph.

    Args:
        vr: use the variance-reduced form (``½‖s‖²`` exactly).
        projection: ``"rademacher"`` (default; the reference code's choice for DKEF and NICE),
            ``"gaussian"`` (its choice for deep EBMs and NCSN) or ``"sphere"`` (radius ``√d``).
        n_particles: projections per sample (the batch is replicated, as in the reference code).
        v: explicit projections, shape ``x.shape`` or ``(n, *x.shape)`` (overrides the above).

    Returns:
        A scalar tensor (mean over the batch and the particles), per-sample values or
        :class:`SMTerms`.
    """
    _check_x(x)
    _check_reduction(reduction)
    n_particles = check_positive_int(n_particles, "n_particles")
    if v is None:
        vp = random_projections(x, projection, n_particles, generator=generator)
    else:
        vp = _as_particles(v, x, "v").to(x.dtype)
    n, B = vp.shape[0], x.shape[0]
    vf = vp.reshape(n * B, *x.shape[1:])
    grad_on = torch.is_grad_enabled()
    ev = x.dim() - 1
    cn = _repeat_cond(cond, n)
    if is_compiling():
        # traced form: the score and its vector-Jacobian product Jᵀv with torch.func (J = ∇ₓs,
        # the Hessian of log p̃ for an energy), composing with autograd for the parameter gradient
        xn = x if n == 1 else x.repeat(n, *([1] * (x.dim() - 1)))
        s, pullback = torch.func.vjp(lambda y: score(energy, y, cond=cn, create_graph=True), xn)
        (jv,) = pullback(vf)
    else:  # eager: the double backward of the reference implementations
        with torch.enable_grad():
            xn = _autograd_input(x, n)
            s = score(energy, xn, cond=cn, create_graph=True)
            (jv,) = torch.autograd.grad((s * vf).sum(), xn, create_graph=grad_on)
    curvature = _event_sum(jv * vf, ev)
    norm = 0.5 * _event_sum(s * s, ev) if vr else 0.5 * _event_sum(s * vf, ev) ** 2
    if not grad_on:
        curvature, norm = curvature.detach(), norm.detach()
    return _finish(curvature.reshape(n, B), norm.reshape(n, B), reduction, return_terms)


def ssm_scorenet(
    score_net: ScoreNet, x: Tensor, vr: bool = False, **options: Any
) -> Tensor | SMTerms:
    r"""Sliced score matching for a score network ``s(x)``, by autograd (Song et al. 2019).

    ``J_SSM = E_v[vᵀ ∇ₓs v + ½(vᵀs)²]``, ``J_SSM-VR = E_v[vᵀ ∇ₓs v] + ½‖s‖²``; ``vᵀ∇ₓs v`` comes
    from one ``create_graph`` backward of ``vᵀs``. This is the baseline the paper compares
    FD-SSM-VR against for NCSN and for implicit-encoder VAEs/WAEs (there with ``vr=True`` and
    Gaussian projections). For a noise-conditional network, perturb ``x`` yourself, pass the noise
    level as ``cond`` and weight ``reduction="none"`` values by ``σ²`` (NCSN's annealed form).
    :func:`ssm` with the network's output as the score (:class:`ScoreNetModel`); keyword
    arguments and the return value as in :func:`ssm`.
    """
    return ssm(ScoreNetModel(score_net), x, vr, **options)


# --------------------------------------------------------------------------------------------
# finite-difference sliced score matching


def fd_ssm(
    energy: Energy,
    x: Tensor,
    eps: float = 0.1,
    *,
    n_particles: int = 1,
    directions: Tensor | None = None,
    parallel: bool = True,
    vr: bool = False,
    reduction: Reduction = "mean",
    return_terms: bool = False,
    generator: torch.Generator | None = None,
    cond: Tensor | None = None,
) -> Tensor | SMTerms:
    r"""Finite-difference sliced score matching for an energy model (Pang et al., NeurIPS 2020).

    With ``v = ε u``, ``u`` uniform on the unit sphere, drawn per sample, and ``f = log p̃ = −E``:

    .. math::

        L_{FD\text{-}SSM} = \frac{d}{\varepsilon^2}\,\mathbb E\Big[
            \underbrace{f(x{+}v) + f(x{-}v) - 2f(x)}_{\approx\, v^\top\nabla^2 f\, v}
            + \underbrace{\tfrac18\big(f(x{+}v) - f(x{-}v)\big)^2}_{
                \approx\, \frac12 (v^\top\nabla f)^2}
        \Big],

    i.e. ``(d/ε²)·[2E(x) − E(x+v) − E(x−v) + ⅛(E(x+v) − E(x−v))²]`` in energies. This is the FD
    form of the non-VR SSM (the VR form would need ``‖∇f‖²``, i.e. ``d`` evaluations). The three
    evaluations run as ONE forward pass on ``cat([x, x+v, x−v])`` (``parallel=True``) or three
    passes (``parallel=False``); ``x`` needs no ``requires_grad`` and no double-backward graph is
    built — ``loss.backward()`` is an ordinary backward. Exact for quadratic ``f`` at every ``ε``;
    otherwise the sphere-averaged bias is

    .. math::

        \mathbb E_v[L_{FD}] - J(x) = \frac{\varepsilon^2}{d+2}\Big[\tfrac14\Delta^2 f
            + \tfrac12\nabla f\cdot\nabla(\Delta f)\Big] + O(\varepsilon^4).

    ``ε`` is the L2 norm of the whole direction (0.1 in the paper's DKEF/NICE runs). In float32
    keep ``ε ≳ (u·|E|)^{1/4}`` (≈ 0.05 for ``|E| ≈ 100``); half precision is refused.

    A score network wrapped as :class:`ScoreNetModel` (this is what :func:`fd_ssm_vr` passes) is
    evaluated at ``x ± v`` only: ``(d/ε²)·vᵀ(s₊ − s₋)/2 ≈ d·uᵀ∇ₓs u`` for the trace and, for the
    norm, ``(d/2ε²)(vᵀs̄)²`` (``vr=False``) or ``½‖s̄‖²`` (``vr=True``) with
    ``s̄ = ½(s₊ + s₋) = s(x) + O(ε²)``; both are exact for an affine score.

    Args:
        eps: radius of the sphere directions.
        n_particles: directions per sample (``f(x)`` is still evaluated once).
        directions: explicit UNIT directions ``u`` (shape ``x.shape`` or ``(n, *x.shape)``); the
            estimator is unbiased only for ``u`` uniform on the sphere.
        parallel: one concatenated forward pass (default) or one pass per stencil point. A
            BatchNorm layer in training mode is refused in parallel mode (its statistics would
            mix the stencil points).
        vr: the variance-reduced form ``½‖s‖²`` of the norm term; it needs the whole score, so
            only a score network can have it (see :func:`fd_ssm_vr`).

    Returns:
        A scalar tensor (mean over batch and particles), per-sample values (``reduction="none"``)
        or :class:`SMTerms` ``(loss, curvature ≈ tr ∇²f, norm ≈ ½‖∇f‖²)``.
    """
    is_score = isinstance(energy, ScoreNetModel)
    name = "fd_ssm_vr" if vr else "fd_ssm"
    if vr and not is_score:
        raise ValueError(
            "fd_ssm(vr=True) needs the whole score, i.e. a score network: use fd_ssm_vr(score_net, "
            "x) (an energy model has the non-VR form only, or ssm(energy, x, vr=True) by autograd)"
        )
    model = energy.net if is_score else energy  # what check_batch_coupling inspects
    eps, n_particles = _check_fd(model, x, eps, n_particles, parallel, reduction, name)
    v = _unit_directions(x, n_particles, directions, generator) * eps
    scale = _dim(x) / eps**2
    if is_score:
        s_mid, s_diff = directional_derivatives(
            energy, x, v, (0, 1), offsets=(-1, 1), parallel=parallel, cond=cond
        )
        ev = x.dim() - 1
        curvature = scale * _event_sum(v * s_diff, ev)
        norm = 0.5 * (
            _event_sum(s_mid * s_mid, ev) if vr else scale * _event_sum(v * s_mid, ev) ** 2
        )
        return _finish(curvature, norm, reduction, return_terms)

    def f(y: Tensor, c: Tensor | None = None) -> Tensor:
        return log_density(energy, y, c)

    d1, d2 = directional_derivatives(f, x, v, (1, 2), parallel=parallel, cond=cond)
    return _finish(scale * d2, scale * 0.5 * d1 * d1, reduction, return_terms)


def fd_ssm_vr(score_net: ScoreNet, x: Tensor, eps: float = 0.1, **options: Any) -> Tensor | SMTerms:
    r"""Finite-difference SSM-VR for a score network ``s(x) ≈ ∇ₓ log p(x)`` (Pang et al. 2020).

    With ``v = ε u`` on the sphere of radius ``ε`` and ``s± = s(x ± v)``:

    .. math::

        L = \mathbb E\Big[\tfrac18\|s_+ + s_-\|^2
            + \frac{d}{2\varepsilon^2}\, v^\top (s_+ - s_-)\Big],

    where ``½(s₊ + s₋) = s(x) + O(ε²)`` (so the first term ≈ ``½‖s‖²``) and
    ``(d/(2ε²)) vᵀ(s₊ − s₋) ≈ d·uᵀ∇ₓs u`` (an unbiased sphere estimate of ``tr ∇ₓs``). Both come
    from the two evaluations ``s(x ± v)`` — ONE forward pass on ``cat([x+v, x−v])``; ``x`` itself
    is not evaluated and no input gradient is taken. Sphere-averaged bias:
    ``ε²[s·Δs/(2d) + ∇·(Δs)/(2(d+2))] + O(ε⁴)``; exact for affine ``s``.

    This is the NCSN / implicit-encoder variant of the paper (``anneal_ESM_scorenet_VR``, ε = 0.1).
    For NCSN pass the perturbed samples as ``x``, the noise level as ``cond`` (it is repeated for
    both halves) and weight the ``reduction="none"`` values by ``σ²``. Keyword arguments and the
    return value as in :func:`fd_ssm` (this is ``fd_ssm(ScoreNetModel(score_net), x, eps,
    vr=True, **options)``).
    """
    return fd_ssm(ScoreNetModel(score_net), x, eps, vr=True, **options)


# --------------------------------------------------------------------------------------------
# denoising score matching


def _check_sigma(sigma: Sigma) -> None:
    """Noise levels given as numbers must be positive and finite (checked on the host, free).

    A tensor of levels (a model's buffer) is trusted: checking it would read it from the device.
    """
    if isinstance(sigma, Tensor):
        if sigma.numel() == 0:
            raise ValueError("sigma must hold at least one noise level")
        return
    values = [sigma] if isinstance(sigma, int | float) else list(sigma)
    if not values or not all(
        isinstance(s, int | float) and math.isfinite(s) and s > 0 for s in values
    ):
        raise ValueError(f"sigma must be positive and finite, got {sigma!r}")


def _perturb(
    x: Tensor,
    sigma: Sigma,
    noise: Tensor | None,
    levels: Tensor | None,
    anneal_power: float,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``x̃ = x + σ_b n``; returns ``(x̃, c = n/σ_b = (x̃−x)/σ_b², σ_b, weight_b or None)``."""
    B = x.shape[0]
    annealed = not isinstance(sigma, int | float) and not (
        isinstance(sigma, Tensor) and sigma.dim() == 0
    )
    _check_sigma(sigma)
    levels_t = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).flatten()
    if annealed:
        if levels is None:
            levels = torch.randint(levels_t.numel(), (B,), device=x.device, generator=generator)
        elif levels.shape != (B,):
            raise ValueError(f"levels must hold one noise-level index per sample, shape ({B},)")
        sig = levels_t[levels.to(device=x.device, dtype=torch.long)]
        weight: Tensor | None = sig**anneal_power
    else:
        if levels is not None:
            raise ValueError("levels only applies to the annealed form (a sequence of sigmas)")
        sig = levels_t.expand(B)
        weight = None
    if noise is None:
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    elif tuple(noise.shape) != tuple(x.shape):
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}")
    sb = sig.view(B, *([1] * (x.dim() - 1)))
    x_t = x + sb * noise
    c = noise / sb
    return x_t, c, sig, weight


def dsm(
    energy: Energy,
    x: Tensor,
    sigma: Sigma,
    *,
    noise: Tensor | None = None,
    levels: Tensor | None = None,
    anneal_power: float = 2.0,
    noise_conditional: bool = False,
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Denoising score matching (Vincent 2011) for an energy model, by autograd.

    .. math::

        J_{DSM}(\sigma) = \tfrac12\,\mathbb E_{x,\,\tilde x = x + \sigma n}
            \big\| s(\tilde x) + (\tilde x - x)/\sigma^2 \big\|^2,
        \qquad s = \nabla_x\log\tilde p = -\nabla_x E .

    Up to the constant ``d/(2σ²)`` this is ``J`` of the data smoothed by ``N(0, σ²I)``. The score
    needs a ``create_graph`` backward, so the parameter gradient is a gradient of a gradient.

    Args:
        sigma: one noise level (a number), or a sequence/1-D tensor of levels for the **annealed**
            form (NCSN, Song & Ermon 2019): every sample draws a level ``σ_b`` uniformly and its
            loss is weighted by ``σ_b^anneal_power`` (default 2, which makes the levels comparable:
            ``½‖σ_b s(x̃) + n‖²``).
        noise: explicit ``n`` (shape ``x.shape``); drawn from N(0, I) if omitted.
        levels: explicit per-sample level indices for the annealed form.
        noise_conditional: call ``energy(x̃, σ_b)`` with the per-sample noise level.

    Returns:
        A scalar tensor, or per-sample values with ``reduction="none"``.
    """
    _check_x(x)
    _check_reduction(reduction)
    x_t, c, sig, weight = _perturb(x, sigma, noise, levels, anneal_power, generator)
    s = score(energy, x_t, cond=sig if noise_conditional else None)
    r = s + c
    values = 0.5 * _event_sum(r * r, x.dim() - 1)
    if weight is not None:
        values = values * weight
    return _reduce(values, reduction)


def dsm_scorenet(score_net: ScoreNet, x: Tensor, sigma: Sigma, **options: Any) -> Tensor:
    r"""Denoising score matching for a score network: ``½ E‖s(x̃) + (x̃ − x)/σ²‖²``.

    No input derivative is needed, so there is no FD version (Pang et al. 2020 apply FD-DSM to
    energy models only). With a sequence of ``sigma`` and ``noise_conditional=True`` this is the
    annealed NCSN objective (``s(x̃, σ_b)``, weight ``σ_b²``). :func:`dsm` with the network's
    output as the score (:class:`ScoreNetModel`); keyword arguments as in :func:`dsm`.
    """
    return dsm(ScoreNetModel(score_net), x, sigma, **options)


def fd_dsm(
    energy: Energy,
    x: Tensor,
    sigma: Sigma,
    eps: float = 0.1,
    *,
    noise: Tensor | None = None,
    levels: Tensor | None = None,
    anneal_power: float = 2.0,
    noise_conditional: bool = False,
    n_particles: int = 1,
    directions: Tensor | None = None,
    parallel: bool = True,
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Finite-difference DSM for an energy model (Pang et al., NeurIPS 2020), target of ``dsm``.

    With ``x̃ = x + σn``, ``v = εu`` on the sphere of radius ``ε`` and ``f = log p̃ = −E``:

    .. math::

        L_{FD\text{-}DSM} = \frac{d}{2\varepsilon^2}\,\mathbb E\Big[\big(
            \tfrac12\,(f(\tilde x + v) - f(\tilde x - v))
            + v^\top(\tilde x - x)/\sigma^2\big)^2\Big].

    ``½(f₊ − f₋) ≈ vᵀ∇f(x̃)``, so the bracket is ``vᵀr`` with ``r = s(x̃) + (x̃ − x)/σ²`` and
    ``(d/ε²) E_v[(vᵀr)²] = ‖r‖²``: the expectation equals :func:`dsm`'s up to an ``O(ε²)`` bias
    ``ε² r·∇(Δf)(x̃) / (2(d+2))`` (zero for quadratic ``f``). Two evaluations in ONE forward pass
    on ``cat([x̃+v, x̃−v])``, no gradient of a gradient. The reference code's multiscale variant
    (:func:`fd_mdsm`: per-sample levels ``σ_b``, target level ``σ0``, weights ``1/σ_b²``, factor
    ``loss_coe``, no ½) is a constant multiple of this one only when every sample has the same
    level ``σ_b = σ0 = σ``: it is then ``(2·loss_coe/σ²)`` times ``fd_dsm(σ)``, with the same
    minimiser. With several levels its target ``(x̃ − x)/σ0²`` is not the ``(x̃ − x)/σ_b²`` of
    each sample's own level, so it is another objective, not a reweighted sum of ``fd_dsm``'s.
    Annealed ``sigma`` / ``levels`` / ``noise_conditional`` / ``noise`` as in :func:`dsm`;
    ``eps`` / ``n_particles`` / ``directions`` / ``parallel`` as in :func:`fd_ssm`.
    """
    eps, n_particles = _check_fd(energy, x, eps, n_particles, parallel, reduction, "fd_dsm")
    x_t, c, sig, weight = _perturb(x, sigma, noise, levels, anneal_power, generator)
    u = _unit_directions(x, n_particles, directions, generator)
    v = u * eps

    def f(y: Tensor, cc: Tensor | None = None) -> Tensor:
        return log_density(energy, y, cc)

    (d1,) = directional_derivatives(
        f, x_t, v, (1,), parallel=parallel, cond=sig if noise_conditional else None
    )
    proj = d1 + _event_sum(v * c, x.dim() - 1)
    values = (_dim(x) / (2 * eps**2)) * proj * proj
    values = values.mean(0)
    if weight is not None:
        values = values * weight
    return _reduce(values, reduction)


# --------------------------------------------------------------------------------------------
# multiscale denoising score matching (MDSM; Li, Chen, Sommer 2019), the deep-EBM objective of
# the FD-SM paper


def _check_mdsm_args(sigmas: object, sigma0: object) -> tuple[float, float, float]:
    ok = isinstance(sigmas, tuple | list) and len(sigmas) == 2
    lo, hi = sigmas if ok else (None, None)  # type: ignore[misc]
    if not (
        ok
        and all(isinstance(s, int | float) and not isinstance(s, bool) for s in (lo, hi))
        and math.isfinite(lo)
        and math.isfinite(hi)
        and 0 < lo <= hi
    ):
        raise ValueError(
            f"sigmas must be a pair (lo, hi) of finite noise levels with 0 < lo <= hi, got "
            f"{sigmas!r}; the paper's deep EBMs use (0.05, 1.2)."
        )
    if isinstance(sigma0, bool) or not isinstance(sigma0, int | float) or not sigma0 > 0:
        raise ValueError(f"sigma0 must be a positive number, got {sigma0!r}")
    if not math.isfinite(sigma0):
        raise ValueError(f"sigma0 must be finite, got {sigma0!r}")
    return float(lo), float(hi), float(sigma0)


def mdsm_sigmas(
    x: Tensor,
    sigmas: tuple[float, float] = (0.05, 1.2),
    *,
    random: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Per-sample MDSM noise levels ``σ_b``, shape ``(B,)``, on ``x``'s device and dtype.

    Default: ``σ_b = linspace(lo, hi, B)`` across the batch, as the reference deep-EBM code does
    (every batch covers the whole range, in order); ``random=True`` draws ``σ_b ~ U(lo, hi)``
    independently with torch's RNG (``generator``) instead.
    """
    lo, hi, _ = _check_mdsm_args(sigmas, 1.0)
    B = x.shape[0]
    if random:
        u = torch.rand(B, dtype=x.dtype, device=x.device, generator=generator)
        return lo + (hi - lo) * u
    return torch.linspace(lo, hi, B, dtype=x.dtype, device=x.device)


def _mdsm_perturb(
    x: Tensor,
    sigmas: tuple[float, float],
    sigma0: float,
    noise: Tensor | None,
    noise_levels: Tensor | None,
    random_sigmas: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``x̃ = x + σ_b n``; returns ``(x̃, c = (x̃ − x)/σ0², σ_b)``."""
    B = x.shape[0]
    if noise_levels is None:
        sig = mdsm_sigmas(x, sigmas, random=random_sigmas, generator=generator)
    else:
        if not isinstance(noise_levels, Tensor) or tuple(noise_levels.shape) != (B,):
            raise ValueError(f"noise_levels must hold one σ_b per sample, shape ({B},)")
        sig = noise_levels.to(x.dtype)
    if noise is None:
        noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    elif tuple(noise.shape) != tuple(x.shape):
        raise ValueError(f"noise must have the shape of x {tuple(x.shape)}")
    sb = sig.view(B, *([1] * (x.dim() - 1)))
    delta = sb * noise
    return x + delta, delta / sigma0**2, sig


def mdsm(
    energy: Energy,
    x: Tensor,
    sigmas: tuple[float, float] = (0.05, 1.2),
    sigma0: float = 0.1,
    *,
    random_sigmas: bool = False,
    noise: Tensor | None = None,
    noise_levels: Tensor | None = None,
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Multiscale denoising score matching (MDSM; Li, Chen & Sommer 2019) by autograd.

    Every sample gets its own noise level ``σ_b`` (:func:`mdsm_sigmas`: linearly spaced over
    ``sigmas = (lo, hi)`` across the batch by default, uniform at random with
    ``random_sigmas=True``), while the regression target uses ONE fixed level ``σ0``:

    .. math::

        L_{MDSM} = \operatorname{mean}_b\ \frac{1}{2\sigma_b^2}
            \big\| s(\tilde x_b) + (\tilde x_b - x_b)/\sigma_0^2 \big\|^2,
        \qquad \tilde x_b = x_b + \sigma_b n_b,\quad s = \nabla_x\log\tilde p = -\nabla_x E.

    This is the objective of the deep energy-based models of Pang et al. (NeurIPS 2020,
    reference ``mdsm_baseline``), which multiplies ``‖·‖²/σ_b²`` by a constant ``loss_coe``
    (1e-4) and drops the ½: the reference value is ``2·loss_coe`` times this one (same
    minimiser; the scale matters only for gradient clipping). :func:`dsm` cannot express it —
    its target uses each sample's own ``σ``. For a quadratic energy ``E = ½(x−μ)ᵀP(x−μ)`` and
    data ``N(m, S)`` the expectation is
    ``mean_b ½[tr(PSP) + ‖P(m−μ)‖² + σ_b²‖P − I/σ0²‖²_F] / σ_b²``.

    The score needs a ``create_graph`` backward, so the parameter gradient is a gradient of a
    gradient; :func:`fd_mdsm` avoids it.

    Args:
        sigmas: ``(lo, hi)``, the range of the per-sample noise levels (paper: (0.05, 1.2)).
        sigma0: the fixed noise level of the target (paper: 0.1).
        random_sigmas: draw ``σ_b ~ U(lo, hi)`` instead of the batch linspace.
        noise: explicit ``n`` (shape ``x.shape``); drawn from N(0, I) if omitted.
        noise_levels: explicit ``σ_b``, shape ``(B,)`` (overrides ``sigmas``).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample values).
    """
    _check_x(x)
    _check_reduction(reduction)
    _, _, sigma0 = _check_mdsm_args(sigmas, sigma0)
    x_t, c, sig = _mdsm_perturb(x, sigmas, sigma0, noise, noise_levels, random_sigmas, generator)
    r = score(energy, x_t) + c
    values = 0.5 * _event_sum(r * r, x.dim() - 1) / (sig * sig)
    return _reduce(values, reduction)


def fd_mdsm(
    energy: Energy,
    x: Tensor,
    sigmas: tuple[float, float] = (0.05, 1.2),
    sigma0: float = 0.1,
    eps: float = 0.05,
    *,
    random_sigmas: bool = False,
    noise: Tensor | None = None,
    noise_levels: Tensor | None = None,
    n_particles: int = 1,
    directions: Tensor | None = None,
    parallel: bool = True,
    reduction: Reduction = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Finite-difference MDSM (Pang et al., NeurIPS 2020, reference ``mdsm_fd``): :func:`mdsm`'s
    target without a gradient of a gradient.

    With ``x̃_b = x_b + σ_b n_b``, ``v = εu`` uniform on the sphere of radius ``ε`` and
    ``f = log p̃ = −E``:

    .. math::

        L = \operatorname{mean}_b\ \frac{d}{2\varepsilon^2\sigma_b^2}\Big(
            \tfrac12\big(f(\tilde x_b + v) - f(\tilde x_b - v)\big)
            + v^\top(\tilde x_b - x_b)/\sigma_0^2\Big)^2 .

    ``½(f₊ − f₋) = vᵀ∇f(x̃) + O(ε³)`` and ``(d/ε²) E_v[(vᵀr)²] = ‖r‖²``, so the expectation is
    :func:`mdsm`'s up to an ``O(ε²)`` bias ``ε² r·∇(Δf)(x̃)/(2(d+2)σ_b²)`` — zero for quadratic
    energies, for which the value per sample and direction is exact at every ``ε``. Two
    evaluations per sample in ONE forward pass on ``cat([x̃+v, x̃−v])`` (``parallel=True``) or
    two passes (``parallel=False``, the paper's "nop" variant); one ordinary backward. The
    reference multiplies by ``loss_coe`` and drops the ½, as for :func:`mdsm`. Default
    ``ε = 0.05`` (the paper's ``esm_eps`` for deep EBMs).

    Arguments as in :func:`mdsm`; ``eps`` / ``n_particles`` / ``directions`` / ``parallel`` as
    in :func:`fd_ssm`.
    """
    eps, n_particles = _check_fd(energy, x, eps, n_particles, parallel, reduction, "fd_mdsm")
    _, _, sigma0 = _check_mdsm_args(sigmas, sigma0)
    x_t, c, sig = _mdsm_perturb(x, sigmas, sigma0, noise, noise_levels, random_sigmas, generator)
    u = _unit_directions(x, n_particles, directions, generator)
    v = u * eps

    def f(y: Tensor) -> Tensor:
        return log_density(energy, y)

    # the two points of the central first-order stencil, ½(f₊ − f₋) ≈ vᵀ∇f(x̃)
    f_minus, f_plus = evaluate_on_line(f, x_t, v, (-1.0, 1.0), parallel=parallel)
    proj = 0.5 * (f_plus - f_minus) + _event_sum(v * c, x.dim() - 1)
    values = ((_dim(x) / (2 * eps**2)) * proj * proj).mean(0) / (sig * sig)
    return _reduce(values, reduction)

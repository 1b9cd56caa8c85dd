r"""Central finite-difference directional derivatives of any order (Pang et al., NeurIPS 2020).

Finite-difference score matching (FD-SM; Pang, Xu, Li, Song, Ermon, Zhu, "Efficient Learning
of Generative Models via Finite-Difference Score Matching", NeurIPS 2020, arXiv:2007.03317)
replaces the gradients-of-gradients of score matching by *directional derivatives*, and those by
finite differences along a random direction ``v``:

.. math::

    D^T_v f(x) = \frac{d^T}{dt^T} f(x + t v)\Big|_{t=0}
               = \sum_k \beta_k\, f(x + \alpha_k v) + O(\|v\|^{p}).

The weights ``β`` of a stencil with offsets ``α`` solve the *moment conditions*

.. math::

    \sum_k \beta_k \alpha_k^j = T!\,[j = T], \qquad j = 0, \dots, K-1

(K offsets, a Vandermonde system solved here in exact rational arithmetic and cached). The leading
error term is ``m_p / p! · D^p_v f(x)`` with ``p`` the first power whose moment ``m_p`` breaks the
conditions, so the absolute error is ``O(‖v‖^p)``.

**Central stencils with the minimal number of points** (:func:`central_stencil` with ``accuracy=2``)
use the T + 1 offsets ``0, ±1, …, ±T/2`` (T even) or ``±1, …, ±(T+1)/2`` (T odd). Their weights are
(anti)symmetric, so the moment ``T + 1`` vanishes for free and the error is

    ``O(‖v‖^{T+2})`` absolute, i.e. ``O(ε²)`` relative to ``D^T_v f = O(ε^T)`` for ``‖v‖ = ε``.

Halving ``‖v‖`` therefore divides the error of ``D^T_v f`` by ``2^{T+2}`` (and the error of the
normalised derivative ``D^T_u f ≈ FD/ε^T`` along the unit direction ``u`` by 4). For T = 1..4 these
are exactly the formulas of the paper's Algorithm 1:

====  ==========================================================  =========
 T    stencil                                                      error
====  ==========================================================  =========
 1    ½[f(x+v) − f(x−v)]                                           O(ε³)
 2    f(x+v) + f(x−v) − 2f(x)                                      O(ε⁴)
 3    ½[f(x+2v) − 2f(x+v) + 2f(x−v) − f(x−2v)]                     O(ε⁵)
 4    f(x+2v) − 4f(x+v) + 6f(x) − 4f(x−v) + f(x−2v)                O(ε⁶)
====  ==========================================================  =========

``accuracy = a`` (even) widens the stencil to relative error ``O(ε^a)``.

All stencil points are independent function evaluations, so :func:`directional_derivatives`
runs them as **one batched call** of ``f`` on the concatenated points (``parallel=True``) — or one
call per offset (``parallel=False``, the paper's "non-parallel" variant). Both combine identical
values in the same order.

**Precision.** FD differences cancel: the round-off error is ``≈ u·|f|/ε^T`` (``u`` the unit
round-off) on top of the ``O(ε²)`` truncation error. In float32 with ``|f| ≈ 100`` the best
``ε`` is about 0.03–0.1 (error ≈ 1e-2); in float16/bfloat16 the result is useless at every ``ε``.
The functions here therefore refuse half-precision inputs, half-precision outputs of ``f`` and
active autocast (:func:`check_fd_precision`).

**Batch-coupled layers.** The concatenated batch holds ``x``, ``x + v``, ``x − v``, … side by side.
A layer whose output for one row depends on the other rows — BatchNorm in training mode — then
normalises ``f(x + v)`` with statistics that include ``x`` and ``x − v``: the differences no longer
measure how ``f`` changes along ``v``, and the result is wrong by an amount that does not vanish as
``ε → 0`` in the ratio that matters (``/ε^T``). Use per-sample normalisation (LayerNorm, GroupNorm,
InstanceNorm), BatchNorm in eval mode, or no normalisation (as the paper's models do).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import torch
from torch import Tensor, nn

from .._checks import check_positive, check_positive_int
from .._compile import constant_result

__all__ = [
    "Stencil",
    "central_stencil",
    "check_batch_coupling",
    "check_fd_precision",
    "directional_derivative",
    "directional_derivatives",
    "evaluate_on_line",
    "sphere_directions",
    "stencil",
]

HALF_DTYPES = (torch.float16, torch.bfloat16)

Offset = int | float | Fraction


@dataclass(frozen=True)
class Stencil:
    r"""A finite-difference stencil ``D^T_v f(x) ≈ Σ_k weights[k] · f(x + offsets[k] · v)``.

    Attributes:
        order: the derivative order ``T``.
        offsets: the points ``α_k`` along the line, in increasing order (exact rationals).
        weights: the weights ``β_k`` (exact rationals) solving the moment conditions.
        error_order: ``p`` with absolute error ``error_coefficient · D^p_v f(x) + O(‖v‖^{p+1})``;
            ``None`` if the stencil is exact for every ``f`` (only the trivial order-0 stencil).
        error_coefficient: ``m_p / p!`` with ``m_p = Σ_k β_k α_k^p``.
    """

    order: int
    offsets: tuple[Fraction, ...]
    weights: tuple[Fraction, ...]
    error_order: int | None
    error_coefficient: Fraction

    @property
    def accuracy(self) -> int | None:
        """Relative accuracy ``error_order − order`` (2 for the minimal central stencil)."""
        return None if self.error_order is None else self.error_order - self.order

    @property
    def float_offsets(self) -> tuple[float, ...]:
        return tuple(float(a) for a in self.offsets)

    @property
    def float_weights(self) -> tuple[float, ...]:
        return tuple(float(b) for b in self.weights)

    def moment(self, j: int) -> Fraction:
        """``Σ_k β_k α_k^j`` (equals ``T!`` for ``j = T`` and 0 for other ``j < error_order``)."""
        return sum((b * a**j for a, b in zip(self.offsets, self.weights, strict=True)), Fraction(0))


def _solve_exact(matrix: list[list[Fraction]], rhs: list[Fraction]) -> list[Fraction]:
    """Gauss–Jordan elimination in exact rational arithmetic (the Vandermonde systems are tiny)."""
    n = len(rhs)
    a = [[*row, r] for row, r in zip(matrix, rhs, strict=True)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if a[r][col] != 0), None)
        if pivot is None:
            raise ValueError("stencil offsets must be distinct (singular moment system)")
        a[col], a[pivot] = a[pivot], a[col]
        inv = 1 / a[col][col]
        a[col] = [v * inv for v in a[col]]
        for r in range(n):
            if r != col and a[r][col] != 0:
                factor = a[r][col]
                a[r] = [v - factor * w for v, w in zip(a[r], a[col], strict=True)]
    return [a[r][n] for r in range(n)]


@lru_cache(maxsize=256)
def _stencil_cached(order: int, offsets: tuple[Fraction, ...]) -> Stencil:
    K = len(offsets)
    # moment conditions j = 0..K-1: sum_k beta_k alpha_k^j = T! [j == T]
    matrix = [[a**j for a in offsets] for j in range(K)]
    rhs = [Fraction(math.factorial(order)) if j == order else Fraction(0) for j in range(K)]
    weights = _solve_exact(matrix, rhs)
    # leading error term: first j >= K whose moment is non-zero (K consecutive zero moments past
    # K-1 would force every non-zero offset to have weight zero, so scanning to 2K-1 suffices)
    error_order: int | None = None
    coefficient = Fraction(0)
    for j in range(K, 2 * K + 1):
        m = sum((b * a**j for a, b in zip(offsets, weights, strict=True)), Fraction(0))
        if m != 0:
            error_order, coefficient = j, m / math.factorial(j)
            break
    return Stencil(order, offsets, tuple(weights), error_order, coefficient)


def _as_fraction(a: Offset) -> Fraction:
    if isinstance(a, bool) or not isinstance(a, int | float | Fraction):
        raise TypeError(f"stencil offsets must be numbers, got {a!r}")
    if isinstance(a, float) and not math.isfinite(a):
        raise ValueError(f"stencil offsets must be finite, got {a!r}")
    return Fraction(a)


def stencil(order: int, offsets: Iterable[Offset]) -> Stencil:
    """The finite-difference stencil of derivative ``order`` on the given ``offsets``.

    Solves the K × K moment system (K = number of offsets) exactly; requires ``order < K`` and
    distinct offsets. Offsets whose weight comes out zero are kept (use :func:`central_stencil` for
    the pruned minimal stencils). Example: ``stencil(0, (-1, 1))`` is the interpolation
    ``½[f(x−v) + f(x+v)] = f(x) + O(‖v‖²)`` used by FD-SSM-VR.
    """
    order = check_positive_int(order, "derivative order", minimum=0)
    fr = tuple(sorted(_as_fraction(a) for a in offsets))
    if len(set(fr)) != len(fr):
        raise ValueError(f"stencil offsets must be distinct, got {tuple(map(float, fr))}")
    if order >= len(fr):
        raise ValueError(
            f"a derivative of order {order} needs at least {order + 1} offsets, got {len(fr)}"
        )
    return _stencil_cached(order, fr)


@lru_cache(maxsize=128)
def _central_cached(order: int, accuracy: int) -> Stencil:
    p = (order + 1) // 2 + accuracy // 2 - 1
    full = _stencil_cached(order, tuple(Fraction(k) for k in range(-p, p + 1)))
    keep = [(a, b) for a, b in zip(full.offsets, full.weights, strict=True) if b != 0]
    offsets = tuple(a for a, _ in keep)
    weights = tuple(b for _, b in keep)
    return Stencil(order, offsets, weights, full.error_order, full.error_coefficient)


def central_stencil(order: int, accuracy: int = 2) -> Stencil:
    r"""Central stencil for ``D^T_v f`` on offsets ``−p..p`` with relative accuracy ``O(ε^a)``.

    ``p = ⌈T/2⌉ + a/2 − 1``; points with zero weight (``0`` for odd ``T``) are dropped. With the
    default ``accuracy=2`` this is the minimal central stencil (T + 1 points, absolute error
    ``O(‖v‖^{T+2})``); see the module docstring for T = 1..4.
    """
    order = check_positive_int(order, "derivative order", minimum=0)
    if isinstance(accuracy, bool) or not isinstance(accuracy, int) or accuracy < 2 or accuracy % 2:
        raise ValueError(f"accuracy must be an even integer >= 2, got {accuracy!r}")
    return _central_cached(order, accuracy)


# --------------------------------------------------------------------------------------------
# guards


def check_fd_precision(*tensors: Tensor | None, what: str = "finite differences") -> None:
    """Refuse float16/bfloat16 tensors and active autocast for finite-difference computations.

    FD combinations cancel leading digits: the round-off error is about ``u·|f|/ε^T``. In half
    precision (``u ≈ 1e-3`` / ``4e-3``) this swamps the derivative at every usable ``ε``, so the
    loss would silently train on noise. Raises ``TypeError`` / ``RuntimeError`` naming the fix.
    """
    device_types: set[str] = set()
    for t in tensors:
        if t is None:
            continue
        if t.dtype in HALF_DTYPES:
            raise TypeError(
                f"{what} need float32 or float64 inputs, got {t.dtype}: finite differences cancel "
                "leading digits (round-off ≈ unit-roundoff·|f|/eps^T), which leaves nothing of the "
                "derivative in half precision. Convert with x.float() and keep the model's output "
                "head in float32."
            )
        device_types.add(t.device.type)
    for dev in device_types | {"cpu"}:
        try:
            enabled = torch.is_autocast_enabled(dev)
        except (TypeError, RuntimeError):  # pragma: no cover - very old torch / unknown device
            enabled = dev == "cpu" and torch.is_autocast_cpu_enabled()
        if enabled:
            raise RuntimeError(
                f"{what} must not run under torch.autocast ({dev}): autocast evaluates the model "
                "in float16/bfloat16, where the finite-difference cancellation destroys the "
                "derivative. Compute this loss outside the autocast region (or wrap it in "
                f"torch.autocast('{dev}', enabled=False))."
            )


def _check_output_precision(y: Tensor, what: str) -> None:
    if y.dtype in HALF_DTYPES:
        raise TypeError(
            f"{what}: the function returned {y.dtype} values; finite differences of half-precision "
            "outputs are dominated by round-off. Return float32 or float64 (e.g. .float() on the "
            "output head)."
        )


def check_batch_coupling(f: object, parallel: bool) -> None:
    """Refuse (parallel) or warn about (sequential) BatchNorm layers in training mode inside ``f``.

    Only ``nn.Module`` callables (or their bound methods) can be inspected; for other callables
    the restriction is documented: batch statistics couple the rows of the concatenated batch
    ``[x, x+v, x−v]``, so a row's value no longer depends on that row alone and the finite
    difference measures the batch statistics, not the function.
    """
    module = f if isinstance(f, nn.Module) else getattr(f, "__self__", None)
    if not isinstance(module, nn.Module):
        return
    bad = [
        name
        for name, m in module.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
    ]
    if not bad:
        return
    msg = (
        f"BatchNorm layer(s) {bad} are in training mode: batch statistics mix the stencil points "
        "x, x+v, x-v of the finite-difference batch, so the differences no longer measure the "
        "function along v. Use LayerNorm/GroupNorm/InstanceNorm, put BatchNorm in eval mode, or "
        "drop the normalisation."
    )
    if parallel:
        raise ValueError(msg + " (parallel=False separates the points but is still biased.)")
    warnings.warn(msg, stacklevel=3)


# --------------------------------------------------------------------------------------------
# directions


def sphere_directions(
    like: Tensor,
    eps: float = 1.0,
    *,
    n: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Directions ``v = ε · g/‖g‖``, ``g ~ N(0, I_d)``, uniform on the sphere of radius ``ε``.

    One independent direction per sample of ``like`` (shape ``(B, *event)``, ``d = prod(event)``;
    the norm is the L2 norm of the whole sample), or ``n`` per sample (shape ``(n, B, *event)``).
    ``‖v‖ = ε`` exactly and ``E[v vᵀ] = (ε²/d) I`` — the identity behind the ``d/ε²`` factors of
    FD score matching (Pang et al. 2020, Sec. 4). Created on ``like``'s device and dtype.
    """
    if not isinstance(like, Tensor) or like.dim() < 2:
        raise ValueError("sphere_directions needs a (batch, *event) tensor to copy shape from")
    check_positive(eps, "eps", "the finite-difference step")
    shape = tuple(like.shape) if n is None else (n, *like.shape)
    g = torch.randn(shape, dtype=like.dtype, device=like.device, generator=generator)
    event_dims = tuple(range(g.dim() - like.dim() + 1, g.dim()))
    norm = torch.linalg.vector_norm(g, dim=event_dims, keepdim=True)
    return g * (eps / norm)


# --------------------------------------------------------------------------------------------
# evaluation


def _check_f_output(y: object, rows: int, what: str) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{what}: the function must return a tensor, got {type(y).__name__}")
    if y.dim() == 0 or y.shape[0] != rows:
        raise ValueError(
            f"{what}: the function must return one value (or one row) per input row, i.e. a "
            f"leading dimension of {rows}; got shape {tuple(y.shape)}"
        )
    _check_output_precision(y, what)
    return y


def _repeat_rows(c: Tensor, times: int) -> Tensor:
    return c if times == 1 else c.repeat(times, *([1] * (c.dim() - 1)))


def _stencil_batch(
    x: Tensor, xr: Tensor, vf: Tensor, offsets: Sequence[float], sizes: Sequence[int]
) -> Tensor:
    """The concatenated points ``[x + α_k v]_k`` of a parallel evaluation, as one tensor.

    When no gradient has to flow to ``x`` or ``v`` (the usual case: data and random directions),
    each block is written in place into one preallocated buffer by a single ``torch.add(...,
    alpha=α, out=block)`` — no per-point temporaries and no copy by ``torch.cat`` (about 3x less
    time than products, sums and a concatenation at B = 128, D = 784). Otherwise the blocks are
    built with autograd and concatenated.
    """
    tracked = torch.is_grad_enabled() and (x.requires_grad or vf.requires_grad)
    if tracked or vf.dtype != x.dtype or vf.device != x.device:
        points = [x if a == 0 else torch.add(xr, vf, alpha=a) for a in offsets]
        return torch.cat(points, 0)
    big = x.new_empty((sum(sizes), *x.shape[1:]))
    for a, block in zip(offsets, torch.split(big, list(sizes), 0), strict=True):
        if a == 0:
            block.copy_(x)
        else:
            torch.add(xr, vf, alpha=a, out=block)
    return big


def evaluate_on_line(
    f: Callable[..., Tensor],
    x: Tensor,
    v: Tensor,
    offsets: Sequence[float],
    *,
    parallel: bool = True,
    cond: Tensor | None = None,
) -> list[Tensor]:
    """Evaluate ``f(x + α v)`` for every offset ``α``; one batched call of ``f`` if ``parallel``.

    ``x`` has shape ``(B, *event)``; ``v`` has the same shape or ``(n, B, *event)`` (``n``
    directions per sample). The zero offset is evaluated once at ``x`` itself and returned with
    shape ``(B, *out)``; the others are returned with shape ``(B, *out)`` or ``(n, B, *out)``.
    ``cond`` (per-sample conditioning, e.g. a noise level) is repeated along with the points and
    passed as ``f(points, cond)``.
    """
    B = x.shape[0]
    particles = v.dim() == x.dim() + 1
    if (particles and tuple(v.shape[1:]) != tuple(x.shape)) or (
        not particles and tuple(v.shape) != tuple(x.shape)
    ):
        raise ValueError(
            f"direction v must have the shape of x {tuple(x.shape)} or (n, *x.shape); "
            f"got {tuple(v.shape)}"
        )
    n = v.shape[0] if particles else 1
    vf = v.reshape(n * B, *x.shape[1:])
    xr = _repeat_rows(x, n)
    cr = None if cond is None else _repeat_rows(cond, n)
    offsets = [float(a) for a in offsets]
    sizes = [B if a == 0 else n * B for a in offsets]
    conds = [cond if a == 0 else cr for a in offsets]

    def call(p: Tensor, c: Tensor | None) -> Tensor:
        y = f(p) if c is None else f(p, c)
        return _check_f_output(y, p.shape[0], "finite differences")

    if parallel:
        big = _stencil_batch(x, xr, vf, offsets, sizes)
        out = call(big, None if cond is None else torch.cat(conds, 0))  # type: ignore[arg-type]
        values = list(torch.split(out, sizes, 0))
    else:
        # x + αv in one kernel (torch.add's alpha) rather than a product and a sum
        points = [x if a == 0 else torch.add(xr, vf, alpha=a) for a in offsets]
        values = [call(p, c) for p, c in zip(points, conds, strict=True)]
    if particles:
        values = [
            val if a == 0 else val.reshape(n, B, *val.shape[1:])
            for a, val in zip(offsets, values, strict=True)
        ]
    return values


def directional_derivatives(
    f: Callable[..., Tensor],
    x: Tensor,
    v: Tensor,
    orders: Sequence[int],
    *,
    accuracy: int = 2,
    offsets: Sequence[Offset] | None = None,
    parallel: bool = True,
    cond: Tensor | None = None,
) -> tuple[Tensor, ...]:
    r"""Central FD estimates of ``D^T_v f(x)`` for several orders ``T`` from one set of evaluations.

    The union of the stencils' offsets is evaluated once (one batched call of ``f`` when
    ``parallel``), then each order combines its points with its exact weights. With
    ``offsets=None`` each order uses :func:`central_stencil` ``(T, accuracy)``; otherwise every
    order uses :func:`stencil` on the given offsets (e.g. ``offsets=(-1, 1), orders=(0, 1)`` gives
    ``½(f₊ + f₋) ≈ f(x)`` and ``½(f₊ − f₋) ≈ D_v f(x)`` from two evaluations, as in FD-SSM-VR).

    Args:
        f: ``f(points) -> (N, *out)`` (or ``f(points, cond)``), row-wise independent.
        x: ``(B, *event)`` base points, float32/float64.
        v: ``(B, *event)`` directions (the derivative is along ``v`` itself, not ``v/‖v‖``), or
            ``(n, B, *event)`` for ``n`` directions per sample.
        orders: derivative orders ``T ≥ 0``.
        parallel: one concatenated call of ``f`` (default) or one call per offset.
        cond: optional per-sample conditioning passed to ``f`` and repeated with the points.

    Returns:
        One tensor per order, shaped ``(B, *out)`` or ``(n, B, *out)``. No autograd graph with
        respect to ``x`` is built; gradients flow to ``f``'s parameters through the evaluations.
    """
    check_fd_precision(x, v, what="finite-difference directional derivatives")
    check_batch_coupling(f, parallel)
    key = None if offsets is None else tuple(offsets)
    union, combos = _line_plan(tuple(int(T) for T in orders), accuracy, key)
    values = evaluate_on_line(f, x, v, list(union), parallel=parallel, cond=cond)
    results = []
    for combo in combos:
        total: Tensor | None = None
        for i, w in combo:
            term = values[i] * w
            total = term if total is None else total + term
        assert total is not None
        results.append(total)
    return tuple(results)


Plan = tuple[tuple[float, ...], tuple[tuple[tuple[int, float], ...], ...]]
_PLANS: dict[tuple[object, ...], Plan] = {}


@constant_result
def _line_plan(orders: tuple[int, ...], accuracy: int, offsets: tuple[Offset, ...] | None) -> Plan:
    """The evaluation plan of :func:`directional_derivatives`, in plain floats: the sorted union
    of the stencils' offsets, and for each order its ``(index into the union, weight)`` pairs.

    Exact rational arithmetic happens here, once per configuration (cached); ``torch.compile``
    calls it at trace time and takes the result as a constant, so a compiled loss never traces
    the ``Fraction`` code.
    """
    key = (orders, accuracy, offsets)
    plan = _PLANS.get(key)
    if plan is None:
        if offsets is None:
            stencils = [central_stencil(T, accuracy) for T in orders]
        else:
            stencils = [stencil(T, offsets) for T in orders]
        union = sorted({a for s in stencils for a in s.offsets})
        index = {a: i for i, a in enumerate(union)}
        combos = tuple(
            tuple((index[a], w) for a, w in zip(s.offsets, s.float_weights, strict=True))
            for s in stencils
        )
        plan = _PLANS[key] = (tuple(float(a) for a in union), combos)
    return plan


def directional_derivative(
    f: Callable[..., Tensor],
    x: Tensor,
    v: Tensor,
    order: int,
    *,
    accuracy: int = 2,
    offsets: Sequence[Offset] | None = None,
    parallel: bool = True,
    cond: Tensor | None = None,
) -> Tensor:
    r"""Central finite-difference estimate of ``D^T_v f(x) = d^T/dt^T f(x + t v)|_{t=0}``.

    Uses the minimal central stencil of :func:`central_stencil` (T + 1 points, absolute error
    ``O(‖v‖^{T+2})``, i.e. the error falls by ``2^{T+2}`` when ``‖v‖`` is halved) unless
    ``accuracy`` or explicit ``offsets`` are given. All stencil points are evaluated in ONE batched
    call of ``f`` (``parallel=True``). See :func:`directional_derivatives` for the arguments;
    returns a tensor shaped like ``f(x)`` (or ``(n, B, *out)`` for ``n`` directions per sample).

    Example: ``directional_derivative(f, x, v, 2)`` is ``f(x+v) + f(x−v) − 2 f(x) ≈ vᵀ∇²f(x) v``.
    """
    return directional_derivatives(
        f, x, v, (order,), accuracy=accuracy, offsets=offsets, parallel=parallel, cond=cond
    )[0]

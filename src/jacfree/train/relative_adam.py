r"""RelativeAdam: Adam's statistics applied to the relative gradient in its own geometry.

The relative gradient of a square affine layer is [R_W, R_b] = Ê Ŵ (Gresele et al., NeurIPS
2020), with Ŵ = [[W, b], [0, 1]] and Ê = [ΔᵀY + cI, Δᵀ1] the gradient in multiplicative
coordinates (:mod:`jacfree.flows.relative_stats`). Plain Adam divides every *entry* of R_W by its
own running RMS. R_W's entries mix the rows of Ê through W, so this per-coordinate scaling
partly undoes the WᵀW preconditioning: its steps have a fixed absolute size (≈ lr per entry)
whatever the scale of W, where the relative geometry asks for steps proportional to W. A layer
that must grow or shrink (data on another scale, a last layer that must stretch its input)
therefore moves more slowly than exact training does with the same Adam.

RelativeAdam keeps the relative direction and takes Adam's statistics where they belong, in the
multiplicative coordinates. For each relative square affine layer, with q_i the mean square of row
i of Ê's weight block and e_b = Δᵀ1 its bias column, both measured in the backward pass:

.. math::
    v &← β_2 v + (1-β_2)\,[q,\ e_b^2] ,\qquad
        [a, a_b] = 1/(\sqrt{v/(1-β_2^t)} + ε) ,\\
    m_W &← β_1 m_W + (1-β_1)\, \mathrm{diag}(a)\, R_W ,\qquad
    m_b ← β_1 m_b + (1-β_1)\,(\mathrm{diag}(a)(R_b - e_b) + \mathrm{diag}(a_b)\, e_b) ,\\
    W &← W - \frac{η}{1-β_1^t}\, m_W ,\qquad b ← b - \frac{η}{1-β_1^t}\, m_b .

The direction is (S ∘ Ê) Ŵ with S > 0 entry by entry (S_ij = a_i in the weight columns, a_b,i in
the bias column): each step is Ŵ ← (I − η N) Ŵ with N = S ∘ Ê, whose rows have an RMS of about 1
whatever W's scale.

**Trust region.** A row RMS of 1 puts ‖ηN‖_F near η·D, which for D in the hundreds is a large
multiplicative step (0.78 at D = 784, η = 10⁻³): on MNIST-5k the smallest singular value of the
last layer then falls below 10⁻⁴ and training diverges within 60 epochs. ``max_step`` τ bounds
the step of each layer in its multiplicative coordinates: the fresh direction is scaled by

.. math::  f = \min\bigl(1,\ τ / (η\,‖N‖_F)\bigr) ,\qquad
    ‖N‖_F^2 = D \sum_i a_i^2 q_i + \sum_i a_{b,i}^2 e_{b,i}^2 ,

computed on the device from the row statistics (no host read), so that ‖ηfN‖₂ ≤ ‖ηfN‖_F ≤ τ < 1:
I − ηfN stays invertible and no step shrinks a direction of Ŵ by more than the factor 1 − τ. The
momentum averages such steps, so its step obeys the same bound (up to the drift of W between
steps). ``max_rms`` ρ instead bounds the RMS of N's entries, f = min(1, ρ√(D(D+1))/‖N‖_F), as
Adafactor clips its update. Both factors are positive scalars: S becomes fS, still positive.

The cost is O(D²) per layer in the optimiser plus O(B·D·min(B, D)) for the statistics in the
backward, so the step stays O(B·D²), with no inverse, solve or determinant.

**Fixed points.** As a map of the Euclidean gradient G = [G_W, g_b] the direction is
G ↦ (S ∘ (GŴᵀ)) Ŵ, and ⟨G, (S ∘ (GŴᵀ)) Ŵ⟩ = Σ_ij S_ij (GŴᵀ)_ij² > 0 unless G = 0: a symmetric
positive-definite preconditioner. The direction vanishes exactly where the Euclidean gradient
does, and the momentum settles at zero there: a stationary point of RelativeAdam is a stationary
point of the exact likelihood, as for plain relative gradient descent. The trust-region factor f
multiplies S by a positive scalar and changes none of this. Every other parameter (a layer that
is not a relative square affine layer) gets ordinary Adam.

It is the default optimiser of :func:`jacfree.fit` and ``jacfree train`` for a flow in relative
mode (:func:`default_optimizer`); ``fit(flow, x, optimizer=RelativeAdam(flow, lr=1e-3))`` or
:func:`make_optimizer` build it explicitly. It turns on the statistics tap of the flow's relative
layers; the flow must be a :class:`jacfree.FCFlow` whose layers are in ``"relative"`` mode when
trained (in other modes they raise). Under ``torch.distributed`` each process records its share of
Ê and the processes average it, exactly as DDP averages gradients, so a data-parallel run takes the
same steps as one process on the whole batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..flows.linear import SquareAffine
from ..flows.relative_stats import stats_of
from .optim import make_adam


class RelativeAdam(torch.optim.Optimizer):
    """Adam with its second moment taken per unit in multiplicative coordinates (module docs).

    Args:
        flow: a :class:`jacfree.FCFlow` (or any module whose square affine layers are tapped by
            its ``loss``; see :meth:`jacfree.FCFlow.enable_row_stats`).
        lr: step size η (≈ the relative size of one step of a layer).
        betas: (β₁, β₂) as in Adam.
        eps: ε as in Adam.
        max_step: τ, the largest Frobenius norm of one step of a layer in multiplicative
            coordinates (module docs); ``None``: no bound.
        max_rms: ρ, the largest RMS of the multiplicative direction's entries; ``None`` (the
            default): no bound.
    """

    def __init__(
        self,
        flow: nn.Module,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        max_step: float | None = 0.1,
        max_rms: float | None = None,
    ) -> None:
        for name, value in (("max_step", max_step), ("max_rms", max_rms)):
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be > 0 or None, got {value!r}.")
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}.")
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}.")
        enable = getattr(flow, "enable_row_stats", None)
        if enable is None:
            raise TypeError(
                f"RelativeAdam needs a flow that measures the relative gradient's row statistics "
                f"(jacfree.FCFlow); got {type(flow).__name__}. Use torch.optim.Adam for it."
            )
        self.layers: list[SquareAffine] = enable(whole=_world_size() > 1)
        paired = {id(p) for m in self.layers for p in (m.weight, m.bias)}
        others = [p for p in flow.parameters() if id(p) not in paired]
        groups: list[dict] = [{"params": [p for m in self.layers for p in (m.weight, m.bias)]}]
        super().__init__(
            groups,
            {
                "lr": lr,
                "betas": betas,
                "eps": eps,
                "max_step": max_step,
                "max_rms": max_rms,
            },
        )
        # every other parameter (an R of selfnorm layers, ...) gets ordinary Adam
        self.fallback = make_adam(others, lr, betas=betas, eps=eps) if others else None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = closure() if closure is not None else None
        group = self.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        max_step, max_rms = group["max_step"], group["max_rms"]
        for layer in self.layers:
            w, b = layer.weight, layer.bias
            if w.grad is None or b.grad is None:
                continue
            if layer.gradient != "relative":
                raise RuntimeError(
                    "RelativeAdam steps relative-gradient layers; this layer is in "
                    f"{layer.gradient!r} mode. Build torch.optim.Adam for that mode instead."
                )
            stats = layer.relative_row_stats
            if stats.shape[0] != 2:  # Ê of this process's share: average, then its statistics
                stats = stats_of(_average_over_processes(stats))
            q, e_b = stats
            state = self.state[w]
            if not state:
                state["step"] = 0  # a host counter, as in Adam's default (non-capturable) mode
                state["v"] = torch.zeros_like(stats)
                state["m_w"] = torch.zeros_like(w)
                state["m_b"] = torch.zeros_like(b)
            state["step"] += 1
            t = state["step"]
            state["v"].lerp_(torch.stack([q, e_b.square()]), 1 - b2)
            a, a_b = (state["v"] / (1 - b2**t)).sqrt_().add_(eps).reciprocal_()
            if max_step is not None or max_rms is not None:
                # ‖N‖_F² of this step's multiplicative direction N = [diag(a) Ê_W, a_b ∘ e_b]
                d = q.shape[0]
                sq = (a.square() * q).sum().mul(d).add((a_b * e_b).square().sum())
                bound = []
                if max_step is not None:
                    bound.append(max_step / lr if lr > 0 else math.inf)  # lr 0: no step
                if max_rms is not None:
                    bound.append(max_rms * math.sqrt(d * (d + 1)))
                factor = (min(bound) * sq.sqrt().clamp_min(1e-30).reciprocal()).clamp(max=1.0)
                a, a_b = a * factor, a_b * factor
            state["m_w"].mul_(b1).addcmul_(w.grad, a[:, None], value=1 - b1)
            # R_b = E_W b + e_b: the E_W part is scaled by its row, e_b by its own running RMS
            state["m_b"].mul_(b1).add_((b.grad - e_b) * a + e_b * a_b, alpha=1 - b1)
            w.add_(state["m_w"], alpha=-lr / (1 - b1**t))
            b.add_(state["m_b"], alpha=-lr / (1 - b1**t))
        if self.fallback is not None:
            self.fallback.param_groups[0]["lr"] = lr
            self.fallback.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        super().zero_grad(set_to_none)
        if self.fallback is not None:
            self.fallback.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["fallback"] = self.fallback.state_dict() if self.fallback is not None else None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        fallback = state_dict.pop("fallback", None)
        super().load_state_dict(state_dict)
        if self.fallback is not None and fallback is not None:
            self.fallback.load_state_dict(fallback)


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _average_over_processes(t: Tensor) -> Tensor:
    world = _world_size()
    if world > 1:
        torch.distributed.all_reduce(t)
        t.div_(world)
    return t


def default_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """jacfree's default optimiser for ``model``: :class:`RelativeAdam` for a flow that measures
    its relative layers' row statistics (:class:`jacfree.FCFlow`) and has a square affine layer
    in ``"relative"`` mode, Adam (:func:`~jacfree.train.optim.make_adam`) for every other model."""
    layers = getattr(model, "affine_layers", [])
    relative = any(getattr(m, "gradient", None) == "relative" for m in layers)
    if relative and callable(getattr(model, "enable_row_stats", None)):
        return RelativeAdam(model, lr=lr)
    return make_adam(model.parameters(), lr)


def make_optimizer(name: str, model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """The optimiser called ``name`` for ``model``: ``"default"`` (:func:`default_optimizer`),
    ``"adam"`` or ``"relative-adam"``."""
    if name == "default":
        return default_optimizer(model, lr)
    if name == "adam":
        return make_adam(model.parameters(), lr)
    if name == "relative-adam":
        return RelativeAdam(model, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; choose 'default', 'adam' or 'relative-adam'.")

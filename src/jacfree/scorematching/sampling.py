r"""Langevin dynamics and annealed Langevin dynamics for energies and score networks.

**Langevin dynamics** (unadjusted, ULA) with step size ``h``:

.. math::  x_{t+1} = x_t + \tfrac h2\, s(x_t) + \sqrt h\, z_t,\qquad z_t \sim \mathcal N(0, I),

with ``s = ∇ₓ log p`` (``−∇ₓE`` for an energy, :func:`energy_score`). For small ``h`` and many
steps ``x_t`` approaches ``p``; the stationary law of ULA is biased by ``O(h)`` (for
``N(μ, τ²)`` it is ``N(μ, τ²/(1 − h/(4τ²)))``).

**Annealed Langevin dynamics** (Song & Ermon, NeurIPS 2019), for a noise-conditional score network
``s(x, σ)`` and levels ``σ_1 > … > σ_L``: run ``T`` Langevin steps at every level with step
``α_i = ε · σ_i² / σ_L²`` and the score ``s(x, σ_i)``, from coarse to fine, and optionally finish
with one denoising step ``x + σ_L² s(x, σ_L)`` (Tweedie's formula; Jolicoeur-Martineau et al.
2021). Song & Ermon use ``T = 100``, ``ε = 2·10⁻⁵`` on CIFAR-10.

Every function is seedable (``generator``) and creates its noise on the device and with the dtype
of the starting point ``x0``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .._checks import check_positive, check_positive_int
from .convention import Energy, score

__all__ = ["LangevinSampled", "annealed_langevin", "energy_score", "langevin"]

ScoreFn = Callable[[Tensor], Tensor]


def _check_start(x0: object) -> Tensor:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise ValueError(
            "x0 must be a floating-point tensor of starting points, shape (n, *event); e.g. "
            "torch.randn(n, d) or torch.rand(n, 1, 28, 28)."
        )
    return x0


def _check_steps(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {n!r}.")
    return n


def _noise(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)


def energy_score(energy: Energy) -> ScoreFn:
    """The score function ``x ↦ −∇ₓE(x)`` of an energy, for :func:`langevin` (no graph kept)."""

    def s(x: Tensor) -> Tensor:
        return score(energy, x, create_graph=False)

    return s


def langevin(
    score_fn: ScoreFn,
    x0: Tensor,
    step_size: float,
    n_steps: int,
    *,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    r"""Unadjusted Langevin dynamics ``x ← x + (h/2) s(x) + √h z`` for ``n_steps`` steps.

    Args:
        score_fn: ``s(x) -> x.shape``, the score ``∇ₓ log p`` (use :func:`energy_score` for an
            energy ``E``, or a score network).
        x0: starting points, shape ``(n, *event)``; not modified.
        step_size: ``h > 0``.
        n_steps: number of steps (0 returns a copy of ``x0``).
        generator: a ``torch.Generator`` on ``x0``'s device for reproducible noise.
        clamp: optional ``(lo, hi)`` box the iterates are clipped to after every step.

    Returns:
        The final iterate, detached, same shape, device and dtype as ``x0``.
    """
    x = _check_start(x0).detach().clone()
    h = check_positive(step_size, "step_size")
    n_steps = _check_steps(n_steps, "n_steps")
    for _ in range(n_steps):
        with torch.no_grad():
            s = score_fn(x)
        if tuple(s.shape) != tuple(x.shape):
            raise ValueError(
                f"score_fn must return the shape of its input {tuple(x.shape)}, got "
                f"{tuple(s.shape)}; for an energy use energy_score(energy)."
            )
        x = (x + 0.5 * h * s.detach() + math.sqrt(h) * _noise(x, generator)).detach()
        if clamp is not None:
            x = x.clamp(*clamp)
    return x


def annealed_langevin(
    score_net: Callable[[Tensor, Tensor], Tensor],
    x0: Tensor,
    sigmas: Sequence[float] | Tensor,
    *,
    n_steps_each: int = 100,
    step_lr: float = 2e-5,
    denoise: bool = True,
    generator: torch.Generator | None = None,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019) for a noise-conditional score network.

    For each level ``σ_i`` (from the largest to the smallest) run ``n_steps_each`` Langevin steps
    with step ``α_i = step_lr · σ_i²/σ_L²`` and score ``s(x, σ_i)`` (``σ_i`` passed as a tensor of
    shape ``(n,)``); then, if ``denoise``, return ``x + σ_L² s(x, σ_L)``.

    Args:
        score_net: ``s(x, sigma) -> x.shape`` with ``sigma`` of shape ``(n,)``.
        x0: starting points ``(n, *event)`` (e.g. uniform noise for images in [0, 1]).
        sigmas: noise levels; sorted from the largest to the smallest here.
        n_steps_each: Langevin steps per level ``T``.
        step_lr: ``ε``, the step size at the smallest level.
        denoise: finish with the denoising step.
        generator: a ``torch.Generator`` on ``x0``'s device for reproducible noise.
        clamp: optional ``(lo, hi)`` box the iterates are clipped to after every step.
    """
    x = _check_start(x0).detach().clone()
    lr = check_positive(step_lr, "step_lr")
    n_steps_each = _check_steps(n_steps_each, "n_steps_each")
    levels = torch.as_tensor(sigmas, dtype=x.dtype, device=x.device).flatten()
    if levels.numel() == 0 or not bool((levels > 0).all()):
        raise ValueError(f"sigmas must be a non-empty sequence of positive levels, got {sigmas!r}")
    levels = levels.sort(descending=True).values
    smallest = float(levels[-1])
    n = x.shape[0]
    for sigma in levels:
        step = lr * float(sigma) ** 2 / smallest**2
        cond = sigma.expand(n)

        def s(y: Tensor, cond: Tensor = cond) -> Tensor:
            return score_net(y, cond)

        x = langevin(s, x, step, n_steps_each, generator=generator, clamp=clamp)
    if denoise:
        with torch.no_grad():
            x = x + smallest**2 * score_net(x, levels[-1].expand(n))
        if clamp is not None:
            x = x.clamp(*clamp)
    return x.detach()


class LangevinSampled:
    """``sample(n)`` for an energy model by unadjusted Langevin dynamics on ``exp(−E)``.

    A model class provides :meth:`_langevin_start` (the ``n`` start points, drawn with
    ``generator``, on its device and dtype) and may override :meth:`_langevin_energy` (the
    energy to sample; default: the model itself).
    """

    def _langevin_start(self, n: int, generator: torch.Generator | None) -> Tensor:
        raise NotImplementedError

    def _langevin_energy(self) -> Energy:
        return self  # type: ignore[return-value]

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        steps: int = 1000,
        step_size: float = 1e-2,
    ) -> Tensor:
        """``n`` approximate samples: ``steps`` steps of :func:`langevin` of size ``step_size``
        from the model's start distribution (see the model class)."""
        check_positive_int(n, "n")
        x0 = self._langevin_start(n, generator)
        score = energy_score(self._langevin_energy())
        return langevin(score, x0, step_size, steps, generator=generator)

r"""Annealed importance sampling (AIS) of the marginal likelihood of a latent-variable model.

For a decoder ``p(x|z)`` and the prior ``p(z) = N(0, I)``, AIS (Neal 2001) estimates

.. math::

    \log p(x) = \log \int p(x \mid z)\, p(z)\, dz

by moving ``K`` chains per ``x`` from the prior to the posterior ``p(z|x) ∝ p(x|z) p(z)`` through
the intermediate distributions ``π_t(z) ∝ p(z)\, p(x|z)^{β_t}``, ``0 = β_0 < β_1 < … < β_T = 1``.
A chain starts at ``z_0 ~ p(z)`` (exact), and at every step ``t = 1..T`` adds
``(β_t − β_{t−1}) log p(x | z_{t−1})`` to its log-weight before one HMC transition that leaves
``π_t`` invariant. With ``w_k = exp(log w_k)`` the estimate is

.. math::

    \widehat{p(x)} = \frac1K \sum_k w_k, \qquad \mathbb E[\widehat{p(x)}] = p(x),

unbiased for ``p(x)``, so ``log \widehat{p(x)}`` is a stochastic **lower** bound of ``log p(x)``
(Jensen) that tightens as ``T`` grows. Its standard error is the delta-method one,
``se = std(w) / (mean(w) √K)`` (computed on weights scaled by their maximum).

The schedule is the sigmoid one of Grosse et al. (2015) (the protocol of Wu et al. 2017, "On the
quantitative analysis of decoder-based generative models"): ``β_t ∝ σ(δ(2t/T − 1))`` rescaled to
[0, 1], δ = 4. Transitions: HMC with ``leapfrog`` steps whose step size adapts per chain towards an
acceptance rate of 0.65 (×1.02 after an acceptance probability above it, ×0.98 below, kept in
[1e-4, 0.5]) as in Wu et al. — but in a separate *pilot* run: a step size that adapts to the
chain's own state makes the kernel state-dependent and biases the weights (measured upward here
on a linear-Gaussian model), so the estimate itself uses the pilot's step-size schedule, fixed
before it starts. Every transition then is a Metropolis–Hastings-corrected HMC kernel that leaves
its ``π_t`` invariant and the weights are exact importance weights on the extended space.

The loop reads no tensor value on the host: the whole estimate is tensor code on the decoder's
device, with torch RNG on that device (pass a ``torch.Generator`` for reproducible numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["AISResult", "ais_log_marginal", "sigmoid_schedule"]

#: ``log_likelihood(z) -> log p(x | z)``: ``z`` of shape ``(K, B, d_z)`` (K chains for each of B
#: data points), result ``(K, B)``.
LogLikelihood = Callable[[Tensor], Tensor]

TARGET_ACCEPT = 0.65
ADAPT_UP, ADAPT_DOWN = 1.02, 0.98


class AISResult(NamedTuple):
    """AIS estimates for a batch of ``B`` data points.

    Attributes:
        log_px: ``log p̂(x)``, shape ``(B,)`` (nats).
        stderr: its delta-method standard error over the ``K`` chains, ``(B,)``.
        log_w: the chains' log-weights, ``(K, B)``.
        accept: mean HMC acceptance rate per data point, ``(B,)``.
    """

    log_px: Tensor
    stderr: Tensor
    log_w: Tensor
    accept: Tensor


def sigmoid_schedule(steps: int, delta: float = 4.0, *, dtype: torch.dtype = torch.float64,
                     device: torch.device | str | None = None) -> Tensor:  # fmt: skip
    """``steps + 1`` inverse temperatures ``0 = β_0 < … < β_T = 1`` of the sigmoid schedule
    (Grosse et al. 2015): dense near both ends, where the intermediate distributions change most."""
    if steps < 1:
        raise ValueError(f"AIS needs at least 1 intermediate step, got steps={steps}.")
    s = torch.sigmoid(delta * (2 * torch.linspace(0, 1, steps + 1, dtype=torch.float64) - 1))
    beta = (s - s[0]) / (s[-1] - s[0])
    return beta.to(dtype=dtype, device=device)


def _value_and_grad(log_likelihood: LogLikelihood, z: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        zg = z.detach().requires_grad_(True)
        ll = log_likelihood(zg)
        (g,) = torch.autograd.grad(ll.sum(), zg)
    return ll.detach(), g.detach()


def ais_log_marginal(
    log_likelihood: LogLikelihood,
    batch: int,
    z_dim: int,
    *,
    chains: int = 16,
    steps: int = 500,
    leapfrog: int = 10,
    step_size: float = 0.05,
    pilot_chains: int = 1,
    like: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> AISResult:
    r"""AIS estimate of ``log p(x) = log ∫ p(x|z) N(z; 0, I) dz`` for ``batch`` data points.

    Args:
        log_likelihood: ``z (K, B, d_z) -> log p(x_b | z_kb) (K, B)``, differentiable in ``z``
            (the caller closes over the data ``x``).
        batch: ``B``, the number of data points.
        z_dim: ``d_z``.
        chains: ``K`` independent chains per data point.
        steps: ``T``, the number of intermediate distributions (annealing steps).
        leapfrog: leapfrog steps per HMC transition.
        step_size: initial HMC step size.
        pilot_chains: chains per data point of the pilot run that tunes the step sizes (0: keep
            ``step_size`` throughout).
        like: a tensor whose device and dtype the chains use (default: float32 on the CPU).
        generator: a ``torch.Generator`` on that device for reproducible chains.

    Returns:
        :class:`AISResult` ``(log_px (B,), stderr (B,), log_w (K, B), accept (B,))``.
    """
    for name, value in (("batch", batch), ("z_dim", z_dim), ("chains", chains),
                        ("leapfrog", leapfrog)):  # fmt: skip
        if int(value) < 1:
            raise ValueError(f"ais_log_marginal: {name} must be at least 1, got {value}.")
    if not step_size > 0:
        raise ValueError(f"ais_log_marginal: step_size must be positive, got {step_size}.")
    dtype = like.dtype if like is not None else torch.float32
    device = like.device if like is not None else torch.device("cpu")
    betas = sigmoid_schedule(steps, dtype=dtype, device=device)
    eps0 = torch.full((1, batch, 1), float(step_size), dtype=dtype, device=device)
    if pilot_chains > 0:
        # the pilot's chains adapt their step sizes; the main run reuses the pilot's schedule
        # (geometric mean over pilot chains), fixed in advance, so its kernels stay exact
        _, _, trace = _anneal(
            log_likelihood, betas, z_dim, pilot_chains, eps0, leapfrog, True, generator
        )
        schedule = trace.log().mean(1, keepdim=True).exp()  # (T, 1, B, 1)
    else:
        schedule = eps0.expand(steps, 1, batch, 1)
    log_w, accepted, _ = _anneal(
        log_likelihood, betas, z_dim, chains, schedule, leapfrog, False, generator
    )
    log_px = torch.logsumexp(log_w, 0) - math.log(chains)
    w = torch.exp(log_w - log_w.max(0).values)  # scaled weights, max 1
    mean = w.mean(0)
    std = w.std(0) if chains > 1 else torch.zeros_like(mean)
    stderr = std / (mean * math.sqrt(chains))
    return AISResult(log_px, stderr, log_w, accepted.mean(0) / steps)


def _anneal(
    log_likelihood: LogLikelihood,
    betas: Tensor,
    z_dim: int,
    chains: int,
    eps: Tensor,
    leapfrog: int,
    adapt: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Run ``chains`` AIS chains per data point along ``betas``; HMC step sizes ``eps``: the
    start ``(1, B, 1)`` when ``adapt`` (then adapted per chain), else a fixed schedule
    ``(T, 1, B, 1)``. Returns the log-weights ``(K, B)``, the acceptance counts ``(K, B)`` and
    the step sizes used ``(T, K, B, 1)``."""
    dtype, device = betas.dtype, betas.device
    steps, batch = len(betas) - 1, eps.shape[-2]
    shape = (chains, batch, z_dim)

    def randn() -> Tensor:
        return torch.randn(shape, dtype=dtype, device=device, generator=generator)

    z = randn()  # exact draws from π_0 = p(z)
    ll, g = _value_and_grad(log_likelihood, z)
    log_w = torch.zeros(chains, batch, dtype=dtype, device=device)
    accepted = torch.zeros(chains, batch, dtype=dtype, device=device)
    step = eps.expand(chains, batch, 1) if adapt else eps[0]
    used = []
    for t in range(1, steps + 1):
        beta, beta_prev = betas[t], betas[t - 1]
        log_w = log_w + (beta - beta_prev) * ll
        if not adapt:
            step = eps[t - 1]
        used.append(step.expand(chains, batch, 1))
        # one HMC transition leaving π_t(z) ∝ N(z; 0, I) p(x|z)^β invariant; U = −log π_t
        p0 = randn()
        u0 = 0.5 * (z * z).sum(-1) - beta * ll
        p = p0 - 0.5 * step * (z - beta * g)
        zn, lln, gn = z, ll, g
        for k in range(leapfrog):
            zn = zn + step * p
            lln, gn = _value_and_grad(log_likelihood, zn)
            p = p - (step if k < leapfrog - 1 else 0.5 * step) * (zn - beta * gn)
        u1 = 0.5 * (zn * zn).sum(-1) - beta * lln
        log_ratio = (u0 + 0.5 * (p0 * p0).sum(-1)) - (u1 + 0.5 * (p * p).sum(-1))
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf)  # a diverged proposal: reject
        u = torch.rand(chains, batch, dtype=dtype, device=device, generator=generator)
        take = torch.log(u) < log_ratio
        z = torch.where(take[..., None], zn, z)
        ll = torch.where(take, lln, ll)
        g = torch.where(take[..., None], gn, g)
        accepted = accepted + take.to(dtype)
        if adapt:
            prob = log_ratio.clamp(max=0.0).exp()
            factor = torch.where(prob > TARGET_ACCEPT, ADAPT_UP, ADAPT_DOWN)
            step = (step * factor[..., None]).clamp(1e-4, 0.5)
    return log_w, accepted, torch.stack(used)

r"""Multiscale DSM (``mdsm``) and its finite-difference form (``fd_mdsm``), float64.

Energy E(x) = ½(x−μ)ᵀP(x−μ), data x ~ N(m, S), per-sample noise σ_b, target level σ0:

    E[loss_b] = ½[tr(PSP) + ‖P(m−μ)‖² + σ_b²‖P − I/σ0²‖²_F] / σ_b²

(the residual is r = −P(x−μ) + σ_b(I/σ0² − P)n). FD is exact for quadratics: per sample and
direction it equals the autograd value d(uᵀr)²/(2σ_b²) at every ε.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacfree.scorematching import losses
from test_sm_gaussian import Quadratic

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def spd(d: int, g: torch.Generator, shift: float) -> torch.Tensor:
    A = torch.randn(d, d, generator=g, dtype=DT)
    return A @ A.T / d + shift * torch.eye(d, dtype=DT)


def problem(d: int = 3, N: int = 40000, seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    S, m = spd(d, g, 0.5), torch.randn(d, generator=g, dtype=DT)
    P, mu = spd(d, g, 0.3), torch.randn(d, generator=g, dtype=DT)
    x = m + torch.randn(N, d, generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    return Quadratic(mu, P), x, m, S, P, mu


def expected(P, mu, m, S, sig: torch.Tensor, sigma0: float) -> torch.Tensor:
    d = S.shape[0]
    base = torch.trace(P @ S @ P) + (P @ (m - mu)).pow(2).sum()
    noise = (P - torch.eye(d, dtype=DT) / sigma0**2).pow(2).sum()
    return 0.5 * (base + sig**2 * noise) / sig**2


def assert_mc(values: torch.Tensor, target: torch.Tensor, z: float = 4.5):
    values = values.detach()
    diff = values - target
    se = float(diff.std() / diff.numel() ** 0.5)
    assert abs(float(diff.mean())) < z * se, (float(values.mean()), float(target.mean()), se)


def test_mdsm_sigmas_linspace_and_random():
    x = torch.zeros(5, 2, dtype=DT)
    assert torch.allclose(losses.mdsm_sigmas(x), torch.linspace(0.05, 1.2, 5, dtype=DT))
    g = torch.Generator().manual_seed(0)
    r = losses.mdsm_sigmas(torch.zeros(4000, 2), (0.2, 0.7), random=True, generator=g)
    assert r.dtype == torch.float32 and r.min() >= 0.2 and r.max() <= 0.7
    assert abs(float(r.mean()) - 0.45) < 0.01
    assert float(r.std()) > 0.1  # not a constant


@pytest.mark.parametrize("random", [False, True])
def test_mdsm_matches_closed_form(random):
    model, x, m, S, P, mu = problem()
    g = torch.Generator().manual_seed(1)
    sig = losses.mdsm_sigmas(x, (0.05, 1.2), random=random, generator=g)
    vals = losses.mdsm(model, x, sigma0=0.1, noise_levels=sig, reduction="none", generator=g)
    assert_mc(vals, expected(P, mu, m, S, sig, 0.1))
    # the default draws the linspace itself
    vals = losses.mdsm(model, x, (0.05, 1.2), 0.1, reduction="none", generator=g)
    assert_mc(vals, expected(P, mu, m, S, torch.linspace(0.05, 1.2, len(x), dtype=DT), 0.1))


def test_fd_mdsm_matches_closed_form():
    model, x, m, S, P, mu = problem()
    g = torch.Generator().manual_seed(2)
    vals = losses.fd_mdsm(model, x, (0.3, 0.9), 0.5, eps=0.7, reduction="none", generator=g)
    sig = torch.linspace(0.3, 0.9, len(x), dtype=DT)
    assert_mc(vals, expected(P, mu, m, S, sig, 0.5))


def test_closed_form_test_can_fail():
    """A wrong target level moves the estimate far outside the Monte-Carlo band."""
    model, x, m, S, P, mu = problem()
    vals = losses.mdsm(model, x, sigma0=0.1, reduction="none")
    sig = torch.linspace(0.05, 1.2, len(x), dtype=DT)
    with pytest.raises(AssertionError):
        assert_mc(vals, expected(P, mu, m, S, sig, 0.12))


@pytest.mark.parametrize("eps", [0.01, 1.0, 5.0])
def test_fd_mdsm_equals_autograd_per_sample_for_quadratics(eps):
    model, x, *_ = problem(d=4, N=64)
    g = torch.Generator().manual_seed(3)
    n = torch.randn(x.shape, generator=g, dtype=DT)
    u = torch.randn(x.shape, generator=g, dtype=DT)
    u = u / u.norm(dim=1, keepdim=True)
    sig = losses.mdsm_sigmas(x, (0.05, 1.2))
    sigma0 = 0.1
    fd = losses.fd_mdsm(model, x, sigma0=sigma0, eps=eps, noise=n, directions=u, reduction="none")
    xt = x + sig[:, None] * n
    r = losses.score(model, xt) + (xt - x) / sigma0**2
    want = x.shape[1] * (u * r).sum(1) ** 2 / (2 * sig**2)
    torch.testing.assert_close(fd, want, rtol=1e-9, atol=1e-9)
    # and the direction average d(uᵀr)² → ‖r‖² is mdsm's value
    full = losses.mdsm(model, x, sigma0=sigma0, noise=n, reduction="none")
    torch.testing.assert_close(full, 0.5 * (r * r).sum(1) / sig**2)


def test_fd_mdsm_parallel_equals_sequential_values_and_gradients():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 16), nn.Softplus(), nn.Linear(16, 1)).double()
    energy = lambda y: net(y).squeeze(-1)  # noqa: E731
    x = torch.randn(32, 5, dtype=DT)
    n = torch.randn(x.shape, dtype=DT)
    u = torch.nn.functional.normalize(torch.randn(x.shape, dtype=DT), dim=1)
    grads = []
    outs = []
    for parallel in (True, False):
        net.zero_grad()
        out = losses.fd_mdsm(energy, x, noise=n, directions=u, parallel=parallel)
        out.backward()
        outs.append(out.detach())
        grads.append([p.grad.clone() for p in net.parameters()])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=0)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def flat_grad(net: nn.Module) -> torch.Tensor:
    # the output bias does not enter the score: no gradient there
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in net.parameters()]
    return torch.cat([g.flatten() for g in grads])


def test_fd_mdsm_gradient_approaches_mdsm_gradient():
    """Non-quadratic energy: averaged over many directions, FD-MDSM's parameter gradient tends
    to the autograd MDSM gradient (bias O(ε²), here small against the tolerance)."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 1)).double()
    energy = lambda y: net(y).squeeze(-1)  # noqa: E731
    x = torch.randn(16, 3, dtype=DT)
    n = torch.randn(x.shape, dtype=DT)
    net.zero_grad()
    losses.mdsm(energy, x, (0.3, 0.6), 0.5, noise=n).backward()
    g_ref = flat_grad(net)
    net.zero_grad()
    gen = torch.Generator().manual_seed(0)
    losses.fd_mdsm(
        energy, x, (0.3, 0.6), 0.5, eps=0.01, noise=n, n_particles=4000, generator=gen
    ).backward()
    g_fd = flat_grad(net)
    assert float((g_fd - g_ref).norm() / g_ref.norm()) < 0.05


def test_mdsm_guards():
    x = torch.randn(4, 3)
    e = lambda y: (y * y).sum(-1)  # noqa: E731
    with pytest.raises(ValueError, match="sigmas must be a pair"):
        losses.mdsm(e, x, sigmas=(0.5, 0.1))
    with pytest.raises(ValueError, match="sigma0 must be a positive"):
        losses.fd_mdsm(e, x, sigma0=0.0)
    with pytest.raises(ValueError, match="noise_levels"):
        losses.mdsm(e, x, noise_levels=torch.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        losses.fd_mdsm(e, x.half())
    with pytest.raises(ValueError, match="BatchNorm"):
        losses.fd_mdsm(nn.Sequential(nn.BatchNorm1d(3), nn.Flatten(0)), x)

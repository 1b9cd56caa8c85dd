r"""Every score-matching estimator against the Gaussian closed form (float64).

Energy E(x) = ½(x−μ)ᵀP(x−μ) (log p̃ = −E), data x ~ N(m, S):

    J  = ½ tr(PSP) + ½‖P(m−μ)‖² − tr P                       (every SM-type estimator)
    J_DSM(σ) = J with S → S + σ²I, plus d/(2σ²)               (dsm, fd_dsm, dsm_scorenet)

The finite-difference forms are exact for quadratics, so for a fixed direction their per-sample
values do not depend on ε and equal the autograd per-direction values.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacfree.scorematching import fd, losses
from jacfree.scorematching.convention import ScoreNetModel
from jacfree.scorematching.objectives import SM_OBJECTIVES, Objective

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class Quadratic(nn.Module):
    """E(x) = ½(x−μ)ᵀP(x−μ) with P = (W + Wᵀ)/2."""

    def __init__(self, mu: torch.Tensor, P: torch.Tensor):
        super().__init__()
        self.mu = nn.Parameter(mu.clone())
        self.W = nn.Parameter(P.clone())

    @property
    def P(self) -> torch.Tensor:
        return 0.5 * (self.W + self.W.T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x - self.mu
        return 0.5 * ((y @ self.P) * y).sum(-1)

    def score(self, x: torch.Tensor) -> torch.Tensor:  # hand-written −∇E, used as a score network
        return -(x - self.mu) @ self.P


def spd(d: int, g: torch.Generator, shift: float) -> torch.Tensor:
    A = torch.randn(d, d, generator=g, dtype=DT)
    return A @ A.T / d + shift * torch.eye(d, dtype=DT)


def problem(d: int = 4, N: int = 20000, seed: int = 11):
    g = torch.Generator().manual_seed(seed)
    S, m = spd(d, g, 0.5), torch.randn(d, generator=g, dtype=DT)
    P, mu = spd(d, g, 0.3), torch.randn(d, generator=g, dtype=DT)
    x = m + torch.randn(N, d, generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    return Quadratic(mu, P), x, m, S


def closed_form(P, mu, m, S) -> float:
    return float(0.5 * torch.trace(P @ S @ P) + 0.5 * (P @ (m - mu)).pow(2).sum() - torch.trace(P))


def closed_form_dsm(P, mu, m, S, sigma: float) -> float:
    d = S.shape[0]
    smoothed = S + sigma**2 * torch.eye(d, dtype=DT)
    return closed_form(P, mu, m, smoothed) + d / (2 * sigma**2)


def assert_mc(values: torch.Tensor, target: float, z: float = 4.5):
    values = values.detach()
    se = float(values.std() / values.numel() ** 0.5)
    assert abs(float(values.mean()) - target) < z * se, (float(values.mean()), target, se)


def _registered(o: Objective):
    return lambda q, x, **kw: o(q if o.model == "energy" else q.score, x, reduction="none", **kw)


# every registered SM-type objective (default settings), then options the registry leaves at
# their defaults
SM_ESTIMATORS = {
    **{
        f"{o.model}-{o.name}": _registered(o)
        for o in SM_OBJECTIVES
        if not {"sigma", "sigmas"} & set(o.reads)
    },
    "ssm_gaussian": lambda q, x: losses.ssm(q, x, projection="gaussian", reduction="none"),
    "ssm_sphere_2particles": lambda q, x: losses.ssm(
        q, x, projection="sphere", n_particles=2, reduction="none"
    ),
    "fd_ssm_3particles_sequential": lambda q, x: losses.fd_ssm(
        q, x, 0.5, n_particles=3, parallel=False, reduction="none"
    ),
}


@pytest.mark.parametrize("name", list(SM_ESTIMATORS))
def test_sm_estimators_match_the_closed_form(name: str):
    q, x, m, S = problem()
    J = closed_form(q.P.detach(), q.mu.detach(), m, S)
    values = SM_ESTIMATORS[name](q, x)
    assert values.shape == (x.shape[0],)
    assert_mc(values, J)
    scalar = SM_ESTIMATORS[name](q, x[:64]).mean()
    assert scalar.dim() == 0


def test_exact_sm_is_exact_per_sample():
    q, x, _, _ = problem(N=200)
    P, mu = q.P.detach(), q.mu.detach()
    per_sample = -torch.trace(P) + 0.5 * ((x - mu) @ P).pow(2).sum(-1)
    torch.testing.assert_close(losses.exact_sm(q, x, reduction="none"), per_sample)
    terms = losses.exact_sm(q, x, return_terms=True)
    torch.testing.assert_close(terms.curvature, -torch.trace(P))
    torch.testing.assert_close(terms.loss, terms.curvature + terms.norm)


@pytest.mark.parametrize("sigma", [0.3, 1.5])
def test_dsm_estimators_match_the_closed_form(sigma: float):
    q, x, m, S = problem(seed=5)
    target = closed_form_dsm(q.P.detach(), q.mu.detach(), m, S, sigma)
    for o in SM_OBJECTIVES:
        if "sigma" in o.reads:  # dsm, fd_dsm, dsm_scorenet
            assert_mc(_registered(o)(q, x, sigma=sigma), target)
    assert_mc(losses.fd_dsm(q, x, sigma, 2.0, n_particles=2, reduction="none"), target)


def test_annealed_dsm_matches_the_sigma_squared_weighted_closed_form():
    q, x, m, S = problem(seed=6)
    P, mu = q.P.detach(), q.mu.detach()
    sigmas = [1.0, 0.5, 0.1]
    # E over a uniformly drawn level of σ_i² · J_DSM(σ_i)
    target = sum(s**2 * closed_form_dsm(P, mu, m, S, s) for s in sigmas) / len(sigmas)
    assert_mc(losses.dsm(q, x, sigmas, reduction="none"), target)
    assert_mc(losses.fd_dsm(q, x, torch.tensor(sigmas), reduction="none"), target)
    assert_mc(losses.dsm_scorenet(q.score, x, sigmas, reduction="none"), target)
    # explicit levels: per-sample weighting by σ_b²
    levels = torch.randint(3, (x.shape[0],))
    noise = torch.randn_like(x)
    a = losses.dsm(q, x, sigmas, levels=levels, noise=noise, reduction="none")
    sig = torch.tensor(sigmas, dtype=DT)[levels]
    b = torch.stack(
        [
            sig[i] ** 2 * losses.dsm(q, x[i : i + 1], float(sig[i]), noise=noise[i : i + 1])
            for i in range(5)
        ]
    )
    torch.testing.assert_close(a[:5], b)


def test_noise_conditional_models_receive_the_per_sample_sigma():
    q, x, m, S = problem(N=20000, seed=8)
    P, mu = q.P.detach(), q.mu.detach()
    seen = []

    def energy(y, sigma):  # the right precision for each noise level: (S + σ²I)⁻¹
        seen.append(sigma.shape)
        prec = torch.linalg.inv(S + sigma.view(-1, 1, 1) ** 2 * torch.eye(4, dtype=DT))
        z = y - m
        return 0.5 * torch.einsum("bi,bij,bj->b", z, prec, z)

    sigmas = [0.8, 0.2]
    values = losses.fd_dsm(energy, x, sigmas, noise_conditional=True, reduction="none")
    assert seen == [(2 * x.shape[0],)]  # one batched call, σ repeated for x̃ ± v
    # at the optimum, σ² J_DSM(σ) = σ²(−½ tr (S+σ²I)⁻¹ + d/(2σ²))
    target = 0.0
    for s in sigmas:
        Ss = S + s**2 * torch.eye(4, dtype=DT)
        target += s**2 * float(-0.5 * torch.trace(torch.linalg.inv(Ss)) + 4 / (2 * s**2))
    assert_mc(values, target / len(sigmas))
    del P, mu


@pytest.mark.parametrize("kind", ["fd_ssm", "fd_ssm_vr", "fd_ssm_scorenet", "fd_dsm"])
def test_fd_forms_are_exact_for_quadratics_at_every_eps(kind: str):
    q, x, _, _ = problem(N=64)
    noise = torch.randn_like(x)
    u = fd.sphere_directions(x)
    results = []
    for eps in (0.01, 1.0, 5.0):
        if kind == "fd_ssm":
            r = losses.fd_ssm(q, x, eps, directions=u, reduction="none")
        elif kind == "fd_ssm_vr":
            r = losses.fd_ssm_vr(q.score, x, eps, directions=u, reduction="none")
        elif kind == "fd_ssm_scorenet":  # the non-VR form from the two score evaluations
            r = losses.fd_ssm(ScoreNetModel(q.score), x, eps, directions=u, reduction="none")
        else:
            r = losses.fd_dsm(q, x, 0.4, eps, directions=u, noise=noise, reduction="none")
        results.append(r)
    for r in results[1:]:
        torch.testing.assert_close(r, results[0], rtol=1e-9, atol=1e-9)
    # ... and equal to the autograd per-direction values (SSM with v = √d u)
    v = u * x.shape[1] ** 0.5
    if kind == "fd_ssm":
        ref = losses.ssm(q, x, v=v, reduction="none")
    elif kind == "fd_ssm_vr":
        ref = losses.ssm_scorenet(q.score, x, vr=True, v=v, reduction="none")
    elif kind == "fd_ssm_scorenet":
        ref = losses.ssm_scorenet(q.score, x, vr=False, v=v, reduction="none")
    else:
        xt = x + 0.4 * noise
        r_vec = q.score(xt).detach() + noise / 0.4
        ref = 0.5 * x.shape[1] * (u * r_vec).sum(-1) ** 2
    torch.testing.assert_close(results[0], ref.detach(), rtol=1e-9, atol=1e-9)


def test_fd_ssm_training_recovers_mean_and_precision():
    d, N = 3, 2000
    g = torch.Generator().manual_seed(2)
    S, m = spd(d, g, 0.5), torch.randn(d, generator=g, dtype=DT)
    x = m + torch.randn(N, d, generator=g, dtype=DT) @ torch.linalg.cholesky(S).T
    m_hat = x.mean(0)
    S_hat = (x - m_hat).T @ (x - m_hat) / N
    q = Quadratic(torch.zeros(d, dtype=DT), torch.eye(d, dtype=DT))
    steps = 300
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(steps):
        opt.zero_grad()
        losses.fd_ssm(q, x, eps=0.5, n_particles=4, generator=g).backward()
        opt.step()
        sched.step()
    P = q.P.detach()
    # the empirical SM minimiser is (m̂, Ŝ⁻¹); the directions only add optimisation noise
    torch.testing.assert_close(q.mu.detach(), m_hat, atol=0.03, rtol=0)
    torch.testing.assert_close(P, torch.linalg.inv(S_hat), atol=0.03, rtol=0)
    torch.testing.assert_close(P, torch.linalg.inv(S), atol=0.15, rtol=0)
    # value at the optimum: −½ tr(S⁻¹)
    optimum = -0.5 * torch.trace(torch.linalg.inv(S_hat)).item()
    assert losses.exact_sm(q, x).item() == pytest.approx(optimum, abs=0.01)


def test_image_shaped_inputs_equal_flattened_ones():
    d = 2 * 3 * 3
    g = torch.Generator().manual_seed(4)
    q = Quadratic(torch.randn(d, generator=g, dtype=DT), spd(d, g, 0.5))
    x = torch.randn(10, 2, 3, 3, generator=g, dtype=DT)
    u = fd.sphere_directions(x)

    def img_energy(y):
        return q(y.flatten(1))

    def img_score(y):
        return q.score(y.flatten(1)).view_as(y)

    pairs = [
        (
            losses.fd_ssm(img_energy, x, directions=u, reduction="none"),
            losses.fd_ssm(q, x.flatten(1), directions=u.flatten(1), reduction="none"),
        ),
        (
            losses.fd_ssm_vr(img_score, x, directions=u, reduction="none"),
            losses.fd_ssm_vr(q.score, x.flatten(1), directions=u.flatten(1), reduction="none"),
        ),
        (
            losses.exact_sm(img_energy, x, reduction="none"),
            losses.exact_sm(q, x.flatten(1), reduction="none"),
        ),
    ]
    for a, b in pairs:
        torch.testing.assert_close(a, b)

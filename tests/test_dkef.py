"""DKEF: feature jets and kernel derivatives against torch.func, the closed-form α against the
exact score-matching objective, log Z by importance sampling against quadrature, the evaluation α
and its training-point memory, persistence."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.func import hessian, jacrev, vmap

from jacfree.scorematching import losses
from jacfree.scorematching.dkef import (
    DKEF,
    FeatureNet,
    alpha_normal_equations,
    solve_alpha,
)

F64 = torch.float64


def _model(d: int = 3, M: int = 7, seed: int = 0, **kw: object) -> DKEF:
    torch.manual_seed(seed)
    m = DKEF(d, n_inducing=M, hidden=5, **kw).double()
    with torch.no_grad():
        m.inducing.copy_(torch.randn(M, d, dtype=F64))
        m.kernel_logits.copy_(torch.randn(m.kernel_logits.shape, dtype=F64))
    m.initialised.fill_(True)
    return m


def test_feature_jet_matches_torch_func_derivatives():
    torch.manual_seed(1)
    phi = FeatureNet(3, hidden=5).double()
    x = torch.randn(4, 3, dtype=F64)
    J = vmap(jacrev(phi))(x)  # (N, h, d)
    H = vmap(hessian(phi))(x)  # (N, h, d, d)
    shared = torch.randn(2, 3, dtype=F64)
    per_point = torch.randn(4, 2, 3, dtype=F64)
    for dirs in (shared, per_point):
        e = dirs if dirs.dim() == 3 else dirs.expand(4, 2, 3)
        f, a, c = phi.jet(x, dirs)
        assert torch.allclose(f, phi(x))
        assert torch.allclose(a, torch.einsum("nhd,npd->nph", J, e), atol=1e-12)
        assert torch.allclose(c, torch.einsum("nhij,npi,npj->nph", H, e, e), atol=1e-12)


def test_kernel_jet_matches_torch_func_derivatives():
    m = _model()
    x = torch.randn(5, 3, dtype=F64)
    J = vmap(jacrev(lambda v: m.kernel(v[None])[0]))(x)  # (N, M, d)
    H = vmap(hessian(lambda v: m.kernel(v[None])[0]))(x)  # (N, M, d, d)
    e = torch.randn(5, 2, 3, dtype=F64)
    dk, d2k = m.kernel_jet(x, e)
    assert torch.allclose(dk, torch.einsum("nmd,npd->nmp", J, e), atol=1e-12)
    assert torch.allclose(d2k, torch.einsum("nmij,npi,npj->nmp", H, e, e), atol=1e-12)


def test_log_density_gradient_matches_autograd():
    m = _model()
    m.set_alpha_points(torch.randn(30, 3, dtype=F64))
    alpha = m.fitted_alpha()
    assert alpha.abs().sum() > 0
    x = torch.randn(6, 3, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(m.log_density(x).sum(), x)
    eye = torch.eye(3, dtype=F64)
    dk, _ = m.kernel_jet(x.detach(), eye)
    closed = torch.einsum("nmp,m->np", dk, alpha) - x.detach() / m.q0_std**2
    assert torch.allclose(g, closed, atol=1e-12)


def test_alpha_solve_minimises_the_exact_sm_objective_plus_ridge():
    """Independent check: exact_sm (torch.func Hessian trace) + ½λ‖α‖² is stationary at α."""
    m = _model()
    x = torch.randn(40, 3, dtype=F64)
    alpha = m.solve_alpha(x, "exact").detach().requires_grad_(True)
    lam = m.ridge.detach()
    objective = losses.exact_sm(lambda y: m.energy(y, alpha), x) + 0.5 * lam * alpha.square().sum()
    (g,) = torch.autograd.grad(objective, alpha)
    alpha = alpha.detach()
    assert float(g.abs().max()) < 1e-10 * (1 + float(alpha.abs().max()))
    # and it is a minimum: any perturbation increases the objective
    with torch.no_grad():
        step = 1e-3 * torch.randn_like(alpha)
        bumped = losses.exact_sm(lambda y: m.energy(y, alpha + step), x)
        bumped = bumped + 0.5 * lam * (alpha + step).square().sum()
    assert float(bumped) > float(objective.detach())


def test_solve_alpha_equals_a_direct_solve_of_the_normal_equations():
    torch.manual_seed(3)
    N, M, P = 9, 5, 4
    dk = torch.randn(N, M, P, dtype=F64)
    d2k = torch.randn(N, M, P, dtype=F64)
    dq = torch.randn(N, P, dtype=F64)
    G, b = alpha_normal_equations(dk, d2k, dq)

    # the quadratic J(α) = mean_n Σ_p [αᵀd2k + ½(αᵀdk + dq)²] up to a constant
    def J(a):
        return (
            ((d2k * a[None, :, None]).sum(1) + 0.5 * ((dk * a[None, :, None]).sum(1) + dq) ** 2)
            .sum(1)
            .mean()
        )

    a0 = torch.randn(M, dtype=F64)
    const = J(torch.zeros(M, dtype=F64))
    assert torch.allclose(J(a0) - const, a0 @ b + 0.5 * a0 @ G @ a0)
    lam = 0.3
    alpha = solve_alpha(G, b, lam)
    direct = torch.linalg.solve(G + lam * torch.eye(M, dtype=F64), -b)
    assert torch.allclose(alpha, direct, atol=1e-12)
    # float32 inputs: solved in float64, returned in float32
    alpha32 = solve_alpha(G.float(), b.float(), lam)
    assert alpha32.dtype == torch.float32 and torch.allclose(alpha32.double(), direct, atol=1e-4)
    with pytest.raises(ValueError, match="ridge"):
        solve_alpha(G, b, 0.0)


def test_sliced_normal_equations_average_to_the_exact_ones_over_all_sign_vectors():
    m = _model()
    x = torch.randn(6, 3, dtype=F64)
    G, b = m.normal_equations(x, "exact")
    Gs, bs = torch.zeros_like(G), torch.zeros_like(b)
    signs = list(itertools.product((-1.0, 1.0), repeat=3))
    for s in signs:  # every Rademacher vector once: E[v vᵀ] = I exactly
        v = torch.tensor(s, dtype=F64)
        dk, d2k = m.kernel_jet(x, v[None].expand(6, 1, 3))
        dq = (-(x * v).sum(1) / m.q0_std**2)[:, None]
        g, bb = alpha_normal_equations(dk, d2k, dq)
        Gs, bs = Gs + g / len(signs), bs + bb / len(signs)
    assert torch.allclose(Gs, G, atol=1e-12) and torch.allclose(bs, b, atol=1e-12)
    # and the model's sliced solve draws one such vector per point
    gen = torch.Generator().manual_seed(0)
    G1, _ = m.normal_equations(x, "sliced", generator=gen)
    assert not torch.allclose(G1, G)


def test_log_partition_is_zero_without_kernel_term():
    m = _model(logz_samples=1000)  # nothing remembered: α = 0, p = q0 (normalised)
    assert torch.equal(m.fitted_alpha(), torch.zeros(7, dtype=F64))
    lz = m.log_partition(1000)
    assert lz.value == pytest.approx(0.0, abs=1e-12) and lz.stderr == pytest.approx(0.0, abs=1e-12)
    x = torch.randn(4, 3, dtype=F64)
    assert torch.allclose(m.log_prob(x), m.log_q0(x))


@pytest.mark.parametrize("d", [1, 2])
def test_log_partition_matches_quadrature(d):
    torch.manual_seed(5)
    m = _model(d=d, M=6, seed=5)
    m.set_alpha_points(0.8 * torch.randn(40, d, dtype=F64) + 0.5)
    alpha = m.fitted_alpha()
    assert alpha.abs().max() > 0.1  # a real kernel term
    lz = m.log_partition(200_000, seed=1)
    g = torch.linspace(-14, 14, 2001 if d == 1 else 401, dtype=F64)
    pts = (
        g[:, None]
        if d == 1
        else torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2)
    )
    with torch.no_grad():
        logf = m.log_density(pts, alpha)
    quad = float(torch.logsumexp(logf, 0)) + d * math.log(float(g[1] - g[0]))
    assert abs(lz.value - quad) < 4 * lz.stderr + 1e-3
    assert 0 < lz.stderr < 0.05
    # log_prob then integrates to one
    m.logz_samples = 200_000
    with torch.no_grad():
        mass = float(torch.logsumexp(m.log_prob(pts), 0)) + d * math.log(float(g[1] - g[0]))
    assert mass == pytest.approx(0.0, abs=4 * m.log_partition().stderr + 1e-3)


def test_log_partition_is_seeded_and_cached_per_parameter_state():
    m = _model()
    m.set_alpha_points(torch.randn(20, 3, dtype=F64))
    m.logz_samples = 5000
    a, b = m.log_partition(), m.log_partition()
    assert a == b
    assert m.log_partition(5000, seed=1) != a
    with torch.no_grad():
        m.log_lambda.add_(0.5)  # new parameter state: new α, new log Z
    assert m.log_partition() != a


def test_remember_initialises_inducing_points_and_stops_at_the_second_epoch():
    torch.manual_seed(0)
    m = DKEF(2, n_inducing=4, hidden=3, alpha_points=100).double()
    assert not bool(m.initialised)  # inducing points not yet taken from data
    train = torch.randn(10, 2, dtype=F64)
    for _ in range(3):  # three epochs of shuffled batches, as fit draws them
        for batch in train[torch.randperm(10)].split(4):
            m.remember(batch)
    assert bool(m.initialised)
    assert int(m.alpha_count) == 10  # each training row exactly once
    stored = m.alpha_x[:10]
    assert torch.equal(stored[stored[:, 0].argsort()], train[train[:, 0].argsort()])
    # the first batch became the inducing points
    z = m.inducing.detach()
    assert all(bool((train == row).all(1).any()) for row in z)
    # capacity caps the memory
    small = DKEF(2, n_inducing=4, hidden=3, alpha_points=6).double()
    small.remember(train)
    assert int(small.alpha_count) == 6


def test_training_step_backpropagates_through_the_alpha_solve():
    m = _model()
    x = torch.randn(20, 3, dtype=F64)
    alpha = m.solve_alpha(x[:10], "sliced", generator=torch.Generator().manual_seed(0))
    loss = losses.fd_ssm(lambda y: m.energy(y, alpha), x[10:], 0.1)
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert float(m.log_lambda.grad.abs()) > 0  # the ridge is trained through α(λ)


def test_state_dict_round_trip_recomputes_the_same_alpha_and_log_prob():
    m = _model()
    m.set_alpha_points(torch.randn(25, 3, dtype=F64))
    m.logz_samples = 2000
    other = DKEF(3, n_inducing=7, hidden=5, logz_samples=2000).double()
    other.load_state_dict(m.state_dict())
    x = torch.randn(4, 3, dtype=F64)
    assert torch.allclose(other.fitted_alpha(), m.fitted_alpha(), atol=1e-12)
    assert torch.allclose(other.log_prob(x), m.log_prob(x), atol=1e-12)


def test_float32_model_and_sampling_follow_dtype():
    torch.manual_seed(0)
    m = DKEF(2, n_inducing=5, hidden=4, logz_samples=1000)
    m.remember(torch.randn(30, 2))
    x = torch.randn(3, 2)
    assert m.log_prob(x).dtype == torch.float32
    s = m.sample(8, steps=5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (8, 2) and s.dtype == torch.float32


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="alpha_solve"):
        DKEF(2, alpha_solve="cg")
    with pytest.raises(ValueError, match="inducing must have shape"):
        DKEF(2, n_inducing=3, inducing=torch.zeros(4, 2))
    m = DKEF(3, n_inducing=4, hidden=3)
    with pytest.raises(ValueError, match="features"):
        m.log_density(torch.randn(5, 4))
    with pytest.raises(ValueError, match=r"dk must be \(N, M, P\)"):
        alpha_normal_equations(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 1))

"""NICE (additive couplings + diagonal scaling): exact log-det, inverse, log_prob, persistence,
float64, and its use as an energy ``E = −log p`` for score matching."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import jacrev, vmap

import jacfree as jf
from jacfree.flows.nice import NICE, AdditiveCoupling, DiagonalScaling
from jacfree.scorematching import losses

D = 6
B = 5


def _randomise(flow: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> None:
    """Give every parameter (zero-initialised outputs and log-scales included) random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def _nice(couplings: int = 4, **kw: object) -> NICE:
    flow = NICE(D, couplings=couplings, hidden=16, hidden_layers=2, **kw).double()
    _randomise(flow)
    return flow


def _jacobian(f, x):  # per-sample Jacobians of a row-wise map, (B, D, D)
    return vmap(jacrev(lambda v: f(v[None])[0]))(x)


@pytest.mark.parametrize("couplings", [1, 2, 3, 4])
def test_logdet_matches_slogdet_of_the_jacobian(couplings):
    flow = _nice(couplings)
    x = torch.randn(B, D, dtype=torch.float64)
    z, logdet = flow(x)
    J = _jacobian(lambda v: flow(v)[0], x)
    assert torch.allclose(logdet, torch.linalg.slogdet(J).logabsdet, atol=1e-10)
    assert torch.allclose(logdet, flow.log_scale.sum().expand(B))  # couplings are volume-preserving
    assert z.shape == x.shape


def test_each_coupling_is_volume_preserving_and_keeps_half_the_coordinates():
    for parity in (0, 1):
        layer = AdditiveCoupling(D, parity, hidden=8, hidden_layers=2).double()
        _randomise(layer, seed=parity + 3)
        x = torch.randn(B, D, dtype=torch.float64)
        y, ld = layer(x)
        assert torch.equal(ld, torch.zeros(B, dtype=torch.float64))
        kept = torch.arange(D) % 2 == parity
        assert torch.equal(y[:, kept], x[:, kept])
        assert not torch.allclose(y[:, ~kept], x[:, ~kept])
        J = _jacobian(lambda v, layer=layer: layer(v)[0], x)
        assert torch.allclose(torch.linalg.det(J), torch.ones(B, dtype=torch.float64))


def test_round_trip_both_ways():
    flow = _nice()
    x = torch.randn(B, D, dtype=torch.float64)
    z, _ = flow(x)
    assert torch.allclose(flow.inverse(z), x, atol=1e-12)
    zz = torch.randn(B, D, dtype=torch.float64)
    assert torch.allclose(flow(flow.inverse(zz))[0], zz, atol=1e-12)


def test_log_prob_is_the_change_of_variables_computed_independently():
    flow = _nice()
    x = torch.randn(B, D, dtype=torch.float64)
    z = flow(x)[0]
    J = _jacobian(lambda v: flow(v)[0], x)
    base = -0.5 * (z.square().sum(1) + D * math.log(2 * math.pi))
    assert torch.allclose(flow.log_prob(x), base + torch.linalg.slogdet(J).logabsdet, atol=1e-10)


def test_log_prob_integrates_to_one_in_two_dimensions():
    flow = NICE(2, couplings=4, hidden=16, hidden_layers=2).double()
    _randomise(flow, seed=7, scale=0.5)
    g = torch.linspace(-12, 12, 801, dtype=torch.float64)
    gx, gy = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    with torch.no_grad():
        mass = flow.log_prob(pts).exp().sum() * (g[1] - g[0]) ** 2
    assert float(mass) == pytest.approx(1.0, abs=2e-3)


def test_preprocessing_counts_in_log_prob_and_the_energy_lives_after_it():
    levels = 8.0
    prep = [jf.LogitTransform(levels, alpha=0.05)]
    flow = NICE(D, couplings=2, hidden=16, hidden_layers=2, preprocess=prep).double()
    _randomise(flow, seed=2)
    x = levels * torch.rand(B, D, dtype=torch.float64)
    y = flow.preprocess(x)
    y_ref, ld_pre = prep[0](x)
    assert torch.allclose(y, y_ref)
    # log p(x) = log p_body(y) + log|dy/dx|: the energy is −log p of the body in logit space
    assert torch.allclose(flow.log_prob(x), -flow.energy(y) + ld_pre, atol=1e-10)
    assert len(flow.preprocess_layers) == 1 and len(flow.body) == 3


def test_energy_without_preprocessing_is_minus_log_prob_and_its_score_the_gradient():
    flow = _nice()
    x = torch.randn(B, D, dtype=torch.float64, requires_grad=True)
    assert torch.allclose(flow.energy(x), -flow.log_prob(x))
    (g,) = torch.autograd.grad(flow.log_prob(x).sum(), x)
    assert torch.allclose(jf.sm.score(flow.energy, x.detach()), g, atol=1e-12)


def test_fd_ssm_on_the_energy_converges_to_sliced_sm_at_order_eps_squared():
    flow = _nice()
    x = torch.randn(64, D, dtype=torch.float64)
    u = jf.fd.sphere_directions(x, 1.0, generator=torch.Generator().manual_seed(0))
    # along the same direction u (v = √D·u, E[vvᵀ] = I), FD-SSM → SSM at O(ε²)
    with torch.no_grad():
        per_dir = losses.ssm(flow.energy, x, v=u * math.sqrt(D), reduction="none")
        errs = [
            float(
                (losses.fd_ssm(flow.energy, x, eps, directions=u, reduction="none") - per_dir)
                .abs()
                .max()
            )
            for eps in (1e-1, 5e-2)
        ]
    assert errs[1] < errs[0] / 3  # ≈ 4× smaller per halving of ε


def test_state_dict_round_trip_and_double():
    flow = _nice()
    other = NICE(D, couplings=4, hidden=16, hidden_layers=2).double()
    other.load_state_dict(flow.state_dict())
    x = torch.randn(B, D, dtype=torch.float64)
    assert torch.equal(other.log_prob(x), flow.log_prob(x))
    f32 = NICE(D, couplings=2, hidden=8, hidden_layers=1)
    assert f32.log_prob(torch.randn(3, D)).dtype == torch.float32
    f64 = f32.double()
    assert f64.log_prob(torch.randn(3, D, dtype=torch.float64)).dtype == torch.float64
    assert f64.sample(4).dtype == torch.float64


def test_sample_is_seedable_and_inverts_to_the_base():
    flow = _nice()
    a = flow.sample(7, generator=torch.Generator().manual_seed(3))
    b = flow.sample(7, generator=torch.Generator().manual_seed(3))
    assert a.shape == (7, D) and torch.equal(a, b)
    assert torch.isfinite(flow.log_prob(a)).all()


def test_maximum_likelihood_loss_is_the_mean_nll_and_trains_the_scale():
    flow = NICE(D, couplings=2, hidden=8, hidden_layers=1).double()
    x = 3.0 * torch.randn(256, D, dtype=torch.float64)
    assert torch.allclose(flow.loss(x), -flow.log_prob(x).mean())
    opt = torch.optim.Adam(flow.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    # data with std 3: the scaling learns s ≈ −log 3
    assert float(flow.log_scale.detach().mean()) == pytest.approx(-math.log(3.0), abs=0.15)


def test_diagonal_scaling_alone():
    layer = DiagonalScaling(3).double()
    with torch.no_grad():
        layer.log_scale.copy_(torch.tensor([0.1, -0.2, 0.3]))
    x = torch.randn(4, 3, dtype=torch.float64)
    z, ld = layer(x)
    assert torch.allclose(z, x * torch.tensor([0.1, -0.2, 0.3]).exp().double())
    assert torch.allclose(ld, torch.full((4,), 0.2, dtype=torch.float64))
    assert torch.allclose(layer.inverse(z), x)


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match="features"):
        NICE(1)
    with pytest.raises(ValueError, match=r"activation 'relu'.*softplus"):
        NICE(4, hidden=4, activation="relu")
    with pytest.raises(ValueError, match="parity"):
        AdditiveCoupling(4, 2)
    flow = NICE(4, couplings=1, hidden=4, hidden_layers=1)
    with pytest.raises(ValueError, match="features"):
        flow.log_prob(torch.randn(3, 5))
    with pytest.raises(ValueError, match="NaN"):
        flow.log_prob(torch.full((2, 4), float("nan")))
    # the energy is on the training step's path: no value scan, the NaN propagates
    assert torch.isnan(flow.energy(torch.full((2, 4), float("nan")))).all()

"""Score-matching models and their tools: the MLP energy, the noise-conditional score network,
Langevin sampling, dataset-level exact SM evaluation and grid normalisation."""

from __future__ import annotations

import math

import pytest
import torch

import jacfree as jf
from jacfree.kinds.scorematching import energy_loss, grid_log_partition
from jacfree.scorematching import losses
from jacfree.scorematching.energy import MLPEnergy
from jacfree.scorematching.evaluate import (
    evaluate_per_sample,
    exact_sm_loss,
    exact_sm_loss_scorenet,
)
from jacfree.scorematching.ncsn import NCSN, annealed_loss, geometric_sigmas
from jacfree.scorematching.objectives import Settings, objective, objective_names
from jacfree.scorematching.sampling import annealed_langevin, energy_score, langevin

F64 = torch.float64

# -- MLP energy ---------------------------------------------------------------------------------


def test_mlp_energy_shapes_and_flattening():
    e = MLPEnergy((1, 4, 4), hidden=(8, 8))
    x = torch.rand(5, 1, 4, 4)
    assert e(x).shape == (5,)
    assert torch.allclose(e(x), e.net(x.flatten(1)).squeeze(-1))
    assert MLPEnergy(3, hidden=8)(torch.randn(2, 3)).shape == (2,)
    with pytest.raises(ValueError, match=r"reshape it with x.reshape\(-1, 1, 4, 4\)"):
        e(torch.rand(5, 16))


def test_mlp_energy_base_term_is_the_quadratic_it_promises():
    e = MLPEnergy(2, hidden=(8,), base_std=1.5).double()
    plain = MLPEnergy(2, hidden=(8,)).double()
    plain.load_state_dict(e.state_dict())
    x = torch.randn(7, 2, dtype=F64)
    assert torch.allclose(e(x) - plain(x), x.square().sum(1) / (2 * 1.5**2))


def test_mlp_energy_has_curvature_and_refuses_piecewise_linear_activations():
    e = MLPEnergy(3, hidden=(16,), activation="nsoftplus").double()
    x = torch.randn(10, 3, dtype=F64)
    with torch.no_grad():
        terms = losses.exact_sm(e, x, return_terms=True)
    assert float(terms.curvature.abs()) > 0
    assert torch.allclose(e.net[1](torch.zeros(1, dtype=F64)), torch.zeros(1, dtype=F64))
    with pytest.raises(ValueError, match="second derivative is zero"):
        MLPEnergy(3, activation="relu")
    with pytest.raises(ValueError, match="unknown activation 'foo'"):
        MLPEnergy(3, activation="foo")
    with pytest.raises(ValueError, match="base_std"):
        MLPEnergy(3, base_std=-1.0)


# -- NCSN ---------------------------------------------------------------------------------------


def test_geometric_sigmas():
    s = geometric_sigmas(1.0, 0.01, 10)
    assert s[0] == pytest.approx(1.0) and s[-1] == pytest.approx(0.01)
    ratios = s[1:] / s[:-1]
    assert torch.allclose(ratios, ratios[0].expand(9))
    with pytest.raises(ValueError, match="sigma_min"):
        geometric_sigmas(0.1, 1.0, 3)


def _ncsn(**kw: object) -> NCSN:
    torch.manual_seed(0)
    net = NCSN((1, 8, 8), channels=4, n_levels=4, **kw).double()
    with torch.no_grad():  # non-zero FiLM layers, so that σ matters beyond the 1/σ output scale
        for m in net.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 0.3)
    return net


def test_ncsn_shapes_and_noise_conditioning():
    net = _ncsn()
    x = torch.rand(3, 1, 8, 8, dtype=F64)
    s = net(x, torch.full((3,), 0.1, dtype=F64))
    assert s.shape == x.shape
    assert torch.allclose(net(x, 0.1), s)  # a number is broadcast to every sample
    # per-sample levels act per sample
    mixed = net(x, torch.tensor([0.1, 0.5, 0.1], dtype=F64))
    assert torch.allclose(mixed[0], s[0]) and not torch.allclose(mixed[1], s[1])
    with pytest.raises(ValueError, match="one noise level per sample"):
        net(x, torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        NCSN((64,))


def test_ncsn_rows_are_independent_so_the_fd_batch_is_safe():
    net = _ncsn()
    x = torch.rand(4, 1, 8, 8, dtype=F64)
    sig = net.sigmas[torch.tensor([0, 1, 2, 3])].double()
    u = jf.fd.sphere_directions(x, 1.0, generator=torch.Generator().manual_seed(1))
    par = losses.fd_ssm_vr(net, x, 0.1, directions=u, cond=sig, reduction="none")
    seq = losses.fd_ssm_vr(net, x, 0.1, directions=u, cond=sig, reduction="none", parallel=False)
    assert torch.allclose(par, seq, atol=1e-10)
    # one row alone gives the same score as inside the batch
    assert torch.allclose(net(x[1:2], sig[1:2]), net(x, sig)[1:2], atol=1e-12)


def test_annealed_exact_sm_is_the_sigma_weighted_exact_sm_on_perturbed_data():
    net = _ncsn()
    x = torch.rand(3, 1, 8, 8, dtype=F64)
    torch.manual_seed(4)
    got = annealed_loss(net, x, "sm", reduction="none")
    torch.manual_seed(4)  # same level and noise draws
    idx = torch.randint(len(net.sigmas), (3,))
    sig = net.sigmas.double()[idx]
    xt = x + sig.view(3, 1, 1, 1) * torch.randn(x.shape, dtype=F64)
    want = losses.exact_sm_scorenet(net, xt, cond=sig, reduction="none") * sig**2
    assert torch.allclose(got, want, atol=1e-10)
    for name in ("dsm", "ssm", "ssm_vr", "fd_ssm_vr"):
        v = annealed_loss(net, x, name)
        assert v.shape == () and torch.isfinite(v)
    with pytest.raises(ValueError, match="unknown NCSN objective 'fd_ssm'"):
        annealed_loss(net, x, "fd_ssm")


def test_ncsn_data_scale_round_trip_and_sampling():
    net = NCSN((1, 8, 8), channels=4, n_levels=3, levels=17)
    x = torch.randint(0, 17, (6, 1, 8, 8)).float()
    y = net.preprocess(x)
    assert float(y.min()) >= 0 and float(y.max()) < 1
    assert torch.equal(net.to_data(y), x)
    s = net.sample(4, n_steps_each=2, generator=torch.Generator().manual_seed(0))
    t = net.sample(4, n_steps_each=2, generator=torch.Generator().manual_seed(0))
    assert s.shape == (4, 1, 8, 8) and torch.equal(s, t)
    assert float(s.min()) >= 0 and float(s.max()) <= 16


# -- Langevin -----------------------------------------------------------------------------------


def test_langevin_reaches_the_gaussian_with_the_ula_variance():
    mu = torch.tensor([1.0, -2.0], dtype=F64)
    tau2 = torch.tensor([0.5, 2.0], dtype=F64)

    def energy(x):
        return 0.5 * ((x - mu).square() / tau2).sum(1)

    h = 0.1
    gen = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 2, dtype=F64)
    x = langevin(energy_score(energy), x0, h, 300, generator=gen)
    assert x.dtype == F64
    # ULA on N(μ, τ²): x' − μ = (1 − h/(2τ²))(x − μ) + √h z, stationary variance h / (1 − ρ²)
    rho = 1 - h / (2 * tau2)
    var = h / (1 - rho**2)
    se_mean = (var / 4000).sqrt()
    assert ((x.mean(0) - mu).abs() < 4 * se_mean).all()
    assert torch.allclose(x.var(0), var, rtol=0.08)
    assert not torch.allclose(var, tau2, rtol=0.01)  # the O(h) bias is visible, and matched


def test_langevin_is_seeded_and_validates():
    def s(x):
        return -x

    x0 = torch.zeros(5, 3)
    a = langevin(s, x0, 0.1, 10, generator=torch.Generator().manual_seed(1))
    b = langevin(s, x0, 0.1, 10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(x0, torch.zeros(5, 3))
    assert torch.equal(langevin(s, x0, 0.1, 0), x0)
    with pytest.raises(ValueError, match="step_size"):
        langevin(s, x0, -1.0, 3)
    with pytest.raises(ValueError, match="shape of its input"):
        langevin(lambda x: x.sum(1), x0, 0.1, 1)


def test_annealed_langevin_on_gaussian_smoothed_scores_ends_near_the_target():
    mu, tau2 = 0.7, 0.04

    def s(x, sigma):  # exact score of N(μ, τ²) smoothed by N(0, σ²)
        return -(x - mu) / (tau2 + sigma.view(-1, 1) ** 2)

    sig = geometric_sigmas(1.0, 0.01, 6).tolist()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(3000, 1, dtype=F64)
    # stable steps: step_lr·(σ_1/σ_L)² < 4(τ² + σ_1²); 200 steps per level converge down to σ_{L-1}
    x = annealed_langevin(s, x0, sig, n_steps_each=200, step_lr=3e-4, generator=gen)
    assert float(x.mean()) == pytest.approx(mu, abs=0.02)
    assert float(x.var()) == pytest.approx(tau2, rel=0.15)


# -- evaluation ---------------------------------------------------------------------------------


def test_exact_sm_loss_is_the_dataset_mean_with_its_standard_error():
    torch.manual_seed(0)
    e = MLPEnergy(3, hidden=(8,)).double()
    x = torch.randn(37, 3, dtype=F64)
    per = losses.exact_sm(e, x, reduction="none").detach()
    for bs in (5, 37, 100):
        est = exact_sm_loss(e, x, batch_size=bs)
        assert est.mean == pytest.approx(float(per.mean()), abs=1e-12)
        assert est.stderr == pytest.approx(float(per.std() / math.sqrt(37)), abs=1e-12)
        assert est.n == 37
    assert exact_sm_loss(e, x, max_n=10).n == 10
    assert e.training  # mode restored


def test_evaluation_noise_is_seeded_and_leaves_the_callers_rng_alone():
    e = MLPEnergy(2, hidden=(8,)).double()
    x = torch.randn(20, 2, dtype=F64)

    def noisy(b):
        return b + torch.rand_like(b)

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = exact_sm_loss(e, x, transform=noisy)
    assert torch.equal(torch.get_rng_state(), before)
    assert exact_sm_loss(e, x, transform=noisy) == a
    assert exact_sm_loss(e, x, transform=noisy, seed=1) != a


def test_exact_sm_loss_scorenet_with_per_row_conditioning():
    A = torch.tensor([[-1.0, 0.3], [0.1, -2.0]], dtype=F64)

    def net(x, c):  # affine score: J = tr A·c + ½‖c·Ax‖²
        return c[:, None] * (x @ A.T)

    x = torch.randn(11, 2, dtype=F64)
    c = torch.rand(11, dtype=F64) + 0.5
    want = c * torch.trace(A) + 0.5 * (c[:, None] * (x @ A.T)).square().sum(1)
    est = exact_sm_loss_scorenet(net, x, cond=c, batch_size=4)
    assert est.mean == pytest.approx(float(want.mean()), abs=1e-12)
    with pytest.raises(ValueError, match="one row per data row"):
        exact_sm_loss_scorenet(net, x, cond=c[:3])
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_per_sample(lambda b: b.sum(1), torch.zeros(0, 2))


def test_grid_log_partition_of_a_gaussian():
    P = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)

    def log_density(x):
        return -0.5 * ((x @ P) * x).sum(1)

    lo, hi = torch.full((2,), -9.0, dtype=F64), torch.full((2,), 9.0, dtype=F64)
    want = math.log(2 * math.pi) - 0.5 * math.log(float(torch.linalg.det(P)))
    assert grid_log_partition(log_density, lo, hi, 300) == pytest.approx(want, abs=1e-6)


def test_energy_loss_names_and_values():
    e = MLPEnergy(2, hidden=(8,)).double()
    x = torch.randn(16, 2, dtype=F64)
    torch.manual_seed(0)
    sm = energy_loss("sm")(e, x)
    assert torch.allclose(sm, losses.exact_sm(e, x))
    for name in objective_names("energy"):
        assert torch.isfinite(energy_loss(name, eps=0.05, sigma=0.2)(e, x))
    with pytest.raises(ValueError, match=r"unknown energy objective 'mle'.*'fd_ssm'"):
        energy_loss("mle")


def test_energy_loss_keywords_are_the_settings_with_their_defaults():
    e = MLPEnergy(2, hidden=(8,)).double()
    x = torch.randn(16, 2, dtype=F64)
    for name, kw in [("fd_ssm", {}), ("fd_dsm", {"sigma": 0.3, "eps": 0.02}), ("mdsm", {})]:
        settings = Settings(**kw)
        torch.manual_seed(1)
        got = energy_loss(name, **kw)(e, x)
        torch.manual_seed(1)
        assert torch.equal(got, objective(name).bind(settings)(e, x))
    with pytest.raises(TypeError, match=r"unknown keywords \['step'\].*eps, sigma"):
        energy_loss("fd_ssm", step=0.1)
    with pytest.raises(TypeError):
        energy_loss("fd_ssm", 0.1)  # the settings are keywords only

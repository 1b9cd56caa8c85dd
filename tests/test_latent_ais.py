"""AIS of a linear-Gaussian decoder against its closed-form marginal likelihood."""

from __future__ import annotations

import math

import pytest
import torch

from jacfree.latent.ais import ais_log_marginal, sigmoid_schedule


def _linear_gaussian(
    d: int = 6, k: int = 3, sigma: float = 0.5, n: int = 5, seed: int = 0, repeat: int = 1
):
    """p(x|z) = N(Az + b, σ²I), p(z) = N(0, I): p(x) = N(b, AAᵀ + σ²I). ``repeat`` copies of
    the ``n`` points (independent AIS runs of the same x)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(d, k, generator=gen, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    z = torch.randn(n, k, generator=gen, dtype=torch.float64)
    x = z @ a.T + b + sigma * torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x.repeat(repeat, 1)
    cov = a @ a.T + sigma**2 * torch.eye(d, dtype=torch.float64)
    truth = torch.distributions.MultivariateNormal(b, cov).log_prob(x)

    def log_likelihood(zz: torch.Tensor) -> torch.Tensor:  # (K, B, k) -> (K, B)
        mean = zz @ a.T + b
        return torch.distributions.Normal(mean, sigma).log_prob(x).sum(-1)

    return log_likelihood, x, truth, k


def test_ais_matches_closed_form_within_its_standard_error():
    log_likelihood, x, truth, k = _linear_gaussian(d=4, k=2, sigma=0.7, repeat=8)
    gen = torch.Generator().manual_seed(1)
    res = ais_log_marginal(
        log_likelihood, len(x), k, chains=32, steps=100, leapfrog=5, step_size=0.2, like=x,
        generator=gen,
    )  # fmt: skip
    assert res.log_px.shape == (len(x),) and res.log_w.shape == (32, len(x))
    err = res.log_px - truth
    # the standard error is informative (small against the nats at stake) ...
    assert (res.stderr < 0.2).all(), res.stderr
    # ... every point lands within a few of its SEs, never far above the truth, and the mean
    # error of the 40 independent estimates is within its standard error (2σ) of zero
    assert (err.abs() <= 4 * res.stderr).all(), (err, res.stderr)
    se_mean = float(res.stderr.pow(2).mean().sqrt()) / math.sqrt(len(x))
    assert abs(float(err.mean())) <= 2 * se_mean, (float(err.mean()), se_mean)
    assert ((res.accept > 0.3) & (res.accept < 0.99)).all(), res.accept


def test_ais_unbiased_for_the_likelihood_with_a_fixed_kernel_schedule():
    """p̂(x) is unbiased for p(x): the mean of p̂/p over independent runs is 1 within its error."""
    log_likelihood, x, truth, k = _linear_gaussian(d=4, k=2, sigma=0.7, n=2, repeat=50)
    gen = torch.Generator().manual_seed(4)
    res = ais_log_marginal(
        log_likelihood, len(x), k, chains=8, steps=30, leapfrog=5, step_size=0.2, like=x,
        generator=gen,
    )  # fmt: skip
    ratio = (res.log_px - truth).exp()
    assert abs(float(ratio.mean()) - 1) < 3 * float(ratio.std()) / math.sqrt(len(ratio))


def test_ais_with_few_steps_is_a_lower_bound_in_expectation():
    """With T = 1 AIS is importance sampling from the prior: E[log p̂] < log p (Jensen), by a
    clear margin for a peaked posterior; the long run closes the gap."""
    log_likelihood, x, truth, k = _linear_gaussian(sigma=0.2, n=8, seed=3)
    gen = torch.Generator().manual_seed(0)
    short = ais_log_marginal(log_likelihood, len(x), k, chains=4, steps=1, like=x, generator=gen)
    long = ais_log_marginal(
        log_likelihood, len(x), k, chains=4, steps=100, leapfrog=5, step_size=0.2, like=x,
        generator=gen,
    )  # fmt: skip
    gap_short = float((truth - short.log_px).mean())
    gap_long = float((truth - long.log_px).mean())
    assert gap_short > 1.0
    assert abs(gap_long) < 0.2 * gap_short


def test_sigmoid_schedule_runs_from_zero_to_one():
    beta = sigmoid_schedule(10)
    assert beta.shape == (11,)
    assert beta[0] == 0 and beta[-1] == 1
    assert (beta.diff() > 0).all()
    with pytest.raises(ValueError, match="at least 1"):
        sigmoid_schedule(0)


def test_ais_standard_error_matches_its_definition():
    log_likelihood, x, _, k = _linear_gaussian(n=2)
    gen = torch.Generator().manual_seed(2)
    res = ais_log_marginal(log_likelihood, 2, k, chains=8, steps=5, like=x, generator=gen)
    w = res.log_w.exp()
    assert torch.allclose(res.log_px, w.mean(0).log())
    assert torch.allclose(res.stderr, w.std(0) / (w.mean(0) * math.sqrt(8)))


def test_ais_is_reproducible_and_rejects_bad_arguments():
    log_likelihood, x, _, k = _linear_gaussian(n=2)
    a = ais_log_marginal(log_likelihood, 2, k, steps=3, like=x,
                         generator=torch.Generator().manual_seed(5))  # fmt: skip
    b = ais_log_marginal(log_likelihood, 2, k, steps=3, like=x,
                         generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(a.log_px, b.log_px)
    with pytest.raises(ValueError, match="chains"):
        ais_log_marginal(log_likelihood, 2, k, chains=0, like=x)

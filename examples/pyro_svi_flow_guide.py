"""A jacfree flow as the variational guide of Pyro's SVI, on a conjugate Gaussian model.

Model (the exact posterior is known in closed form)::

    θ ~ N(μ₀, Σ₀),      y_i | θ ~ N(θ, Σ_y),  i = 1..N,
    θ | y ~ N(μ_N, Σ_N),  Σ_N = (Σ₀⁻¹ + N Σ_y⁻¹)⁻¹,  μ_N = Σ_N (Σ₀⁻¹ μ₀ + Σ_y⁻¹ Σ_i y_i).

Guide: ``pyro.contrib.zuko.ZukoToPyro(flow.distribution())`` — any jacfree flow is a
``torch.distributions.Distribution`` whose ``rsample_and_log_prob`` draws θ and scores it in one
pass, differentiably in the flow's parameters. SVI maximises the ELBO by reparameterised
gradients of ``E_q[log p(y, θ) − log q(θ)]``; these flow through the flow's inverse and its exact
log-determinant (the relative and self-normalizing modes concern maximum-likelihood training with
``flow.loss``, not this reverse-KL objective).

Run::

    python examples/pyro_svi_flow_guide.py            # prints the posterior errors

With ``--layers 1`` the guide family (one square affine layer: a full-covariance Gaussian)
contains the exact posterior; with more layers it is a non-Gaussian flow that must learn to be
Gaussian.
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.contrib.zuko import ZukoToPyro
from pyro.infer import SVI, Trace_ELBO
from torch import Tensor

import jacfree as jf

MU0 = torch.tensor([0.0, 1.0])
SIGMA0 = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
SIGMA_Y = torch.tensor([[4.0, -1.6], [-1.6, 2.0]])


def make_data(n: int = 10, seed: int = 0) -> Tensor:
    """N observations from the model, with θ drawn from the prior."""
    gen = torch.Generator().manual_seed(seed)
    theta = MU0 + torch.linalg.cholesky(SIGMA0) @ torch.randn(2, generator=gen)
    noise = torch.randn(n, 2, generator=gen) @ torch.linalg.cholesky(SIGMA_Y).T
    return theta + noise


def exact_posterior(y: Tensor) -> tuple[Tensor, Tensor]:
    """(μ_N, Σ_N) of the conjugate model (float64)."""
    p0 = torch.linalg.inv(SIGMA0.double())
    py = torch.linalg.inv(SIGMA_Y.double())
    cov = torch.linalg.inv(p0 + len(y) * py)
    mean = cov @ (p0 @ MU0.double() + py @ y.double().sum(0))
    return mean, cov


def model(y: Tensor) -> None:
    # (with the vectorised ELBO, θ has shape (particles, 1, 2): its batch dimension of 1
    # broadcasts against the data plate)
    theta = pyro.sample("theta", dist.MultivariateNormal(MU0, SIGMA0))
    with pyro.plate("data", len(y)):
        pyro.sample("obs", dist.MultivariateNormal(theta, SIGMA_Y), obs=y)


def fit_guide(
    y: Tensor,
    *,
    layers: int = 1,
    steps: int = 1500,
    lr: float = 0.1,
    particles: int = 128,
    seed: int = 0,
) -> jf.FCFlow:
    """Fit a jacfree FCFlow guide q(θ) by SVI (ELBO over ``particles`` draws, vectorised);
    returns the flow."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    flow = jf.FCFlow(2, layers=layers)

    def guide(y: Tensor) -> None:
        pyro.module("flow", flow)
        pyro.sample("theta", ZukoToPyro(flow.distribution()))

    schedule = pyro.optim.ClippedAdam({"lr": lr, "lrd": 0.1 ** (1 / steps)})
    elbo = Trace_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=1)
    svi = SVI(model, guide, schedule, loss=elbo)
    for _ in range(steps):
        svi.step(y)
    return flow


def posterior_errors(flow: jf.FCFlow, y: Tensor, n: int = 200_000) -> dict[str, float]:
    """Max |mean error| and relative Frobenius covariance error of the guide (from n samples)."""
    true_mean, true_cov = exact_posterior(y)
    with torch.no_grad():
        theta = flow.distribution().sample((n,)).double()
    mean, cov = theta.mean(0), torch.cov(theta.T)
    return {
        "mean_abs_error": float((mean - true_mean).abs().max()),
        "cov_rel_error": float(
            torch.linalg.matrix_norm(cov - true_cov) / torch.linalg.matrix_norm(true_cov)
        ),
        "posterior_std": float(true_cov.diagonal().sqrt().min()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    y = make_data()
    flow = fit_guide(y, layers=args.layers, steps=args.steps, seed=args.seed)
    mean, cov = exact_posterior(y)
    print(f"exact posterior mean {mean.tolist()}, covariance {cov.tolist()}")
    for k, v in posterior_errors(flow, y).items():
        print(f"{k}: {v:.4f}")


if __name__ == "__main__":
    main()

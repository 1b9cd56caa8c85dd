"""The relative-gradient mode of square affine layers (Gresele et al., NeurIPS 2020).

Reference values are *exact Euclidean* gradients from autograd through ``slogdet`` in float64
(``-flow.log_prob(x).mean()``), never the relative rule itself. The contract (design.md) rule
R_W = Δᵀ(YW) − W, R_b = Δᵀ(1 + Yb) − b, with Y the layer's full output, is the relative gradient of
the augmented matrix Ŵ = [[W, b], [0, 1]]: [R_W, R_b] = [G_W, g_b] · ŴᵀŴ.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

import jacfree as jf
from jacfree.train import make_adam

D = 4
L = 3
B = 16
F64 = torch.float64


def perturbed_flow(
    gradient: str = "relative",
    *,
    layers: int = L,
    paper_bias_rule: bool = False,
    bias_scale: float = 0.5,
    seed: int = 0,
) -> jf.FCFlow:
    """FCFlow in float64 with W = orthogonal + 0.3·randn and b = bias_scale·randn."""
    torch.manual_seed(seed)
    flow = jf.FCFlow(D, layers=layers, gradient=gradient, paper_bias_rule=paper_bias_rule)
    flow = flow.double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for layer in flow.affine_layers:
            layer.weight.add_(0.3 * torch.randn(D, D, generator=gen, dtype=F64))
            layer.bias.copy_(bias_scale * torch.randn(D, generator=gen, dtype=F64))
    return flow


def data(n: int = B, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.3 * torch.randn(n, D, generator=gen, dtype=F64) + 0.4


def grads(flow: jf.FCFlow) -> list[tuple[Tensor, Tensor]]:
    return [(m.weight.grad.clone(), m.bias.grad.clone()) for m in flow.affine_layers]


def euclidean_grads(flow: jf.FCFlow, x: Tensor, scale: float = 1.0) -> list[tuple[Tensor, Tensor]]:
    """Exact gradients of ``scale`` × batch-mean NLL: autograd through float64 slogdet."""
    ref = copy.deepcopy(flow)
    ref.zero_grad(set_to_none=True)
    (-scale * ref.log_prob(x).mean()).backward()
    return grads(ref)


def relative_grads(flow: jf.FCFlow, x: Tensor, scale: float = 1.0) -> list[tuple[Tensor, Tensor]]:
    flow.zero_grad(set_to_none=True)
    (scale * flow.loss(x)).backward()
    return grads(flow)


def augmented(W: Tensor, b: Tensor, G_W: Tensor, g_b: Tensor) -> tuple[Tensor, Tensor]:
    """[G_W, g_b] · ŴᵀŴ with Ŵ = [[W, b], [0, 1]]."""
    n = W.shape[0]
    W_hat = torch.zeros(n + 1, n + 1, dtype=W.dtype)
    W_hat[:n, :n] = W
    W_hat[:n, n] = b
    W_hat[n, n] = 1
    R = torch.cat([G_W, g_b[:, None]], dim=1) @ W_hat.T @ W_hat
    return R[:, :n], R[:, n]


def expected_relative(
    flow: jf.FCFlow, G: list[tuple[Tensor, Tensor]]
) -> list[tuple[Tensor, Tensor]]:
    return [
        augmented(m.weight.detach(), m.bias.detach(), G_W, g_b)
        for m, (G_W, g_b) in zip(flow.affine_layers, G, strict=True)
    ]


def assert_grads_close(
    got: list[tuple[Tensor, Tensor]], want: list[tuple[Tensor, Tensor]], tol: float = 1e-10
) -> None:
    assert len(got) == len(want)
    for k, ((gw, gb), (ww, wb)) in enumerate(zip(got, want, strict=True)):
        torch.testing.assert_close(gw, ww, rtol=tol, atol=tol, msg=f"weight of layer {k}")
        torch.testing.assert_close(gb, wb, rtol=tol, atol=tol, msg=f"bias of layer {k}")


# -- the rule ------------------------------------------------------------------------------------


@pytest.mark.parametrize("layers", [1, 2, 3, 4])
def test_relative_gradient_is_the_augmented_relative_gradient(layers: int) -> None:
    flow = perturbed_flow(layers=layers)
    x = data()
    G = euclidean_grads(flow, x)
    R = relative_grads(flow, x)
    want = expected_relative(flow, G)
    assert_grads_close(R, want)
    # the same in explicit form: G_W WᵀW + g_b bᵀW and G_W Wᵀb + g_b (1 + bᵀb)
    for m, (G_W, g_b), (R_W, R_b) in zip(flow.affine_layers, G, R, strict=True):
        W, b = m.weight.detach(), m.bias.detach()
        torch.testing.assert_close(R_W, G_W @ W.T @ W + torch.outer(g_b, W.T @ b))
        torch.testing.assert_close(R_b, G_W @ W.T @ b + g_b * (1 + b @ b))
        # and it is not the Euclidean gradient (the test can tell them apart)
        assert not torch.allclose(R_W, G_W, atol=1e-3)


def test_zero_bias_gives_the_plain_relative_gradient() -> None:
    flow = perturbed_flow(bias_scale=0.0)
    x = data()
    G = euclidean_grads(flow, x)
    R = relative_grads(flow, x)
    for m, (G_W, g_b), (R_W, R_b) in zip(flow.affine_layers, G, R, strict=True):
        W = m.weight.detach()
        torch.testing.assert_close(R_W, G_W @ W.T @ W, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(R_b, g_b, rtol=1e-10, atol=1e-10)


def test_relative_gradient_of_the_log_det_alone_is_w() -> None:
    """∂(−log|det W|)/∂W · WᵀW = −W: the term the rule writes without any inverse."""
    flow = perturbed_flow()
    for m in flow.affine_layers:
        W = m.weight.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(-torch.linalg.slogdet(W).logabsdet, W)
        torch.testing.assert_close(g @ W.detach().T @ W.detach(), -W.detach())


def test_input_gradient_is_the_exact_one() -> None:
    """The relative mode changes only parameter gradients: ∂loss/∂x is the exact backprop."""
    flow = perturbed_flow()
    x = data()
    x_rel = x.clone().requires_grad_(True)
    flow.loss(x_rel).backward()
    x_ex = x.clone().requires_grad_(True)
    (-flow.log_prob(x_ex).mean()).backward()
    torch.testing.assert_close(x_rel.grad, x_ex.grad, rtol=1e-12, atol=1e-12)


def test_paper_bias_rule_differs_by_exactly_b() -> None:
    x = data()
    correct = perturbed_flow()
    paper = perturbed_flow(paper_bias_rule=True)
    R = relative_grads(correct, x)
    P = relative_grads(paper, x)
    for m, (R_W, R_b), (P_W, P_b) in zip(correct.affine_layers, R, P, strict=True):
        b = m.bias.detach()
        assert b.abs().min() > 1e-3
        torch.testing.assert_close(P_W, R_W, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(P_b, R_b + b, rtol=1e-12, atol=1e-12)


def test_relative_gradient_is_a_descent_direction() -> None:
    flow = perturbed_flow()
    x = data()
    G = euclidean_grads(flow, x)
    R = relative_grads(flow, x)
    inner = sum(
        float((gw * rw).sum() + (gb * rb).sum()) for (gw, gb), (rw, rb) in zip(G, R, strict=True)
    )
    assert inner > 0
    # per layer too: [G_W, g_b] ŴᵀŴ with ŴᵀŴ positive definite
    for (gw, gb), (rw, rb) in zip(G, R, strict=True):
        assert float((gw * rw).sum() + (gb * rb).sum()) > 0

    # a small plain-SGD step along −R lowers the exact NLL, by about η⟨G, R⟩
    with torch.no_grad():
        nll0 = -flow.log_prob(x).mean()
    eta = 1e-4
    opt = torch.optim.SGD(flow.parameters(), lr=eta)
    relative_grads(flow, x)
    opt.step()
    with torch.no_grad():
        nll1 = -flow.log_prob(x).mean()
    assert nll1 < nll0
    torch.testing.assert_close(float(nll0 - nll1), eta * inner, rtol=1e-2, atol=0)


def test_training_step_computes_no_inverse_or_determinant(monkeypatch: pytest.MonkeyPatch) -> None:
    flow = perturbed_flow()
    x = data()
    opt = make_adam(flow.parameters(), lr=1e-3)

    def forbidden(name: str):
        def raiser(*args: object, **kwargs: object) -> None:
            raise AssertionError(f"the relative-gradient training step called {name}")

        return raiser

    for name in ("inv", "inv_ex", "solve", "solve_ex", "slogdet", "det", "lu_factor",
                 "lu_factor_ex", "lu", "lu_solve", "cholesky"):  # fmt: skip
        monkeypatch.setattr(torch.linalg, name, forbidden(f"torch.linalg.{name}"))
    for name in ("inverse", "det", "slogdet", "logdet"):
        monkeypatch.setattr(torch, name, forbidden(f"torch.{name}"))
        monkeypatch.setattr(torch.Tensor, name, forbidden(f"Tensor.{name}"))

    for _ in range(3):
        opt.zero_grad()
        loss = flow.loss(x)
        loss.backward()
        opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in flow.parameters())

    # the patch is effective: the exact paths do trip it
    with pytest.raises(AssertionError, match="called"):
        flow.log_prob(x)
    flow.set_gradient("exact")
    with pytest.raises(AssertionError, match="called"):
        flow.loss(x).backward()


def test_batched_rule_is_the_mean_of_per_sample_rules() -> None:
    flow = perturbed_flow()
    x = data(n=8)
    batch = relative_grads(flow, x)
    per_sample = [relative_grads(flow, x[n : n + 1]) for n in range(len(x))]
    mean = [
        (torch.stack([s[k][0] for s in per_sample]).mean(0),
         torch.stack([s[k][1] for s in per_sample]).mean(0))
        for k in range(L)
    ]  # fmt: skip
    assert_grads_close(batch, mean, tol=1e-12)


def test_coefficient_is_read_from_the_graph() -> None:
    flow = perturbed_flow()
    x = data()
    # scaling the loss scales both the data term and the −W / −b term
    R3 = relative_grads(flow, x, scale=3.0)
    assert_grads_close(R3, expected_relative(flow, euclidean_grads(flow, x, scale=3.0)))
    R1 = relative_grads(flow, x)
    assert_grads_close(R3, [(3 * w, 3 * b) for w, b in R1], tol=1e-12)

    # two losses in one graph: the log-det coefficient is −2, and the rule stays exact
    x2 = data(seed=5)
    flow.zero_grad(set_to_none=True)
    (flow.loss(x) + 0.5 * flow.loss(x2)).backward()
    G = euclidean_grads(flow, x)
    G2 = euclidean_grads(flow, x2)
    G_sum = [(a + 0.5 * c, b + 0.5 * d) for (a, b), (c, d) in zip(G, G2, strict=True)]
    assert_grads_close(grads(flow), expected_relative(flow, G_sum))


def test_relative_loss_value_omits_only_the_weight_log_dets() -> None:
    flow = perturbed_flow()
    x = data()
    logdets = sum(
        float(torch.linalg.slogdet(m.weight.detach()).logabsdet) for m in flow.affine_layers
    )
    assert abs(logdets) > 0.1
    exact_nll = -flow.log_prob(x).mean()
    torch.testing.assert_close(flow.loss(x) - logdets, exact_nll)


def test_set_gradient_switches_a_live_model() -> None:
    flow = perturbed_flow()
    x = data()
    opt = torch.optim.SGD(flow.parameters(), lr=1e-3)
    for _ in range(2):  # a live, trained model
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    assert flow.gradient == "relative"

    flow.set_gradient("exact")
    assert flow.gradient == "exact"
    assert all(m.gradient == "exact" for m in flow.affine_layers)
    flow.zero_grad(set_to_none=True)
    loss = flow.loss(x)
    torch.testing.assert_close(loss, -flow.log_prob(x).mean())
    loss.backward()
    assert_grads_close(grads(flow), euclidean_grads(flow, x), tol=1e-12)

    flow.set_gradient("relative")
    assert flow.gradient == "relative"
    assert_grads_close(relative_grads(flow, x), expected_relative(flow, euclidean_grads(flow, x)))


# -- known-distribution recovery -----------------------------------------------------------------


def _gaussian_data() -> tuple[Tensor, float, float]:
    """5000 samples of N((3, −2), Σ) with correlation; the MLE NLL and the paper-rule gap."""
    gen = torch.Generator().manual_seed(0)
    mu = torch.tensor([3.0, -2.0], dtype=F64)
    cov = torch.tensor([[2.0, 1.2], [1.2, 1.0]], dtype=F64)
    x = mu + torch.randn(5000, 2, generator=gen, dtype=F64) @ torch.linalg.cholesky(cov).T
    m = x.mean(0)
    S = (x - m).T @ (x - m) / len(x)  # the MLE (biased) covariance
    mle_nll = 0.5 * float(torch.logdet(2 * math.pi * math.e * S))
    # fixed point of the reference rule: E[yyᵀ] = I and ȳ = −b, so ȳ = Wμ/2 and the NLL exceeds
    # the MLE by ½ log(1 + μᵀΣ⁻¹μ/4)
    q = float(m @ torch.linalg.solve(S, m))
    return x, mle_nll, 0.5 * math.log1p(q / 4)


def _train_single_affine(x: Tensor, *, paper_bias_rule: bool) -> jf.FCFlow:
    torch.manual_seed(0)
    flow = jf.FCFlow(2, layers=1, gradient="relative", paper_bias_rule=paper_bias_rule).double()
    opt = torch.optim.SGD(flow.parameters(), lr=0.1)  # plain GD on the full batch
    for _ in range(400):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    return flow


def test_one_affine_layer_reaches_the_gaussian_mle() -> None:
    x, mle_nll, _ = _gaussian_data()
    flow = _train_single_affine(x, paper_bias_rule=False)
    with torch.no_grad():
        nll = -float(flow.log_prob(x).mean())
        z, _ = flow(x)
    assert nll == pytest.approx(mle_nll, abs=1e-6)
    torch.testing.assert_close(z.mean(0), torch.zeros(2, dtype=F64), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        torch.cov(z.T, correction=0), torch.eye(2, dtype=F64), atol=1e-4, rtol=0
    )


def test_paper_bias_rule_misses_the_mle() -> None:
    """The reference code's bias rule (no −b) converges to a different, worse fixed point."""
    x, mle_nll, predicted_gap = _gaussian_data()
    assert predicted_gap > 1.0
    flow = _train_single_affine(x, paper_bias_rule=True)
    with torch.no_grad():
        nll = -float(flow.log_prob(x).mean())
        z, _ = flow(x)
    assert math.isfinite(nll)
    assert nll > mle_nll + 1.0
    assert nll - mle_nll == pytest.approx(predicted_gap, rel=1e-3)
    assert float(z.mean(0).norm()) > 0.5  # the latent is not centred

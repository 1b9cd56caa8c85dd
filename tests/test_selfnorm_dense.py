"""The selfnorm gradient mode of dense layers (Keller et al., ICML 2021), in float64.

Reference values come from autograd of exact objectives: the batch-mean NLL through ``slogdet``
(the forward model), the NLL of the inverse model parametrised by R (W = R⁻¹ computed
differentiably), and λ·mean‖R W h − h‖² computed directly — never from the SNF rule itself.
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
B = 9
F64 = torch.float64


def snf_flow(layers: int = 3, *, exact_inverse: bool = True, seed: int = 0) -> jf.FCFlow:
    """FCFlow in selfnorm mode, float64, W = orthogonal + 0.3·randn, b = 0.5·randn and
    R = W⁻¹ (or W⁻¹ + 0.1·randn)."""
    torch.manual_seed(seed)
    flow = jf.FCFlow(D, layers=layers, gradient="selfnorm").double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in flow.affine_layers:
            m.weight.add_(0.3 * torch.randn(D, D, generator=gen, dtype=F64))
            m.bias.copy_(0.5 * torch.randn(D, generator=gen, dtype=F64))
            m.inverse_weight.copy_(torch.linalg.inv(m.weight))
            if not exact_inverse:
                m.inverse_weight.add_(0.1 * torch.randn(D, D, generator=gen, dtype=F64))
    return flow


def data(n: int = B, seed: int = 2) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.3 * torch.randn(n, D, generator=gen, dtype=F64) + 0.4


def snf_grads(flow: jf.FCFlow, x: Tensor) -> list[dict[str, Tensor]]:
    flow.zero_grad(set_to_none=True)
    flow.loss(x).backward()
    return [
        {n: p.grad.clone() for n, p in m.named_parameters(recurse=False)}
        for m in flow.affine_layers
    ]


def exact_nll_grads(flow: jf.FCFlow, x: Tensor) -> list[dict[str, Tensor]]:
    ref = copy.deepcopy(flow)
    ref.zero_grad(set_to_none=True)
    (-ref.log_prob(x).mean()).backward()
    return [{"weight": m.weight.grad, "bias": m.bias.grad} for m in ref.affine_layers]


def layer_inputs(flow: jf.FCFlow, x: Tensor) -> list[Tensor]:
    """The input h_k of every affine layer (detached)."""
    inputs, h = [], x
    for layer in flow.layers:
        if isinstance(layer, jf.SquareAffine):
            inputs.append(h.detach())
        h, _ = layer(h)
    return inputs


def test_with_r_the_exact_inverse_weight_grad_is_half_and_bias_grad_is_whole() -> None:
    flow, x = snf_flow(), data()
    flow.set_recon_weight(3.0)  # R = W⁻¹: the penalty and its gradient vanish
    got, ref = snf_grads(flow, x), exact_nll_grads(flow, x)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g["weight"], 0.5 * r["weight"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g["bias"], r["bias"], rtol=1e-10, atol=1e-12)


def test_inverse_weight_grad_is_half_the_inverse_model_nll_gradient() -> None:
    """−log p^g with the layer k parametrised by R (W_k = R⁻¹), differentiated in R."""
    flow, x = snf_flow(), data()
    got = snf_grads(flow, x)
    for k, layer in enumerate(flow.affine_layers):
        R = layer.inverse_weight.detach().clone().requires_grad_(True)
        ref = copy.deepcopy(flow).set_gradient("exact")
        target = ref.affine_layers[k]
        del target.weight
        target.weight = torch.linalg.inv(R)  # a plain tensor: differentiable in R
        (grad_r,) = torch.autograd.grad(-ref.log_prob(x).mean(), R)
        torch.testing.assert_close(got[k]["inverse_weight"], 0.5 * grad_r, rtol=1e-9, atol=1e-12)


def test_input_gradient_is_exact() -> None:
    flow, x = snf_flow(exact_inverse=False), data()
    flow.set_recon_weight(2.0)
    xr = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(flow.loss(xr), xr)
    ref = copy.deepcopy(flow).set_gradient("exact")
    xr2 = x.clone().requires_grad_(True)
    (gx_ref,) = torch.autograd.grad(-ref.log_prob(xr2).mean(), xr2)
    torch.testing.assert_close(gx, gx_ref, rtol=1e-10, atol=1e-12)


def test_reconstruction_gradient_is_autograd_of_the_penalty_and_stays_in_its_layer() -> None:
    flow, x = snf_flow(exact_inverse=False), data()
    lam = 0.7
    flow.set_recon_weight(0.0)
    without = snf_grads(flow, x)
    flow.set_recon_weight(lam)
    with_penalty = snf_grads(flow, x)
    for k, (layer, h) in enumerate(zip(flow.affine_layers, layer_inputs(flow, x), strict=True)):
        W = layer.weight.detach().clone().requires_grad_(True)
        R = layer.inverse_weight.detach().clone().requires_grad_(True)
        penalty = lam * (h @ W.T @ R.T - h).square().sum(1).mean()
        gw, gr = torch.autograd.grad(penalty, (W, R))
        torch.testing.assert_close(
            with_penalty[k]["weight"] - without[k]["weight"], gw, rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            with_penalty[k]["inverse_weight"] - without[k]["inverse_weight"],
            gr,
            rtol=1e-9,
            atol=1e-12,
        )
        # the bias (and, through h detached, every earlier layer) sees no penalty
        torch.testing.assert_close(with_penalty[k]["bias"], without[k]["bias"], rtol=0, atol=0)


def test_loss_value_is_nll_without_snf_log_dets_plus_the_penalty() -> None:
    flow, x = snf_flow(exact_inverse=False), data()
    lam = 1.5
    flow.set_recon_weight(lam)
    value = flow.loss(x)
    penalty = sum(
        (h @ m.weight.T @ m.inverse_weight.T - h).square().sum(1).mean()
        for m, h in zip(flow.affine_layers, layer_inputs(flow, x), strict=True)
    )
    log_dets = sum(torch.linalg.slogdet(m.weight).logabsdet for m in flow.affine_layers)
    expected = -flow.log_prob(x).mean() + log_dets + lam * penalty
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    diag = flow.training_diagnostics()
    torch.testing.assert_close(diag["recon"], penalty.detach(), rtol=1e-12, atol=1e-12)


def test_the_rule_follows_any_linear_use_of_the_terms() -> None:
    """A loss that scales the NLL by 3 gets 3× every SNF gradient (c and λ read from the graph)."""
    flow, x = snf_flow(exact_inverse=False), data()
    flow.set_recon_weight(0.4)
    base = snf_grads(flow, x)
    flow.zero_grad(set_to_none=True)
    (3.0 * flow.loss(x)).backward()
    for m, g in zip(flow.affine_layers, base, strict=True):
        for name, p in m.named_parameters(recurse=False):
            torch.testing.assert_close(p.grad, 3.0 * g[name], rtol=1e-12, atol=1e-12)


def test_training_step_computes_no_inverse_or_determinant(monkeypatch: pytest.MonkeyPatch) -> None:
    flow, x = snf_flow(exact_inverse=False), data()
    opt = make_adam(flow.parameters(), 1e-3)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an O(D³) routine was called in a selfnorm training step")

    for name in ("inv", "solve", "slogdet", "det", "lu_factor", "lu_solve", "inv_ex"):
        monkeypatch.setattr(torch.linalg, name, forbidden)
    for name in ("inverse", "det", "logdet", "slogdet"):
        monkeypatch.setattr(torch, name, forbidden)
    for _ in range(2):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()


def test_reconstruction_alone_drives_r_to_the_inverse() -> None:
    """With W frozen, Adam on the penalty alone makes R W → I."""
    torch.manual_seed(3)
    layer = jf.SquareAffine(D, "selfnorm").double()
    with torch.no_grad():
        layer.weight.add_(0.4 * torch.randn(D, D, dtype=F64))
        layer.inverse_weight.copy_(torch.randn(D, D, dtype=F64))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    opt = torch.optim.Adam([layer.inverse_weight], lr=0.02)
    h = torch.randn(256, D, dtype=F64)
    eye = torch.eye(D, dtype=F64)
    start = float((layer.inverse_weight @ layer.weight - eye).detach().norm())
    for _ in range(1500):
        opt.zero_grad()
        layer.reconstruction_error(h).mean().backward()
        opt.step()
    end = float((layer.inverse_weight @ layer.weight - eye).detach().norm())
    assert start > 1.0
    assert end < 1e-4


def test_entering_selfnorm_sets_r_to_the_inverse_and_sampling_through_r_matches() -> None:
    torch.manual_seed(4)
    flow = jf.FCFlow(D, layers=3, gradient="relative").double()
    with torch.no_grad():
        for m in flow.affine_layers:
            m.weight.add_(0.3 * torch.randn(D, D, dtype=F64))
    assert all(m.inverse_weight is None for m in flow.affine_layers)
    flow.set_gradient("selfnorm")
    for m in flow.affine_layers:
        torch.testing.assert_close(
            m.inverse_weight @ m.weight, torch.eye(D, dtype=F64), rtol=0, atol=1e-12
        )
    z = torch.randn(7, D, dtype=F64)
    torch.testing.assert_close(flow.inverse(z, approximate=True), flow.inverse(z))
    gen = torch.Generator().manual_seed(0)
    exact = flow.sample(5, generator=gen)
    gen = torch.Generator().manual_seed(0)
    torch.testing.assert_close(flow.sample(5, generator=gen, approximate=True), exact)
    # a fresh layer in selfnorm mode starts with R = W⁻¹ (W orthogonal: R = Wᵀ)
    fresh = jf.SquareAffine(D, "selfnorm")
    torch.testing.assert_close(fresh.inverse_weight, fresh.weight.T, rtol=0, atol=1e-6)


def test_approximate_inverse_error_follows_the_reconstruction_error() -> None:
    flow = snf_flow(layers=1, exact_inverse=False)
    layer = flow.affine_layers[0]
    x = data(200)
    z, _ = flow(x)
    err = (flow.inverse(z, approximate=True) - x).square().sum(1).mean()
    flow.loss(x)
    torch.testing.assert_close(err, layer.last_reconstruction, rtol=1e-10, atol=1e-12)


def test_recon_weight_is_checked_saved_and_shared() -> None:
    flow = jf.FCFlow(D, layers=2, gradient="selfnorm", recon_weight=5.0)
    assert flow.recon_weight == 5.0
    flow.set_recon_weight(0.25)
    state = flow.state_dict()
    assert all(float(v) == 0.25 for k, v in state.items() if k.endswith("recon_weight"))
    other = jf.FCFlow(D, layers=2, gradient="selfnorm")
    other.load_state_dict(state)
    assert other.recon_weight == 0.25
    with pytest.raises(ValueError, match=r"recon_weight \(λ\) must be >= 0"):
        flow.set_recon_weight(-1.0)


@pytest.mark.slow
def test_one_snf_layer_reaches_the_gaussian_mle() -> None:
    """On N(m, S) data, SNF training of one affine layer reaches the exact Gaussian optimum."""
    torch.manual_seed(5)
    m = torch.tensor([3.0, -2.0], dtype=F64)
    A = torch.tensor([[1.5, 0.0], [0.8, 0.5]], dtype=F64)
    x = torch.randn(4000, 2, dtype=F64) @ A.T + m
    S = torch.cov(x.T, correction=0)
    optimum = 0.5 * float(torch.logdet(2 * math.pi * math.e * S))
    flow = jf.FCFlow(2, layers=1, gradient="selfnorm").double()
    opt = torch.optim.Adam(flow.parameters(), lr=0.02)
    for _ in range(2500):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    nll = float(-flow.log_prob(x).mean().detach())
    assert nll == pytest.approx(optimum, abs=2e-3)
    layer = flow.affine_layers[0]
    eye = torch.eye(2, dtype=F64)
    assert float((layer.inverse_weight @ layer.weight - eye).detach().norm()) < 1e-2

"""Conditional flows: normalisation per context, the relative and SNF rules with a context,
training on (x, context) pairs, and a known conditional Gaussian learned."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

import jacfree as jf
from jacfree.flows import ContextAffine

F64 = torch.float64
D = 4
B = 12


def _perturb(flow: jf.Flow, seed: int = 0, scale: float = 0.3, square: float = 0.3) -> jf.Flow:
    """float64; square layers W = orthogonal + square·randn, b = 0.5·randn, R = W⁻¹ exactly (the
    SNF oracle's condition); every other parameter (context encoder and heads included)
    + scale·randn, so that the context really acts."""
    gen = torch.Generator().manual_seed(seed)
    flow = flow.double()
    done: set[int] = set()
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, jf.SquareAffine):
                m.weight.add_(square * torch.randn(m.weight.shape, generator=gen, dtype=F64))
                m.bias.copy_(0.5 * torch.randn(m.bias.shape, generator=gen, dtype=F64))
                if m.inverse_weight is not None:
                    m.inverse_weight.copy_(torch.linalg.inv(m.weight))
                done |= {id(p) for p in m.parameters()}
        for p in flow.parameters():
            if id(p) not in done:
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=F64))
    return flow


def _heads_moved(flow: jf.Flow) -> bool:
    return all(
        m.head.weight.abs().sum() > 0 for m in flow.modules() if isinstance(m, ContextAffine)
    )


# -- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "contexts"),
    [
        (
            lambda: jf.FCFlow(2, layers=3, alpha=0.6, context_features=2),
            torch.tensor([[1.0, -0.5], [-2.0, 0.7]], dtype=F64),
        ),
        (lambda: jf.FCFlow(2, layers=2, alpha=0.6, context_classes=3), torch.tensor([0, 2])),
        (
            lambda: jf.NICE(2, couplings=3, hidden=16, hidden_layers=1, context_features=1),
            torch.tensor([[0.8], [-1.5]], dtype=F64),
        ),
    ],
    ids=["FCFlow-vector", "FCFlow-labels", "NICE-vector"],
)
def test_density_integrates_to_one_for_each_context(build, contexts: Tensor) -> None:
    torch.manual_seed(0)
    flow = _perturb(build(), scale=0.1, square=0.1)
    assert _heads_moved(flow) or isinstance(flow, jf.NICE)
    n, lim = 561, 14.0
    g = torch.linspace(-lim, lim, n, dtype=F64)
    grid = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    cell = (g[1] - g[0]) ** 2
    with torch.no_grad():
        densities = [flow.log_prob(grid, context=c).exp() for c in contexts]
    masses = [float(p.sum() * cell) for p in densities]
    assert masses == pytest.approx([1.0, 1.0], abs=2e-3)
    # and the two contexts give different densities (the context is used)
    assert (densities[0] - densities[1]).abs().max() > 1e-3


@pytest.mark.parametrize(
    ("shape", "per"), [((3,), "feature"), ((2, 3, 2), "channel"), ((2, 3, 2), "element")]
)
def test_context_affine_round_trip_and_log_det(shape: tuple[int, ...], per: str) -> None:
    """Inverse round trip, and the log-det against slogdet of the autograd Jacobian, per
    sample (each sample has its own context)."""
    torch.manual_seed(0)
    layer = ContextAffine(shape, 5, per=per).double()
    with torch.no_grad():
        layer.head.weight.normal_(0, 0.5)
        layer.head.bias.normal_(0, 0.5)
    x, h = torch.randn(4, *shape, dtype=F64), torch.randn(4, 5, dtype=F64)
    z, logdet = layer(x, h)
    torch.testing.assert_close(layer.inverse(z, h), x)
    for n in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda v, n=n: layer(v[None], h[n : n + 1])[0], x[n]
        )
        d = x[n].numel()
        torch.testing.assert_close(logdet[n], torch.linalg.slogdet(jac.reshape(d, d)).logabsdet)
    # a fresh layer is the identity, whatever the context
    fresh = ContextAffine(shape, 5, per=per).double()
    z0, ld0 = fresh(x, h)
    assert torch.equal(z0, x) and torch.equal(ld0, torch.zeros(4, dtype=F64))


# -- the gradient rules with a context -----------------------------------------------------------


def _data(seed: int = 1) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = 1.3 * torch.randn(B, D, generator=gen, dtype=F64) + 0.4
    c = torch.randn(B, 3, generator=gen, dtype=F64)
    return x, c


def _exact_grads(flow: jf.Flow, x: Tensor, c: Tensor) -> dict[str, Tensor]:
    ref = copy.deepcopy(flow)
    ref.zero_grad(set_to_none=True)
    (-ref.log_prob(x, context=c).mean()).backward()
    return {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}


def _loss_grads(flow: jf.Flow, x: Tensor, c: Tensor) -> dict[str, Tensor]:
    flow.zero_grad(set_to_none=True)
    flow.loss(x, context=c).backward()
    return {n: p.grad.clone() for n, p in flow.named_parameters() if p.grad is not None}


def _square_layer_names(flow: jf.Flow) -> list[str]:
    return [n for n, m in flow.named_modules() if isinstance(m, jf.SquareAffine)]


def test_relative_rule_holds_with_a_context() -> None:
    """Square layers: the exact gradient (with the context) times Ŵᵀ Ŵ; context parameters
    (encoder and heads): the exact Euclidean gradient."""
    torch.manual_seed(0)
    flow = _perturb(jf.FCFlow(D, layers=3, gradient="relative", context_features=3))
    assert _heads_moved(flow)
    x, c = _data()
    exact, got = _exact_grads(flow, x, c), _loss_grads(flow, x, c)
    squares = _square_layer_names(flow)
    for name in squares:
        m = flow.get_submodule(name)
        W, b = m.weight.detach(), m.bias.detach()
        G_W, g_b = exact[f"{name}.weight"], exact[f"{name}.bias"]
        want_W = G_W @ W.T @ W + torch.outer(g_b, W.T @ b)
        want_b = G_W @ W.T @ b + g_b * (1 + b @ b)
        torch.testing.assert_close(got[f"{name}.weight"], want_W, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(got[f"{name}.bias"], want_b, rtol=1e-10, atol=1e-10)
        assert not torch.allclose(want_W, G_W, atol=1e-3)
    others = [n for n in exact if not n.startswith(tuple(squares))]
    assert any(n.startswith("context_encoder") for n in others)
    assert any(".head." in n for n in others)
    for n in others:
        torch.testing.assert_close(got[n], exact[n], rtol=1e-10, atol=1e-12, msg=n)


def test_selfnorm_rule_holds_with_a_context() -> None:
    """With R = W⁻¹: weight gradients are half the exact ones, biases and every context
    parameter get the exact gradient, R gets half the inverse-model gradient (−Rᵀ… vanishes
    only against W): checked here against the exact NLL with the same context."""
    torch.manual_seed(0)
    flow = _perturb(jf.FCFlow(D, layers=3, gradient="selfnorm", context_features=3))
    x, c = _data()
    exact, got = _exact_grads(flow, x, c), _loss_grads(flow, x, c)
    squares = _square_layer_names(flow)
    for name in squares:
        torch.testing.assert_close(
            got[f"{name}.weight"], 0.5 * exact[f"{name}.weight"], rtol=1e-10, atol=1e-12
        )
        torch.testing.assert_close(
            got[f"{name}.bias"], exact[f"{name}.bias"], rtol=1e-10, atol=1e-12
        )
    others = [n for n in exact if not n.startswith(tuple(squares))]
    assert any(n.startswith("context_encoder") for n in others)
    for n in others:
        torch.testing.assert_close(got[n], exact[n], rtol=1e-10, atol=1e-12, msg=n)


def test_relative_loss_value_is_the_nll_without_weight_log_dets_with_a_context() -> None:
    torch.manual_seed(0)
    flow = _perturb(jf.FCFlow(D, layers=2, gradient="relative", context_features=3))
    x, c = _data()
    logdets = sum(m.logabsdet() for m in flow.affine_layers)
    with torch.no_grad():
        want = -(flow.log_prob(x, context=c) - logdets).mean()
        torch.testing.assert_close(flow.loss(x, context=c), want)


@pytest.mark.parametrize(
    "build",
    [
        *[
            lambda mode=mode: jf.FCFlow(D, layers=2, gradient=mode, context_features=3)
            for mode in jf.GRADIENT_MODES
        ],
        lambda: jf.FCFlow(D, layers=2, context_classes=5),
        lambda: jf.NICE(D, hidden=8, hidden_layers=1, context_features=3),
    ],
    ids=[*(f"FCFlow-{m}" for m in jf.GRADIENT_MODES), "FCFlow-labels", "NICE"],
)
def test_conditional_training_loss_traces_under_torch_compile(build) -> None:
    """The training step's context path (encoder, context layers, conditional couplings) reads
    no value on the host: ``loss(x, context=c)`` traces whole, validation on."""
    torch.manual_seed(0)
    flow = build()
    x = torch.randn(B, D)
    c = torch.randint(0, 5, (B,)) if flow.context_encoder.classes else torch.randn(B, 3)
    compiled = torch.compile(lambda x, c: flow.loss(x, context=c), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, c), flow.loss(x, context=c))


# -- training ------------------------------------------------------------------------------------

S0 = torch.tensor([[1.0, 0.6], [0.6, 1.0]], dtype=F64)


def _truth(c: Tensor) -> tuple[Tensor, Tensor]:
    """x | c ~ N(μ(c), Σ(c)): μ(c) = (c, 1 − 2c), Σ(c) = e^{c} S0 (scalar context c)."""
    mean = torch.stack([c, 1 - 2 * c], -1)
    return mean, math.e ** c[..., None, None] * S0


def _conditional_gaussian(n: int, seed: int) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    c = 2 * torch.rand(n, generator=gen, dtype=F64) - 1
    mean, cov = _truth(c)
    eps = torch.randn(n, 2, generator=gen, dtype=F64)
    x = mean + (torch.linalg.cholesky(cov) @ eps[..., None])[..., 0]
    return x, c[:, None]


def _implied_gaussian(flow: jf.FCFlow, c: float) -> tuple[Tensor, Tensor]:
    """Mean and covariance of a one-layer conditional FCFlow (affine in x for a fixed c)."""
    ctx = torch.tensor([c], dtype=F64)
    with torch.no_grad():
        mean = flow.inverse(torch.zeros(1, 2, dtype=F64), context=ctx)[0]
    jac = torch.autograd.functional.jacobian(
        lambda x: flow(x[None], ctx)[0][0], torch.zeros(2, dtype=F64)
    )
    return mean, torch.linalg.inv(jac.T @ jac)


def _train(flow: jf.Flow, x: Tensor, c: Tensor, steps: int) -> None:
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (256,), generator=gen)
        opt.zero_grad()
        flow.loss(x[idx], context=c[idx]).backward()
        opt.step()
        schedule.step()


@pytest.mark.slow
@pytest.mark.parametrize("gradient", ["relative", "selfnorm"])
def test_learns_a_known_conditional_gaussian(gradient: str) -> None:
    """μ(c) and Σ(c) recovered at c ∈ {−0.8, 0, 0.8}: max |Δμ| < 0.04 and ‖ΔΣ‖_F/‖Σ‖_F < 0.04
    (measured: at most 0.017 for both modes; 20,000 samples, 2,000 Adam steps of 256)."""
    torch.manual_seed(0)
    flow = jf.FCFlow(2, layers=1, gradient=gradient, context_features=1, context_hidden=32)
    flow = flow.double()
    x, c = _conditional_gaussian(20000, seed=1)
    steps = 2000
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # many tiny steps: one thread is fastest on a busy machine
    try:
        _train(flow, x, c, steps)
    finally:
        torch.set_num_threads(threads)
    for value in (-0.8, 0.0, 0.8):
        mean, cov = _implied_gaussian(flow, value)
        true_mean, true_cov = _truth(torch.tensor(value, dtype=F64))
        assert (mean - true_mean).abs().max() < 0.04, (value, mean, true_mean)
        rel = torch.linalg.matrix_norm(cov - true_cov) / torch.linalg.matrix_norm(true_cov)
        assert rel < 0.04, (value, cov, true_cov)


def test_fit_on_pairs_validates_them_and_reports_conditional_nll() -> None:
    torch.manual_seed(0)
    flow = jf.FCFlow(2, layers=1, context_features=1).double()
    x, c = _conditional_gaussian(400, seed=2)
    result = jf.fit(flow, (x, c), (x[:100], c[:100]), epochs=2, progress=False)
    assert result.history[-1]["val_nll"] == pytest.approx(
        float(-flow.log_prob(x[:100], context=c[:100]).detach().mean()), rel=1e-9
    )
    nll = jf.evaluate_nll(flow, (x, c))
    assert nll.n == 400
    with pytest.raises(ValueError, match="same number of samples"):
        jf.fit(flow, (x, c[:10]), epochs=1, progress=False)

"""RelativeAdam: Adam's statistics in the multiplicative coordinates of the relative gradient.

References are exact Euclidean gradients from autograd through float64 ``slogdet``; the
multiplicative gradient is Ê = [G_W, g_b] · Ŵᵀ with Ŵ = [[W, b], [0, 1]], so that
[R_W, R_b] = Ê Ŵ.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import Tensor

import jacfree as jf
from jacfree.flows.relative_stats import row_stats, tap_row_stats
from jacfree.train import RelativeAdam, make_optimizer

F64 = torch.float64


def perturbed_flow(d: int = 4, layers: int = 3, seed: int = 0, validate: bool = True) -> jf.FCFlow:
    torch.manual_seed(seed)
    flow = jf.FCFlow(d, layers=layers, gradient="relative", validate=validate).double()
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for m in flow.affine_layers:
            m.weight.add_(0.3 * torch.randn(d, d, generator=gen, dtype=F64))
            m.bias.copy_(0.5 * torch.randn(d, generator=gen, dtype=F64))
    return flow


def data(n: int, d: int = 4, seed: int = 1) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.3 * torch.randn(n, d, generator=gen, dtype=F64) + 0.4


def multiplicative_grads(flow: jf.FCFlow, x: Tensor) -> list[Tensor]:
    """Ê = [G_W, g_b] Ŵᵀ per layer, from the exact Euclidean gradient."""
    ref = copy.deepcopy(flow).set_gradient("exact")
    (-ref.log_prob(x).mean()).backward()
    out = []
    for m in ref.affine_layers:
        d = m.features
        w_hat = torch.eye(d + 1, dtype=F64)
        w_hat[:d, :d], w_hat[:d, d] = m.weight.detach(), m.bias.detach()
        g = torch.cat([m.weight.grad, m.bias.grad[:, None]], 1)
        out.append(g @ w_hat.T)
    return out


@pytest.mark.parametrize("n", [3, 20])  # B ≤ D (Gram route) and B > D (Ê route)
def test_row_stats_are_those_of_the_multiplicative_gradient(n):
    flow = perturbed_flow()
    x = data(n)
    opt = RelativeAdam(flow)  # turns the taps on
    opt.zero_grad()
    flow.loss(x).backward()
    for m, e in zip(flow.affine_layers, multiplicative_grads(flow, x), strict=True):
        d = m.features
        q, e_b = m.relative_row_stats
        torch.testing.assert_close(q, e[:, :d].square().mean(1), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(e_b, e[:, d], rtol=1e-10, atol=1e-12)


def test_row_stats_follow_the_log_det_coefficient():
    """A loss 2.5 × NLL scales Δ and c alike: Ê, hence q, scale by 2.5²."""
    torch.manual_seed(0)
    y = torch.randn(6, 3, dtype=F64)
    delta = torch.randn(6, 3, dtype=F64)
    base = row_stats(delta, y, torch.tensor(-1.0, dtype=F64))
    scaled = row_stats(2.5 * delta, y, torch.tensor(-2.5, dtype=F64))
    torch.testing.assert_close(scaled[0], 2.5**2 * base[0])
    torch.testing.assert_close(scaled[1], 2.5 * base[1])


def test_first_step_is_a_positive_definite_preconditioning_of_the_exact_gradient():
    """Step 1: ΔŴ = −lr · (S ∘ Ê) Ŵ, S = [1/√q | 1/|e_b|] (Adam's bias corrections cancel)."""
    flow = perturbed_flow()
    x = data(20)
    lr = 1e-3
    before = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in flow.affine_layers]
    expected_e = multiplicative_grads(flow, x)
    opt = RelativeAdam(flow, lr=lr, eps=0.0)
    opt.zero_grad()
    flow.loss(x).backward()
    opt.step()
    for m, (w0, b0), e in zip(flow.affine_layers, before, expected_e, strict=True):
        d = m.features
        s = torch.cat(
            [e[:, :d].square().mean(1, keepdim=True).rsqrt().expand(d, d), 1 / e[:, d:].abs()], 1
        )
        w_hat = torch.eye(d + 1, dtype=F64)
        w_hat[:d, :d], w_hat[:d, d] = w0, b0
        step = -lr * (s * e) @ w_hat
        torch.testing.assert_close(m.weight.detach() - w0, step[:, :d], rtol=1e-8, atol=1e-13)
        torch.testing.assert_close(m.bias.detach() - b0, step[:, d], rtol=1e-8, atol=1e-13)
        # a descent direction: ⟨G Ŵᵀ, S ∘ (G Ŵᵀ)⟩ > 0
        assert float((e * (s * e)).sum()) > 0


def test_exact_mle_is_a_fixed_point():
    """One affine layer at the Gaussian MLE (W = Σ^{-1/2}, b = −Wμ, full batch): R = 0, so the
    RelativeAdam direction diag(a)·R is zero and the first step leaves the layer in place, while
    from a point off the MLE the same step moves it."""
    mix = torch.tensor(
        [[1.0, 0.0, 0.0, 0.0], [0.5, 2.0, 0.0, 0.0], [0.0, 0.3, 0.7, 0.0], [0.1, 0.0, 0.2, 1.5]],
        dtype=F64,
    )
    x = data(200) @ mix
    mu, cov = x.mean(0), torch.cov(x.T, correction=0)
    lam, u = torch.linalg.eigh(cov)
    for offset, moves in ((0.0, False), (0.1, True)):
        flow = jf.FCFlow(4, layers=1, gradient="relative").double()
        layer = flow.affine_layers[0]
        with torch.no_grad():
            layer.weight.copy_((u * lam.rsqrt()) @ u.T + offset * torch.eye(4, dtype=F64))
            layer.bias.copy_(-layer.weight @ mu)
        w0, b0 = layer.weight.detach().clone(), layer.bias.detach().clone()
        opt = RelativeAdam(flow, lr=1e-2)
        flow.loss(x).backward()
        assert (float(layer.weight.grad.abs().max()) < 1e-12) != moves  # R = 0 only at the MLE
        opt.step()
        change = max(
            float((layer.weight.detach() - w0).abs().max()),
            float((layer.bias.detach() - b0).abs().max()),
        )
        assert (change > 1e-3) if moves else (change < 1e-8)


def _gap_to_mle(optimizer: str, gradient: str, steps: int = 300, lr: float = 1e-2) -> float:
    """NLL − Gaussian MLE after ``steps`` mini-batch steps on N(3s·1, s²AAᵀ), s = 0.05."""
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(4, 4, generator=gen, dtype=F64)
    x = 0.05 * (torch.randn(2000, 4, generator=gen, dtype=F64) @ a.T) + 0.15
    mle = 0.5 * torch.logdet(2 * math.pi * math.e * torch.cov(x.T, correction=0))
    torch.manual_seed(0)
    flow = jf.FCFlow(4, layers=1, gradient=gradient).double()
    opt = make_optimizer(optimizer, flow, lr)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (100,), generator=gen)
        opt.zero_grad()
        flow.loss(x[idx]).backward()
        opt.step()
    with torch.no_grad():
        return float(-flow.log_prob(x).mean() - mle)


def test_scaled_gaussian_reaches_the_mle_in_300_steps():
    """Data at 1/20 of unit scale: W must grow 20×. Adam's fixed-size steps lag (> 1 nat short
    after 300 steps, relative or exact); the default recipe for a relative flow (RelativeAdam,
    whose multiplicative steps keep pace with W's scale) gets within 0.02."""
    assert isinstance(make_optimizer("default", jf.FCFlow(2, layers=1), 1e-3), RelativeAdam)
    assert _gap_to_mle("default", "relative") < 0.02
    assert _gap_to_mle("adam", "relative") > 1.0
    assert _gap_to_mle("adam", "exact") > 1.0


def test_other_parameters_get_adam_and_the_state_round_trips():
    flow = perturbed_flow(layers=2).set_gradient("selfnorm").set_gradient("relative")
    assert all(m.inverse_weight is not None for m in flow.affine_layers)
    opt = RelativeAdam(flow, lr=1e-3)
    assert opt.fallback is not None
    inv0 = [m.inverse_weight.detach().clone() for m in flow.affine_layers]
    for m in flow.affine_layers:
        m.inverse_weight.grad = torch.ones_like(m.inverse_weight)
    flow.loss(data(8)).backward()
    opt.step()
    for m, r0 in zip(flow.affine_layers, inv0, strict=True):  # Adam's first step: −lr·sign
        torch.testing.assert_close(m.inverse_weight.detach() - r0, torch.full_like(r0, -1e-3))
    clone = RelativeAdam(copy.deepcopy(flow), lr=1e-3)
    clone.load_state_dict(opt.state_dict())
    assert (
        clone.state_dict()["fallback"]["state"].keys() == opt.fallback.state_dict()["state"].keys()
    )


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match="FCFlow"):
        RelativeAdam(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="lr"):
        RelativeAdam(perturbed_flow(), lr=0.0)
    with pytest.raises(ValueError, match="unknown optimizer"):
        make_optimizer("sgd", perturbed_flow(), 1e-3)
    flow = perturbed_flow()
    opt = RelativeAdam(flow)
    flow.set_gradient("exact")
    flow.loss(data(8)).backward()
    with pytest.raises(RuntimeError, match="'exact' mode"):
        opt.step()


def test_flow_loss_with_taps_traces_under_torch_compile():
    """The tapped training loss compiles as one graph and records the same statistics."""
    flow, ref = perturbed_flow(), perturbed_flow()
    RelativeAdam(flow), RelativeAdam(ref)
    x = data(8)
    torch.compile(flow.loss, fullgraph=True, backend="eager")(x).backward()
    ref.loss(x).backward()
    for m, r in zip(flow.affine_layers, ref.affine_layers, strict=True):
        torch.testing.assert_close(m.relative_row_stats, r.relative_row_stats)
        torch.testing.assert_close(m.weight.grad, r.weight.grad)


def test_tap_traces_under_torch_compile():
    """The statistics tap in a compiled step: identity forward, the same q as eager."""

    def step(x: Tensor, w: Tensor, out: Tensor) -> Tensor:
        y = x @ w.t()
        marker = (0 * w.sum()).expand(len(x))  # zero-valued, like a relative layer's log-det
        z, ld = tap_row_stats(y, marker, out)
        return 0.5 * z.square().sum(1).mean() - ld.mean()

    x, w = data(8), torch.eye(4, dtype=F64) + 0.1 * data(4, seed=3)
    outs = []
    for fn in (step, torch.compile(step, fullgraph=True, backend="eager")):
        wp = w.clone().requires_grad_()
        out = torch.zeros(2, 4, dtype=F64)
        fn(x, wp, out).backward()
        outs.append(out)
    y = x @ w.t()
    torch.testing.assert_close(outs[1], outs[0])
    torch.testing.assert_close(outs[0], row_stats(y / 8, y, torch.tensor(-1.0, dtype=F64)))


DDP_WORKER = """
import sys, torch, torch.distributed as dist
from jacfree.train import RelativeAdam, fit

sys.path.insert(0, {tests!r})
from test_distributed import SETTINGS, data, model

dist.init_process_group("gloo")
flow = model("relative")
x, v = data()
res = fit(flow, x, v, optimizer=RelativeAdam(flow, lr=SETTINGS["lr"]), **SETTINGS)
if dist.get_rank() == 0:
    torch.save({{"state": flow.state_dict(), "history": res.history}}, {out!r})
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_ddp_training_with_relative_adam_equals_single_process(tmp_path):
    """Two processes average their shares of Ê, as DDP averages gradients: same parameters."""
    import textwrap
    from pathlib import Path

    from test_distributed import SETTINGS, data, model, torchrun

    out, script = tmp_path / "ddp.pt", tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(DDP_WORKER.format(tests=tests, out=str(out))))
    torchrun(str(script), cwd=tmp_path)
    ddp = torch.load(out, weights_only=True)
    flow = model("relative")
    x, v = data()
    ref = jf.fit(flow, x, v, optimizer=RelativeAdam(flow, lr=SETTINGS["lr"]), **SETTINGS)
    for name, value in flow.state_dict().items():
        torch.testing.assert_close(ddp["state"][name], value, rtol=1e-9, atol=1e-10, msg=name)
    for a, b in zip(ref.history, ddp["history"], strict=True):
        assert b["val_nll"] == pytest.approx(a["val_nll"], rel=1e-10)


def test_fit_with_relative_adam_resumes_exactly(tmp_path):
    """A run stopped after 2 epochs and resumed to 3 equals an uninterrupted 3-epoch run."""
    x, v = data(120), data(30, seed=2)
    settings = {"batch_size": 25, "patience": None, "progress": False, "seed": 3}

    def run(epochs: int, out=None, resume=False) -> jf.FCFlow:
        flow = perturbed_flow(layers=2)
        opt = RelativeAdam(flow, lr=1e-2)
        jf.fit(flow, x, v, epochs=epochs, optimizer=opt, out_dir=out, resume=resume, **settings)
        return flow

    run(2, tmp_path)
    resumed = run(3, tmp_path, resume=True)
    straight = run(3)
    expected = straight.state_dict()
    for name, value in resumed.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=0, atol=0, msg=name)


def test_conditional_flow_taps_and_trains():
    """With a context (ContextAffine layers between the square ones), the taps still measure the
    square layers and RelativeAdam steps them; the context network gets ordinary Adam."""
    torch.manual_seed(0)
    flow = jf.FCFlow(3, layers=2, gradient="relative", context_features=2).double()
    x, c = data(16, d=3), data(16, d=2, seed=5)
    opt = RelativeAdam(flow, lr=1e-2)
    assert opt.fallback is not None
    with torch.no_grad():
        before = -flow.log_prob(x, context=c).mean()
    for _ in range(50):
        opt.zero_grad()
        flow.loss(x, context=c).backward()
        opt.step()
    assert all(float(m.relative_row_stats[0].sum()) > 0 for m in flow.affine_layers)
    with torch.no_grad():
        assert float(-flow.log_prob(x, context=c).mean()) < float(before) - 0.1


def _relative_step(flow: jf.FCFlow, before: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
    """U with Ŵ_new = (I + U) Ŵ_old for every layer: the step in multiplicative coordinates."""
    out = []
    for m, (w0, b0) in zip(flow.affine_layers, before, strict=True):
        d = m.features
        hat0, hat1 = torch.eye(d + 1, dtype=F64), torch.eye(d + 1, dtype=F64)
        hat0[:d, :d], hat0[:d, d] = w0, b0
        hat1[:d, :d], hat1[:d, d] = m.weight.detach(), m.bias.detach()
        out.append(torch.linalg.solve(hat0, hat1 - hat0, left=False)[:d])
    return out


@pytest.mark.parametrize("max_step", [None, 0.1])
def test_max_step_bounds_the_multiplicative_step(max_step):
    """Step 1 normalises every row of Ê to RMS 1, so ‖U‖_F = lr·√(D² + D) ≈ 2.2 at lr 0.5,
    D = 4: a step that can make W singular. With ``max_step`` τ, ‖U‖_F = τ exactly (and so
    ‖U‖₂ ≤ τ < 1: I + U stays invertible), and U keeps its direction."""
    flow, ref = perturbed_flow(), perturbed_flow()
    x, lr = data(20), 0.5
    steps = []
    for f, cap in ((flow, max_step), (ref, None)):
        before = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in f.affine_layers]
        opt = RelativeAdam(f, lr=lr, eps=0.0, max_step=cap)
        f.loss(x).backward()
        opt.step()
        steps.append(_relative_step(f, before))
    for u, u_ref in zip(*steps, strict=True):
        d = u.shape[0]
        assert float(u_ref.norm()) == pytest.approx(lr * math.sqrt(d * d + d), rel=1e-9)
        if max_step is None:
            torch.testing.assert_close(u, u_ref)
        else:
            assert float(u.norm()) == pytest.approx(max_step, rel=1e-9)
            torch.testing.assert_close(u, u_ref * (max_step / u_ref.norm()))

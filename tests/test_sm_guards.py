"""FD forms: no double-backward graph, parallel == sequential, precision guard, argument errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacfree.scorematching import fd, losses

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def mlp_energy(d: int = 5, dtype: torch.dtype = DT) -> nn.Module:
    return nn.Sequential(
        nn.Linear(d, 32), nn.Softplus(), nn.Linear(32, 32), nn.Softplus(), nn.Linear(32, 1)
    ).to(dtype)


def mlp_score(d: int = 5, dtype: torch.dtype = DT) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 32), nn.Tanh(), nn.Linear(32, d)).to(dtype)


class _OnceDifferentiableSoftplus(torch.autograd.Function):
    """softplus whose backward cannot itself be differentiated (no double backward possible)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return nn.functional.softplus(x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.sigmoid(x)


class OnceDiffEnergy(nn.Module):
    def __init__(self, d: int = 5):
        super().__init__()
        self.lin = nn.Linear(d, 16).double()
        self.out = nn.Linear(16, 1).double()

    def forward(self, x):
        return self.out(_OnceDifferentiableSoftplus.apply(self.lin(x))).squeeze(-1)


def graph_node_names(t: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack.extend(n for n, _ in node.next_functions)
    return names


def test_fd_forms_build_no_double_backward_graph(monkeypatch):
    energy, net = mlp_energy(), mlp_score()
    x = torch.randn(16, 5, dtype=DT)
    # the autograd forms do build one (sanity check of the detector) ...
    assert any("BackwardBackward" in n for n in graph_node_names(losses.ssm(energy, x)))
    assert any("BackwardBackward" in n for n in graph_node_names(losses.dsm(energy, x, 0.1)))

    # ... the FD forms never differentiate with respect to x at all
    def forbidden(*args, **kwargs):
        raise AssertionError("FD estimators must not take input gradients")

    monkeypatch.setattr(torch.autograd, "grad", forbidden)
    monkeypatch.setattr(torch.func, "grad", forbidden)
    monkeypatch.setattr(torch.func, "jvp", forbidden)
    monkeypatch.setattr(torch.func, "vjp", forbidden)
    fd_losses = [
        losses.fd_ssm(energy, x),
        losses.fd_ssm_vr(net, x),
        losses.fd_dsm(energy, x, 0.1),
        losses.fd_dsm(energy, x, [0.5, 0.1]),
    ]
    for loss in fd_losses:
        assert not any("BackwardBackward" in n for n in graph_node_names(loss))
        loss.backward()
    assert not x.requires_grad and x.grad is None


def test_fd_forms_train_models_whose_backward_is_not_differentiable():
    energy = OnceDiffEnergy()
    x = torch.randn(8, 5, dtype=DT)
    for loss in (losses.fd_ssm(energy, x), losses.fd_dsm(energy, x, 0.3)):
        energy.zero_grad()
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in energy.parameters())
    with pytest.raises(RuntimeError):  # the autograd estimator needs a gradient of a gradient
        losses.ssm(energy, x).backward()


def _loss_and_grads(fn, module, parallel: bool):
    module.zero_grad()
    g = torch.Generator().manual_seed(3)
    values = fn(parallel, g)
    values.mean().backward()
    return values.detach(), torch.cat([p.grad.flatten() for p in module.parameters()])


FD_CALLS = {
    "fd_ssm": lambda m, x: (
        lambda par, g: losses.fd_ssm(m, x, parallel=par, generator=g, reduction="none")
    ),
    "fd_ssm_particles": lambda m, x: (
        lambda par, g: losses.fd_ssm(
            m, x, n_particles=3, parallel=par, generator=g, reduction="none"
        )
    ),
    "fd_ssm_vr": lambda m, x: (
        lambda par, g: losses.fd_ssm_vr(m, x, parallel=par, generator=g, reduction="none")
    ),
    "fd_dsm": lambda m, x: (
        lambda par, g: losses.fd_dsm(m, x, [1.0, 0.1], parallel=par, generator=g, reduction="none")
    ),
}


@pytest.mark.parametrize("name", list(FD_CALLS))
def test_parallel_and_sequential_agree(name: str):
    x = torch.randn(24, 5, dtype=DT)
    model = mlp_score() if name == "fd_ssm_vr" else mlp_energy()
    fn = FD_CALLS[name](model, x)
    v_par, g_par = _loss_and_grads(fn, model, True)
    v_seq, g_seq = _loss_and_grads(fn, model, False)
    # Same points, same combination code and order. Only the BLAS differs: a GEMM over 3B rows
    # may block its sums differently from one over B rows, so matmul models agree to round-off.
    torch.testing.assert_close(v_par, v_seq, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g_par, g_seq, rtol=1e-11, atol=1e-12)


class RowwiseEnergy(nn.Module):
    """Elementwise ops and per-row sums only: every row is computed identically in any batch."""

    def __init__(self, d: int = 5):
        super().__init__()
        self.a = nn.Parameter(torch.randn(d, dtype=DT))
        self.c = nn.Parameter(torch.rand(d, dtype=DT) + 0.5)

    def forward(self, x):
        return (nn.functional.softplus(x) * self.a).sum(-1) + 0.5 * (self.c * x * x).sum(-1)


@pytest.mark.parametrize("name", ["fd_ssm", "fd_ssm_particles", "fd_dsm"])
def test_parallel_and_sequential_are_bitwise_identical_for_rowwise_models(name: str):
    x = torch.randn(24, 5, dtype=DT)
    model = RowwiseEnergy()
    fn = FD_CALLS[name](model, x)
    v_par, _ = _loss_and_grads(fn, model, True)
    v_seq, _ = _loss_and_grads(fn, model, False)
    assert torch.equal(v_par, v_seq)


def test_one_batched_call_in_parallel_mode():
    calls: list[int] = []
    energy = mlp_energy()
    net = mlp_score()
    x = torch.randn(10, 5, dtype=DT)

    def counted(model):
        def f(y):
            calls.append(y.shape[0])
            return model(y)

        return f

    for fn, par, want in [
        (lambda: losses.fd_ssm(counted(energy), x), True, [30]),
        (lambda: losses.fd_ssm(counted(energy), x, parallel=False), False, [10, 10, 10]),
        (lambda: losses.fd_ssm(counted(energy), x, n_particles=4), True, [90]),
        (lambda: losses.fd_ssm_vr(counted(net), x), True, [20]),
        (lambda: losses.fd_ssm_vr(counted(net), x, parallel=False), False, [10, 10]),
        (lambda: losses.fd_dsm(counted(energy), x, 0.2), True, [20]),
    ]:
        calls.clear()
        fn()
        assert calls == want, (par, calls)


FD_FORMS = [
    lambda e, s, x: losses.fd_ssm(e, x),
    lambda e, s, x: losses.fd_ssm_vr(s, x),
    lambda e, s, x: losses.fd_dsm(e, x, 0.1),
]


@pytest.mark.parametrize("form", range(3))
def test_precision_guard(form: int):
    fn = FD_FORMS[form]
    energy32, net32 = mlp_energy(dtype=torch.float32), mlp_score(dtype=torch.float32)
    x = torch.randn(6, 5)
    assert torch.isfinite(fn(energy32, net32, x))  # float32 is allowed
    for dt in (torch.float16, torch.bfloat16):
        e, s = mlp_energy(dtype=dt), mlp_score(dtype=dt)
        with pytest.raises(TypeError, match="float32 or float64"):
            fn(e, s, x.to(dt))
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="autocast"):
        fn(energy32, net32, x)

    def half_energy(y):
        return energy32(y).half()

    def half_net(y):
        return net32(y).half()

    with pytest.raises(TypeError, match="float16"):
        fn(half_energy, half_net, x)


def test_batchnorm_energy_refused_in_parallel_fd():
    energy = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Softplus(), nn.Linear(8, 1))
    x = torch.randn(12, 5)
    with pytest.raises(ValueError, match="BatchNorm"):
        losses.fd_ssm(energy, x)
    with pytest.raises(ValueError, match="BatchNorm"):
        losses.fd_dsm(energy, x, 0.1)
    with pytest.warns(UserWarning, match="BatchNorm"):
        losses.fd_ssm(energy, x, parallel=False)
    with pytest.raises(ValueError, match="BatchNorm"):  # also inside a score network
        losses.fd_ssm_vr(nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Linear(8, 5)), x)
    energy.eval()
    losses.fd_ssm(energy, x)


def test_argument_errors_are_clear():
    energy = mlp_energy()
    x = torch.randn(4, 5, dtype=DT)
    with pytest.raises(ValueError, match="eps"):
        losses.fd_ssm(energy, x, eps=0.0)
    with pytest.raises(ValueError, match="n_particles"):
        losses.fd_ssm(energy, x, n_particles=0)
    with pytest.raises(ValueError, match="reduction"):
        losses.fd_ssm(energy, x, reduction="avg")
    with pytest.raises(ValueError, match="projection"):
        losses.ssm(energy, x, projection="uniform")
    with pytest.raises(ValueError, match="unit vectors"):
        losses.fd_ssm(energy, x, directions=2 * fd.sphere_directions(x))
    with pytest.raises(ValueError, match="directions"):
        losses.fd_ssm(energy, x, directions=torch.ones(4, 3, dtype=DT))
    with pytest.raises(ValueError, match="input's shape"):
        losses.fd_ssm_vr(lambda y: y.sum(-1), x)
    with pytest.raises(ValueError, match=r"vr=True\) needs the whole score"):
        losses.fd_ssm(energy, x, vr=True)
    with pytest.raises(ValueError, match="batch"):
        losses.fd_ssm(energy, x[0])
    # values are not scanned in the step (no host read): a NaN input gives a NaN loss, never a
    # silently finite one; data is checked where it enters (jacfree.fit, evaluation)
    assert torch.isnan(losses.fd_ssm(energy, torch.full((2, 5), float("nan"), dtype=DT)))
    with pytest.raises(TypeError, match="dtype"):
        losses.fd_ssm(energy, torch.ones(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="sigma"):
        losses.dsm(energy, x, -1.0)
    with pytest.raises(ValueError, match="levels"):
        losses.dsm(energy, x, 0.1, levels=torch.zeros(4, dtype=torch.long))


def test_autograd_estimators_evaluate_under_no_grad():
    energy, net = mlp_energy(), mlp_score()
    x = torch.randn(8, 5, dtype=DT)
    cases = [
        lambda g: losses.ssm(energy, x, generator=g),
        lambda g: losses.ssm(energy, x, vr=True, generator=g),
        lambda g: losses.ssm_scorenet(net, x, generator=g),
        lambda g: losses.dsm(energy, x, 0.2, generator=g),
        lambda g: losses.exact_sm(energy, x),
        lambda g: losses.fd_ssm(energy, x, generator=g),
    ]
    for fn in cases:
        with_grad = fn(torch.Generator().manual_seed(0))
        assert with_grad.requires_grad
        with torch.no_grad():
            without = fn(torch.Generator().manual_seed(0))
        assert not without.requires_grad
        torch.testing.assert_close(without, with_grad.detach())


def test_return_terms_and_reductions_are_consistent():
    energy = mlp_energy()
    x = torch.randn(8, 5, dtype=DT)
    u = fd.sphere_directions(x, n=2)
    per = losses.fd_ssm(energy, x, directions=u, reduction="none", return_terms=True)
    assert per.loss.shape == per.curvature.shape == per.norm.shape == (8,)
    torch.testing.assert_close(per.loss, per.curvature + per.norm)
    mean = losses.fd_ssm(energy, x, directions=u)
    total = losses.fd_ssm(energy, x, directions=u, reduction="sum")
    torch.testing.assert_close(mean, per.loss.mean())
    torch.testing.assert_close(total, per.loss.sum())
    # particles: the mean of the single-direction values
    singles = [losses.fd_ssm(energy, x, directions=u[k], reduction="none") for k in range(2)]
    torch.testing.assert_close(per.loss, (singles[0] + singles[1]) / 2)

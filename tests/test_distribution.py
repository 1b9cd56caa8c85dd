"""The torch.distributions contract of ``flow.distribution(context)``, over every flow.

Every case of the flow contract test (unconditional) and conditional versions of FCFlow, NICE,
CNNFlow and GlowFlow (vector and class-label contexts), in float64: the object is a
``Distribution`` with the documented shapes; its ``log_prob`` is the flow's; ``sample`` /
``rsample`` shapes for ``()``, ``(n,)``, ``(n, m)`` and batched contexts; ``rsample`` gradients
equal central finite differences (through solves and Newton inverses); and
``rsample_and_log_prob`` agrees with ``log_prob`` at the samples it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution

import jacfree as jf
from contract import SEED, Case, all_cases, make, make_data

F64 = torch.float64
CPU = torch.device("cpu")


@dataclass(frozen=True)
class Conditional:
    """A conditional flow under contract: ``context(shape)`` draws contexts of a batch shape."""

    name: str
    build: Callable[[], jf.Flow]
    context: Callable[[tuple[int, ...]], Tensor]

    def __str__(self) -> str:
        return self.name


def _vectors(features: int) -> Callable[[tuple[int, ...]], Tensor]:
    return lambda shape: torch.randn(*shape, features, dtype=F64)


def _labels(classes: int) -> Callable[[tuple[int, ...]], Tensor]:
    return lambda shape: torch.randint(0, classes, shape)


CONDITIONAL = [
    *[
        Conditional(
            f"FCFlow-{mode}-vector",
            lambda mode=mode: jf.FCFlow(3, layers=3, gradient=mode, context_features=2),
            _vectors(2),
        )
        for mode in jf.GRADIENT_MODES
    ],
    Conditional("FCFlow-labels", lambda: jf.FCFlow(3, layers=2, context_classes=4), _labels(4)),
    Conditional(
        "NICE-vector",
        lambda: jf.NICE(4, couplings=3, hidden=8, hidden_layers=1, context_features=2),
        _vectors(2),
    ),
    Conditional(
        "CNNFlow-slr-labels",
        lambda: jf.CNNFlow(
            (1, 4, 4), blocks=2, layers_per_block=1, activation="slr", context_classes=3
        ),
        _labels(3),
    ),
    Conditional(
        "CNNFlow-spline-vector",
        lambda: jf.CNNFlow(
            (1, 4, 4), blocks=2, layers_per_block=1, spline_params="channel", context_features=2
        ),
        _vectors(2),
    ),
    *[
        Conditional(
            f"GlowFlow-{mode}-labels",
            lambda mode=mode: jf.GlowFlow(
                (1, 4, 4), blocks=2, steps=1, hidden=8, gradient=mode, context_classes=3
            ),
            _labels(3),
        )
        for mode in jf.GRADIENT_MODES
    ],
]


def _perturbed(build: Callable[[], jf.Flow], seed: int = 0) -> jf.Flow:
    flow = build()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    for m in flow.modules():
        if isinstance(m, jf.ActNorm):
            m.mark_initialized(True)  # perturbed parameters stand in for a data-dependent init
    return flow.double().eval()


def _flow_and_context(case: Case | Conditional, batch: tuple[int, ...]):
    """(flow, context of batch shape ``batch`` or None, data of shape (*batch, *event))."""
    torch.manual_seed(0)
    if isinstance(case, Case):
        flow = make(case, 0, F64, CPU).eval()
        n = max(1, int(torch.tensor(batch).prod()))
        x = make_data(case, F64, CPU, n=max(n, 2))[:n]
        return flow, None, x.reshape(*batch, *case.shape)
    flow = _perturbed(case.build)
    context = case.context(batch)
    x = torch.randn(*batch, *flow.event_shape, dtype=F64)
    return flow, context, x


UNCONDITIONAL = all_cases()
REAL = [c for c in UNCONDITIONAL if c.data == "real"]
ALL = [*UNCONDITIONAL, *CONDITIONAL]


@pytest.mark.parametrize("case", ALL, ids=str)
def test_is_a_distribution_whose_log_prob_is_the_flows(case: Case | Conditional) -> None:
    batch = (5,) if isinstance(case, Conditional) else ()
    flow, context, _ = _flow_and_context(case, batch)
    d = flow.distribution(context)
    assert isinstance(d, Distribution)
    assert d.batch_shape == torch.Size(batch)
    assert d.event_shape == torch.Size(flow.event_shape)
    assert d.has_rsample
    assert d.support.event_dim == len(flow.event_shape)
    # values of shape (*sample, *batch, *event)
    _, _, x = _flow_and_context(case, (3, *batch))
    torch.manual_seed(SEED)
    got = d.log_prob(x)
    torch.manual_seed(SEED)
    flat_context = None if context is None else context.expand(3, *context.shape).flatten(0, 1)
    want = flow.log_prob(x.flatten(0, len(batch)), context=flat_context)
    assert got.shape == (3, *batch)
    torch.testing.assert_close(got.flatten(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ALL, ids=str)
def test_sample_shapes_device_and_dtype(case: Case | Conditional) -> None:
    batch = (2, 3) if isinstance(case, Conditional) else ()
    flow, context, _ = _flow_and_context(case, batch)
    d = flow.distribution(context)
    event = tuple(flow.event_shape)
    for shape in [(), (4,), (2, 3)]:
        s = d.sample(shape)
        assert s.shape == (*shape, *batch, *event)
        assert s.dtype == F64 and not s.requires_grad
        if getattr(case, "data", "real") != "real":
            continue  # inverses of pre-processing leave the data range: no log-density there
        r = d.rsample(shape)
        assert r.shape == s.shape and r.dtype == F64
        x, lp = d.rsample_and_log_prob(shape)
        assert x.shape == s.shape and lp.shape == (*shape, *batch)
    if context is not None:  # flow.sample(n, context=) is d.sample((n,))
        assert flow.sample(4, context=context).shape == (4, *batch, *event)
        assert flow.sample(4, context=context[0, 0]).shape == (4, *event)


@pytest.mark.parametrize("case", [*REAL, *CONDITIONAL], ids=str)
def test_rsample_and_log_prob_agrees_with_log_prob(case: Case | Conditional) -> None:
    batch = (3,) if isinstance(case, Conditional) else ()
    flow, context, _ = _flow_and_context(case, batch)
    d = flow.distribution(context)
    x, lp = d.rsample_and_log_prob((4,))
    torch.testing.assert_close(lp, d.log_prob(x), rtol=1e-8, atol=1e-8)
    # and the samples are the flow's inverse of base draws
    torch.manual_seed(7)
    x1 = d.sample((4,))
    torch.manual_seed(7)
    z = torch.randn(4 * max(1, len(batch) and batch[0]), *flow.event_shape, dtype=F64)
    c = None if context is None else context.expand(4, *context.shape).flatten(0, 1)
    torch.testing.assert_close(x1.reshape(z.shape), flow.inverse(z, context=c))


def _directional_check(flow: jf.Flow, context: Tensor | None) -> None:
    """d/dt of Σ w·rsample and of Σ rsample_and_log_prob's log-density along a random parameter
    direction v, against central differences (fixed base noise)."""
    params = [p for p in flow.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(3)
    direction = [torch.randn(p.shape, generator=gen, dtype=F64) for p in params]
    weights: Tensor | None = None

    def value() -> Tensor:
        nonlocal weights
        torch.manual_seed(11)
        x, lp = flow.distribution(context).rsample_and_log_prob((3,))
        if weights is None:
            weights = torch.randn(x.shape, generator=gen, dtype=F64)
        return (weights * x).sum() + 0.1 * lp.sum()

    grads = torch.autograd.grad(value(), params, allow_unused=True)
    analytic = sum((g * v).sum() for g, v in zip(grads, direction, strict=True) if g is not None)
    eps = 1e-5
    with torch.no_grad():
        for p, v in zip(params, direction, strict=True):
            p.add_(eps * v)
        plus = value()
        for p, v in zip(params, direction, strict=True):
            p.sub_(2 * eps * v)
        minus = value()
        for p, v in zip(params, direction, strict=True):
            p.add_(eps * v)
    numeric = (plus - minus) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)


WITH_PARAMETERS = [c for c in REAL if any(True for _ in c.build().parameters())]


@pytest.mark.parametrize("case", [*WITH_PARAMETERS, *CONDITIONAL], ids=str)
def test_rsample_gradients_equal_finite_differences(case: Case | Conditional) -> None:
    batch = (2,) if isinstance(case, Conditional) else ()
    flow, context, _ = _flow_and_context(case, batch)
    _directional_check(flow, context)


def test_rsample_gradient_through_square_layers_and_newton_inverse_per_entry() -> None:
    """Every entry of ∂(Σ rsample)/∂W₁ of a 3-layer FCFlow (two solves, two Newton inverses)."""
    flow = _perturbed(lambda: jf.FCFlow(3, layers=3))
    w = flow.affine_layers[0].weight

    def f() -> Tensor:
        torch.manual_seed(5)
        return flow.distribution().rsample((4,)).sum()

    (g,) = torch.autograd.grad(f(), w)
    fd = torch.zeros_like(w)
    eps = 1e-6
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                w[i, j] += eps
                a = f()
                w[i, j] -= 2 * eps
                b = f()
                w[i, j] += eps
                fd[i, j] = (a - b) / (2 * eps)
    torch.testing.assert_close(g, fd, rtol=1e-6, atol=1e-8)


def test_newton_inverse_gradient_is_the_implicit_function_one() -> None:
    z = torch.linspace(-30, 30, 41, dtype=F64, requires_grad=True)
    y = jf.flows.smooth_leaky_relu_inverse(z, 0.3)
    (g,) = torch.autograd.grad(y.sum(), z)
    slope = 0.3 + 0.7 * torch.sigmoid(y.detach())
    torch.testing.assert_close(g, 1 / slope, rtol=1e-14, atol=0)


def test_the_view_is_light_and_follows_the_flow() -> None:
    flow = jf.FCFlow(3, layers=2)
    d = flow.distribution()
    assert list(d.__dict__.get("_parameters", {})) == []
    flow.double()  # the same view now samples in float64: it reads the flow, not a copy
    assert d.sample((2,)).dtype == F64
    x = torch.randn(4, 3, dtype=F64)
    assert torch.equal(d.log_prob(x), flow.log_prob(x))
    assert "FCFlow" in repr(d)


def test_expand_broadcasts_the_context() -> None:
    flow = _perturbed(lambda: jf.FCFlow(2, layers=2, context_features=3))
    c = torch.randn(3, dtype=F64)
    d = flow.distribution(c)
    assert d.batch_shape == ()
    e = d.expand(torch.Size([4]))
    assert e.batch_shape == (4,)
    x = torch.randn(4, 2, dtype=F64)
    torch.testing.assert_close(e.log_prob(x), d.log_prob(x))
    # an unconditional flow expands into independent copies
    u = _perturbed(lambda: jf.FCFlow(2, layers=2)).distribution().expand(torch.Size([3]))
    assert u.batch_shape == (3,) and u.sample((4,)).shape == (4, 3, 2)
    y = torch.randn(5, 3, 2, dtype=F64)
    torch.testing.assert_close(u.log_prob(y), u.flow.log_prob(y.flatten(0, 1)).view(5, 3))


def test_context_errors_name_the_fix() -> None:
    cond = jf.FCFlow(2, layers=2, context_features=3)
    plain = jf.FCFlow(2, layers=2)
    x = torch.randn(5, 2)
    with pytest.raises(ValueError, match="conditional"):
        cond.log_prob(x)
    with pytest.raises(ValueError, match="context_features"):
        plain.log_prob(x, context=torch.randn(5, 3))
    with pytest.raises(ValueError, match="context_features"):
        plain.distribution(torch.randn(5, 3))
    with pytest.raises(ValueError, match="conditional"):
        cond.distribution()
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        cond.log_prob(x, context=torch.randn(5, 4))
    with pytest.raises(ValueError, match="5 samples"):
        cond.log_prob(x, context=torch.randn(4, 3))
    with pytest.raises(TypeError, match="floating point"):
        cond.log_prob(x, context=torch.ones(5, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="NaN"):
        cond.log_prob(x, context=torch.full((5, 3), float("nan")))
    labels = jf.FCFlow(2, layers=2, context_classes=3)
    with pytest.raises(ValueError, match=r"in \[0, 3\)"):
        labels.log_prob(x, context=torch.tensor([0, 1, 2, 3, 0]))
    with pytest.raises(TypeError, match="integers"):
        labels.log_prob(x, context=torch.zeros(5))
    with pytest.raises(ValueError, match="not both"):
        jf.FCFlow(2, context_features=2, context_classes=2)

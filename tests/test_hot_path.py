"""The training step stays on the device: no host reads, one graph under ``torch.compile``.

Every model kind of ``jacfree train`` in every gradient mode / objective, and every ``jf.sm``
estimator (the registered objectives through ``tests/test_sm_contract.py``): the profile of
``loss(x).backward()`` holds no ``aten::_local_scalar_dense``, ``aten::equal`` or
``aten::is_nonzero`` (each a device synchronisation on a GPU), and
``torch.compile(fullgraph=True, backend="eager")`` traces it without a graph break, with the
eager gradients. One small case per custom autograd function also runs through inductor.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import jacfree as jf
from jacfree.bench.profile import HOST_READS
from jacfree.kinds import build_model, model_input, model_kind

IMAGE = [1, 4, 4]
SPECS: list[dict] = [
    *[
        {"kind": "fc", "data_shape": shape, "gradient": g, **extra}
        for g in ("exact", "relative", "selfnorm")
        for shape, extra in (([6], {}), (IMAGE, {"levels": 17}))
    ],
    *[
        {"kind": "cnn", "data_shape": IMAGE, "gradient": g, "layers": 2, "blocks": 2, "levels": 256}
        for g in ("exact", "selfnorm")
    ],
    *[
        {
            "kind": "glow",
            "data_shape": IMAGE,
            "gradient": g,
            "layers": 2,
            "hidden": 8,
            "levels": 256,
        }
        for g in ("exact", "relative", "selfnorm")
    ],
    *[
        {"kind": "nice", "data_shape": [6], "objective": o, "hidden": 16, "layers": 2}
        for o in ("mle", "fd_ssm", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm")
    ],
    *[
        {"kind": "energy-mlp", "data_shape": [2], "objective": o, "hidden": 16}
        for o in ("fd_ssm", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm")
    ],
    *[
        {"kind": "dkef", "data_shape": [3], "objective": o, "hidden": 8, "n_inducing": 10}
        for o in ("fd_ssm", "ssm", "dsm", "fd_dsm")
    ],
    *[
        {"kind": "ncsn", "data_shape": IMAGE, "objective": o, "hidden": 4, "n_levels": 3}
        for o in ("fd_ssm_vr", "dsm", "ssm", "ssm_vr")
    ],
    *[
        {
            "kind": "ebm",
            "data_shape": IMAGE,
            "objective": o,
            "hidden": 2,
            "layers": 0,
            "levels": 256,
        }
        for o in ("fd_mdsm", "mdsm", "fd_ssm", "ssm")
    ],
    *[
        {"kind": k, "data_shape": IMAGE, "objective": o, "hidden": 8, "z_dim": 3, "levels": 256}
        for k in ("vae-implicit", "wae-implicit")
        for o in ("fd_ssm_vr", "ssm_vr")
    ],
]


def _spec_id(spec: dict) -> str:
    return (
        f"{spec['kind']}-{spec.get('gradient') or spec.get('objective')}-d{len(spec['data_shape'])}"
    )


def _case(spec: dict) -> tuple[nn.Module, Callable[[nn.Module, Tensor], Tensor], Tensor]:
    spec = dict(spec)
    kind = model_kind(spec)
    model = build_model(spec).double()
    objective = (kind.objective(spec) if kind.objective else None) or (lambda m, x: m.loss(x))
    gen = torch.Generator().manual_seed(0)
    shape = (6, *spec["data_shape"])
    if spec.get("levels"):
        x = torch.randint(0, spec["levels"], shape, generator=gen).double()
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    if hasattr(model, "event_shape"):
        x = model_input(x, model)
    objective(model, x)  # first call: data-dependent initialisation (ActNorm, DKEF)
    return model, objective, x


# torch's own backward of slogdet (the exact-mode baseline) checks LAPACK's info flag with a host
# read on the CPU; its CUDA kernels check on the device (0 host reads per exact step, measured on
# an H100 with ``jacfree bench scaling --device cuda``), so it is no synchronisation of a GPU step
_CPU_ONLY = ("LinalgSlogdetBackward0",)


def _ancestors(event: object) -> list[str]:
    names, parent = [], getattr(event, "cpu_parent", None)
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def _host_reads(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(
        e.name in HOST_READS and not any(a in _CPU_ONLY for a in _ancestors(e))
        for e in prof.events()
    )


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_training_step_reads_nothing_on_the_host(spec: dict) -> None:
    model, objective, x = _case(spec)
    model.zero_grad()
    assert _host_reads(lambda: objective(model, x).backward()) == 0


@pytest.mark.slow
@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_training_step_compiles_as_one_graph(spec: dict) -> None:
    model, objective, x = _case(spec)
    torch._dynamo.reset()
    compiled = torch.compile(objective, fullgraph=True, backend="eager")
    # the same random draws (dequantisation, projections, noise) in both runs
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model.zero_grad()
        objective(model, x).backward()
        eager = _grads(model)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model.zero_grad()
        compiled(model, x).backward()
        traced = _grads(model)
    assert len(eager) == len(traced) > 0
    for a, b in zip(eager, traced, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


X = torch.randn(5, 4, dtype=torch.float64)


def _energy() -> jf.MLPEnergy:
    return jf.MLPEnergy((4,), hidden=(8,)).double()


# every registered score-matching objective, in every setting it reads, is checked alike in
# tests/test_sm_contract.py; here the calls outside the registry
ESTIMATORS: dict[str, tuple[Callable[[], nn.Module], Callable[[nn.Module, Tensor], Tensor]]] = {
    "dsm_annealed": (_energy, lambda m, x: jf.sm.dsm(m, x, (0.1, 0.5, 1.0))),
    "directional_derivative": (
        _energy,
        lambda m, x: jf.fd.directional_derivative(m, x, 0.1 * torch.ones_like(x), 3).sum(),
    ),
}


def assert_no_host_reads_and_compiled_grads_equal(
    model: nn.Module, loss: Callable[[nn.Module, Tensor], Tensor]
) -> None:
    """``loss(model, X).backward()`` reads nothing on the host, and compiled as one graph it
    leaves the eager gradients (same random draws)."""
    assert _host_reads(lambda: loss(model, X).backward()) == 0
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    grads = []
    for fn in (loss, compiled):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            model.zero_grad()
            fn(model, X).backward()
            grads.append(_grads(model))
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_estimators_read_nothing_on_the_host_and_compile(name: str) -> None:
    build, loss = ESTIMATORS[name]
    assert_no_host_reads_and_compiled_grads_equal(build(), loss)


INDUCTOR_CASES = {
    "relative-dense": lambda: jf.FCFlow(6, layers=2, gradient="relative"),
    "selfnorm-dense": lambda: jf.FCFlow(6, layers=2, gradient="selfnorm"),
    "selfnorm-conv": lambda: jf.CNNFlow((1, 4, 4), blocks=1, layers_per_block=1),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(INDUCTOR_CASES))
def test_custom_backward_rules_through_inductor(name: str) -> None:
    flow = INDUCTOR_CASES[name]().double()
    x = torch.randn(6, *flow.event_shape, dtype=torch.float64)
    flow.loss(x).backward()
    eager = _grads(flow)
    flow.zero_grad()
    torch._dynamo.reset()
    torch.compile(flow.loss, fullgraph=True)(x).backward()
    for a, b in zip(eager, _grads(flow), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fused_adam_step_invalidates_the_cached_log_prob() -> None:
    """Fused optimiser kernels update parameters without bumping their version counters; the
    caches count optimiser steps too, so ``log_prob`` never returns a stale value."""
    flow = jf.FCFlow(4, layers=2, gradient="relative")
    x = torch.randn(32, 4)
    opt = torch.optim.Adam(flow.parameters(), lr=0.1, fused=True)
    before = flow.log_prob(x)
    flow.loss(x).backward()
    opt.step()
    after = flow.log_prob(x)
    fresh = jf.flows.invalidate_caches(flow).log_prob(x)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, fresh)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
@pytest.mark.parametrize("spec", SPECS, ids=_spec_id)
def test_one_training_step_on_cuda(spec: dict) -> None:
    model, objective, x = _case(spec)
    model, x = model.float().cuda(), x.float().cuda()
    opt = jf.train.optim.make_adam(model.parameters(), 1e-3)
    loss = objective(model, x)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss).item()
    assert all(p.device.type == "cuda" for p in model.parameters())

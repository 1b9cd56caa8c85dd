"""MDSM / FD-MDSM and the ``ebm`` kind stay on the device and trace as one graph.

Same checks as for the other estimators: the profile of ``loss(x).backward()`` holds no host read
(``aten::_local_scalar_dense``, ``aten::equal``, ``aten::is_nonzero``), and
``torch.compile(fullgraph=True, backend="eager")`` traces it with the eager gradients.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.profiler import ProfilerActivity, profile

import jacfree as jf
from jacfree.bench.profile import HOST_READS
from jacfree.models import build_model, model_kind


def _host_reads(fn: Callable[[], object]) -> int:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(e.name in HOST_READS for e in prof.events())


def _grads(model: nn.Module) -> list[Tensor]:
    return [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _energy() -> nn.Module:
    return jf.MLPEnergy((4,), hidden=(8,)).double()


ESTIMATORS: dict[str, Callable[[nn.Module, Tensor], Tensor]] = {
    "mdsm": lambda m, x: jf.sm.mdsm(m, x),
    "mdsm_random": lambda m, x: jf.sm.mdsm(m, x, (0.1, 0.9), 0.2, random_sigmas=True),
    "fd_mdsm": lambda m, x: jf.sm.fd_mdsm(m, x),
    "fd_mdsm_sequential": lambda m, x: jf.sm.fd_mdsm(m, x, parallel=False),
    "fd_mdsm_random_particles": lambda m, x: jf.sm.fd_mdsm(m, x, random_sigmas=True, n_particles=2),
}
EBM_OBJECTIVES = ("fd_mdsm", "mdsm", "fd_ssm", "ssm")


def _check(model: nn.Module, loss: Callable[[nn.Module, Tensor], Tensor], x: Tensor) -> None:
    model.zero_grad()
    assert _host_reads(lambda: loss(model, x).backward()) == 0
    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    grads = []
    for fn in (loss, compiled):
        with torch.random.fork_rng():
            torch.manual_seed(3)
            model.zero_grad()
            fn(model, x).backward()
            grads.append(_grads(model))
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_mdsm_estimators_read_nothing_on_the_host_and_compile(name: str) -> None:
    x = torch.randn(5, 4, dtype=torch.float64)
    _check(_energy(), ESTIMATORS[name], x)


@pytest.mark.parametrize("objective", EBM_OBJECTIVES)
def test_ebm_training_step_reads_nothing_on_the_host_and_compiles(objective: str) -> None:
    spec = {"kind": "ebm", "data_shape": [1, 4, 4], "objective": objective, "hidden": 2}
    spec.update(layers=0, levels=256)
    model = build_model(spec).double()
    loss = model_kind(spec).objective(spec)  # type: ignore[misc]
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 1, 4, 4), generator=gen).double()
    _check(model, loss, x)

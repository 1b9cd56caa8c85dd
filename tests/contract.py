"""The pieces of the flow contract test (``test_flows_contract.py``): cases and helpers.

A :class:`Case` builds a :class:`jacfree.Flow` for one event shape. The base cases (dense layers,
activations, pre-processing, FCFlow) are listed here; modules named ``tests/cases_*.py`` add
their own by defining a ``CASES`` list of :class:`Case`, and the contract test runs over all of
them.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from torch import Tensor, nn

import jacfree as jf

D = 4  # features of the vector cases
B = 6  # batch
LEVELS = 8  # levels of the quantised cases
SEED = 1234  # reseeded before every call that may draw dequantisation noise


@dataclass(frozen=True)
class Case:
    """One flow under contract.

    Attributes:
        name: test id.
        build: makes the flow (float32, default device).
        data: ``"real"`` (R^D), ``"bounded"`` ([0, LEVELS]^D) or ``"integer"`` ({0..LEVELS-1}^D).
        shape: the event shape of one sample.
        perturb: ``perturb(flow, generator)`` moves the parameters away from their
            initialisation (default :func:`perturb_parameters`) so that no property holds
            by accident (identity weights, zero biases, R = W⁻¹ exactly).
    """

    name: str
    build: Callable[[], jf.Flow]
    data: str
    shape: tuple[int, ...] = (D,)
    perturb: Callable[[jf.Flow, torch.Generator], None] | None = field(default=None)

    def __str__(self) -> str:
        return self.name

    @property
    def dim(self) -> int:
        return math.prod(self.shape)


def perturb_parameters(flow: nn.Module, gen: torch.Generator) -> None:
    """Square weights: orthogonal + 0.3·randn, biases 0.5·randn; a learned inverse: the exact
    inverse + 0.05·randn; every other parameter: + 0.2·randn."""
    with torch.no_grad():
        done: set[int] = set()
        for m in flow.modules():
            if isinstance(m, jf.SquareAffine):
                n = m.features
                m.weight.add_(0.3 * torch.randn(n, n, generator=gen))
                m.bias.copy_(0.5 * torch.randn(n, generator=gen))
                done |= {id(m.weight), id(m.bias)}
                if m.inverse_weight is not None:
                    inv = torch.linalg.inv(m.weight.double()).float()
                    m.inverse_weight.copy_(inv + 0.05 * torch.randn(n, n, generator=gen))
                    done.add(id(m.inverse_weight))
        for p in flow.parameters():
            if id(p) not in done:
                p.add_(0.2 * torch.randn(p.shape, generator=gen))


def make(case: Case, seed: int, dtype: torch.dtype, device: torch.device) -> jf.Flow:
    """Build the case with perturbed parameters, in ``dtype`` on ``device``."""
    torch.manual_seed(seed)
    flow = case.build()
    gen = torch.Generator().manual_seed(seed)
    (case.perturb or perturb_parameters)(flow, gen)
    return flow.to(device=device, dtype=dtype)


def make_data(case: Case, dtype: torch.dtype, device: torch.device, n: int = B) -> Tensor:
    gen = torch.Generator().manual_seed(99)
    shape = (n, *case.shape)
    if case.data == "real":
        x = 1.5 * torch.randn(shape, generator=gen, dtype=torch.float64) + 0.3
    elif case.data == "bounded":
        x = LEVELS * (0.01 + 0.98 * torch.rand(shape, generator=gen, dtype=torch.float64))
    else:
        x = torch.randint(0, LEVELS, shape, generator=gen).double()
        flat = x.view(n, -1)
        flat[0, 0], flat[0, 1] = 0, LEVELS - 1  # both ends of the range
    return x.to(device=device, dtype=dtype)


def forward(flow: jf.Flow, x: Tensor) -> tuple[Tensor, Tensor]:
    torch.manual_seed(SEED)
    return flow(x)


def log_prob(flow: jf.Flow, x: Tensor, *, grad: bool = False) -> Tensor:
    """``grad=False`` takes the cached path (no gradient recorded); ``grad=True`` recomputes."""
    torch.manual_seed(SEED)
    with torch.set_grad_enabled(grad):
        out = flow.log_prob(x)
    return out.detach()


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}


def gradient_layers(flow: nn.Module) -> list[nn.Module]:
    """Layers with a gradient mode (they own the data-independent log-dets)."""
    return flow.gradient_layers()


def assert_follows(t: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    assert t.dtype == dtype
    assert t.device.type == device.type


def _single(factory: Callable[[], jf.FlowLayer], shape: tuple[int, ...] = (D,)) -> Callable:
    return lambda: jf.Flow([factory()], shape)


def _preprocessed_fcflow() -> jf.Flow:
    prep = [jf.Dequantize(LEVELS), jf.LogitTransform(LEVELS, alpha=0.05)]
    return jf.FCFlow(D, layers=2, preprocess=prep)


BASE_CASES = [
    *[
        Case(f"SquareAffine-{mode}", _single(partial(jf.SquareAffine, D, mode)), "real")
        for mode in jf.GRADIENT_MODES
    ],
    Case("SmoothLeakyReLU", _single(lambda: jf.SmoothLeakyReLU(0.3)), "real"),
    Case("LogitTransform", _single(lambda: jf.LogitTransform(LEVELS, alpha=0.05)), "bounded"),
    Case("Dequantize", _single(lambda: jf.Dequantize(LEVELS)), "integer"),
    *[
        Case(f"FCFlow-{mode}-L{n}", partial(jf.FCFlow, D, layers=n, gradient=mode), "real")
        for mode in jf.GRADIENT_MODES
        for n in (1, 2, 3)
    ],
    Case("FCFlow-dequantize-logit", _preprocessed_fcflow, "integer"),
]


def all_cases() -> list[Case]:
    """The base cases and those of every ``tests/cases_*.py`` module."""
    cases = list(BASE_CASES)
    for path in sorted(Path(__file__).parent.glob("cases_*.py")):
        cases += importlib.import_module(path.stem).CASES
    return cases

"""Contract cases of the convolutional layers: SelfNormConv2d and Conv1x1, alone and stacked.

Tiny images (event shape (2, 4, 3), D = 24) so that the contract's Jacobians stay cheap.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

import jacfree as jf
from contract import Case

SHAPE = (2, 4, 3)  # (C, H, W)
C = SHAPE[0]


def perturb_conv(flow: nn.Module, gen: torch.Generator) -> None:
    """Like the contract's default perturbation, for image layers: conv kernels get 0.1·randn on
    every tap (no longer centre-tap, so T(w)⁻¹ is no convolution), 1×1 weights 0.3·randn,
    biases 0.5·randn; a learned inverse becomes the best K×K (or exact 1×1) inverse + 0.05·randn;
    every other parameter + 0.2·randn."""

    def randn(t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * torch.randn(t.shape, generator=gen)

    with torch.no_grad():
        done: set[int] = set()
        for m in flow.modules():
            if isinstance(m, jf.SelfNormConv2d):
                m.weight.add_(randn(m.weight, 0.1))
                if m.inverse_weight is not None:
                    m.reset_inverse(SHAPE[1:])
            elif isinstance(m, jf.Conv1x1):
                m.weight.add_(randn(m.weight, 0.3))
                if m.inverse_weight is not None:
                    m.inverse_weight.copy_(torch.linalg.inv(m.weight.double()).float())
            else:
                continue
            if m.bias is not None:
                m.bias.copy_(randn(m.bias, 0.5))
            if m.inverse_weight is not None:
                m.inverse_weight.add_(randn(m.inverse_weight, 0.05))
            done |= {id(p) for p in m.parameters()}
        for p in flow.parameters():
            if id(p) not in done:
                p.add_(randn(p, 0.2))


def _flow(*layers: Callable[[], jf.FlowLayer]) -> Callable[[], jf.Flow]:
    return lambda: jf.Flow([make() for make in layers], SHAPE)


def _case(name: str, *layers: Callable[[], jf.FlowLayer]) -> Case:
    return Case(name, _flow(*layers), "real", SHAPE, perturb_conv)


def _act() -> jf.FlowLayer:
    return jf.SmoothLeakyReLU(0.3)


CASES = [
    *[
        _case(f"SelfNormConv2d-{mode}", lambda m=mode: jf.SelfNormConv2d(C, 3, m))
        for mode in ("exact", "selfnorm")
    ],
    Case(
        "SelfNormConv2d-K5-selfnorm",  # kernel larger than the image: some taps are never used
        lambda: jf.Flow([jf.SelfNormConv2d(1, 5, "selfnorm")], (1, 3, 4)),
        "real",
        (1, 3, 4),
        perturb_conv,
    ),
    *[
        _case(
            f"SelfNormConv2d-{mode}-stack",
            lambda m=mode: jf.SelfNormConv2d(C, 3, m),
            _act,
            lambda m=mode: jf.SelfNormConv2d(C, 3, m),
        )
        for mode in ("exact", "selfnorm")
    ],
    *[
        _case(f"Conv1x1-{mode}", lambda m=mode: jf.Conv1x1(C, m))
        for mode in ("exact", "relative", "selfnorm")
    ],
    *[
        _case(
            f"Conv1x1-{mode}-stack",
            lambda m=mode: jf.Conv1x1(C, m, bias=True),
            _act,
            lambda m=mode: jf.Conv1x1(C, m),
        )
        for mode in ("exact", "relative", "selfnorm")
    ],
    *[
        _case(
            f"Conv-mixed-{mode}-stack",
            lambda m=mode: jf.SelfNormConv2d(C, 3, m),
            _act,
            lambda m=mode: jf.Conv1x1(C, m, bias=True),
            _act,
            lambda m=mode: jf.SelfNormConv2d(C, 3, m),
        )
        for mode in ("exact", "selfnorm")
    ],
]

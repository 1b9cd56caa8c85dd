"""Contract cases of the image models: small CNNFlow and GlowFlow in every gradient mode.

Tiny images (1, 4, 4) (D = 16) so that the contract's Jacobians stay cheap: a two-block CNN
(1,4,4) → squeeze → (4,2,2) and a two-block Glow (squeeze, steps, split prior whose inner block
squeezes again to (8,1,1)).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import jacfree as jf
from contract import Case
from jacfree.flows import initialize_actnorm

SHAPE = (1, 4, 4)


def perturb_model(flow: jf.Flow, gen: torch.Generator) -> None:
    """Move every parameter off its initialisation, keeping the model well conditioned.

    One forward pass first (ActNorm's data-dependent initialisation; every convolution learns its
    image size). Then: K×K kernels + 0.1·randn on every tap, their learned inverse reset to the
    best K×K inverse for the layer's own image size + 0.02·randn; 1×1 weights + 0.3·randn, R =
    W⁻¹ + 0.02·randn; biases 0.3·randn; split priors' convolutions + 0.02·randn (their output
    scale is exp(3·logs)); coupling networks + 0.05·randn; every other parameter + 0.2·randn.
    """

    def randn(t: torch.Tensor, scale: float) -> torch.Tensor:
        return scale * torch.randn(t.shape, generator=gen)

    initialize_actnorm(flow, 2.0 * torch.randn(16, *SHAPE, generator=gen) + 0.5)
    with torch.no_grad():
        done: set[int] = set()
        for m in flow.modules():
            if isinstance(m, jf.SelfNormConv2d):
                m.weight.add_(randn(m.weight, 0.1))
                if m.inverse_weight is not None:
                    m.reset_inverse()
            elif isinstance(m, jf.Conv1x1):
                m.weight.add_(randn(m.weight, 0.3))
                if m.inverse_weight is not None:
                    m.inverse_weight.copy_(torch.linalg.inv(m.weight.double()).float())
            elif isinstance(m, jf.SplitPrior):
                for p in m.prior.parameters():
                    p.add_(randn(p, 0.02))
                done |= {id(p) for p in m.prior.parameters()}
                continue
            elif isinstance(m, jf.AffineCoupling):
                # stacked couplings multiply their scales: keep each within about e^{±0.5}, so
                # the float32 round trip through the whole model stays at ~1e-5
                for p in m.parameters():
                    p.add_(randn(p, 0.05))
                done |= {id(p) for p in m.parameters()}
                continue
            else:
                continue
            if m.bias is not None:
                m.bias.copy_(randn(m.bias, 0.3))
            if m.inverse_weight is not None:
                m.inverse_weight.add_(randn(m.inverse_weight, 0.02))
            done |= {id(p) for p in m.parameters()}
        for p in flow.parameters():
            if id(p) not in done:
                p.add_(randn(p, 0.2))


def _case(name: str, build: Callable[[], jf.Flow]) -> Case:
    return Case(name, build, "real", SHAPE, perturb_model)


CASES = [
    *[
        _case(
            f"CNNFlow-{mode}",
            lambda m=mode: jf.CNNFlow(SHAPE, blocks=2, layers_per_block=2, gradient=m),
        )
        for mode in ("exact", "selfnorm")
    ],
    _case(
        "CNNFlow-selfnorm-slr-one-block",
        lambda: jf.CNNFlow(SHAPE, blocks=1, layers_per_block=3, activation="slr"),
    ),
    _case(
        "CNNFlow-selfnorm-spline-per-channel",
        lambda: jf.CNNFlow(SHAPE, blocks=2, layers_per_block=1, spline_params="channel"),
    ),
    *[
        _case(
            f"GlowFlow-{mode}",
            lambda m=mode: jf.GlowFlow(SHAPE, blocks=2, steps=2, hidden=8, gradient=m),
        )
        for mode in jf.GRADIENT_MODES
    ],
    _case(
        "GlowFlow-selfnorm-3x3-nosplit",
        lambda: jf.GlowFlow(SHAPE, blocks=1, steps=2, hidden=8, conv_kernel=3, split=False),
    ),
]

"""Contract cases of the Glow-like layers: ActNorm, couplings, squeeze, split prior, RQ spline.

Each layer alone, and small composites (a two-level Glow-like flow with a split prior whose inner
sequence squeezes; self-normalizing and relative-gradient layers inside a split prior).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import jacfree as jf
from contract import Case, perturb_parameters
from jacfree.flows import initialize_actnorm

IMG = (2, 4, 4)


def _perturb(flow: jf.Flow, gen: torch.Generator) -> None:
    """The default perturbation, with the split priors' log σ kept in a sane range.

    0.2·randn on a prior convolution (output scale exp(3·logs)) gives log σ down to −12 on these
    inputs, i.e. ε ~ 1e6 and an overflowing first SGD step; ×0.1 keeps |log σ| ≲ 1.
    """
    perturb_parameters(flow, gen)
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, jf.SplitPrior):
                m.prior.weight.mul_(0.1)


def _init_then_perturb(shape: tuple[int, ...]) -> Callable[[jf.Flow, torch.Generator], None]:
    """Run the ActNorm data-dependent initialisation on a random batch, then perturb."""

    def perturb(flow: jf.Flow, gen: torch.Generator) -> None:
        x = 2.0 * torch.randn(16, *shape, generator=gen) + 0.5
        initialize_actnorm(flow, x)
        _perturb(flow, gen)

    return perturb


def _flow(shape: tuple[int, ...], *factories: Callable[[], jf.FlowLayer]) -> Callable[[], jf.Flow]:
    return lambda: jf.Flow([f() for f in factories], shape)


def _glow_like() -> jf.Flow:
    """(2,4,4): step → squeeze → (8,2,2): step, spline → split: (4,2,2) → squeeze → (16,1,1)."""
    layers = [
        jf.ActNorm(2),
        jf.AffineCoupling(2, hidden=8),
        jf.Squeeze(),
        jf.ActNorm(8),
        jf.AffineCoupling(8, hidden=8, swap=True),
        jf.RQSplineActivation(8),
        jf.SplitPrior(
            8,
            inner=[jf.Squeeze(), jf.ActNorm(16), jf.AffineCoupling(16, hidden=8, affine=False)],
        ),
        jf.Unsqueeze(),
    ]
    return jf.Flow(layers, IMG)


def _split_with_gradient_modes() -> jf.Flow:
    """A vector split prior whose inner layers are self-normalizing / relative-gradient layers."""
    inner = [
        jf.SquareAffine(2, "selfnorm"),
        jf.SmoothLeakyReLU(0.3),
        jf.SquareAffine(2, "relative"),
    ]
    return jf.Flow([jf.SplitPrior(5, inner=inner, kernel_size=1)], (5,))


CASES = [
    Case("ActNorm-image", _flow(IMG, lambda: jf.ActNorm(2)), "real", IMG, _init_then_perturb(IMG)),
    Case(
        "ActNorm-vector", _flow((4,), lambda: jf.ActNorm(4)), "real", (4,), _init_then_perturb((4,))
    ),
    Case("AffineCoupling-image", _flow(IMG, lambda: jf.AffineCoupling(2, hidden=8)), "real", IMG),
    Case(
        "AdditiveCoupling-image-swap",
        _flow((3, 2, 2), lambda: jf.AffineCoupling(3, hidden=8, affine=False, swap=True)),
        "real",
        (3, 2, 2),
    ),
    Case(
        "AffineCoupling-vector-odd",
        _flow((5,), lambda: jf.AffineCoupling(5, hidden=8, kernel_size=1, swap=True)),
        "real",
        (5,),
    ),
    Case("RQSpline-per-channel", _flow(IMG, lambda: jf.RQSplineActivation(2)), "real", IMG),
    Case("RQSpline-shared", _flow(IMG, lambda: jf.RQSplineActivation(())), "real", IMG),
    Case(
        "RQSpline-per-element",
        _flow((4,), lambda: jf.RQSplineActivation((4,), bins=3)),
        "real",
        (4,),
    ),
    Case(
        "Squeeze-coupling-Unsqueeze",
        _flow(IMG, jf.Squeeze, lambda: jf.AffineCoupling(8, hidden=8), jf.Unsqueeze),
        "real",
        IMG,
    ),
    Case(
        "Unsqueeze-spline-Squeeze",
        _flow((4, 2, 2), jf.Unsqueeze, lambda: jf.RQSplineActivation(1), jf.Squeeze),
        "real",
        (4, 2, 2),
    ),
    Case(
        "SplitPrior-image",
        _flow((4, 2, 2), lambda: jf.SplitPrior(4, inner=[jf.AffineCoupling(2, hidden=8)])),
        "real",
        (4, 2, 2),
        _perturb,
    ),
    Case("SplitPrior-selfnorm-relative-inner", _split_with_gradient_modes, "real", (5,), _perturb),
    Case("Glow-like-two-levels", _glow_like, "real", IMG, _init_then_perturb(IMG)),
]

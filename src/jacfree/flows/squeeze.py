r"""Space-to-depth squeeze and its inverse (RealNVP, Dinh et al. 2017; Glow, Kingma & Dhariwal).

:class:`Squeeze` with factor f maps ``(B, C, H, W)`` to ``(B, C·f², H/f, W/f)``:

.. math::  z[b,\; c f^2 + i f + j,\; h,\; w] = x[b,\; c,\; h f + i,\; w f + j],
    \qquad 0 \le i, j < f,

a permutation of the coordinates, so log|det| = 0 and the inverse is exact.
:class:`Unsqueeze` is the same permutation the other way round (depth-to-space).

**Shapes inside a Flow.** A :class:`~jacfree.flows.Flow` draws its latent with the data's event
shape, so a flow whose layers squeeze must give the latent that shape back at the end: finish with
as many :class:`Unsqueeze` as there were :class:`Squeeze` (a permutation of an i.i.d. Gaussian
latent: nothing changes in the density), or put the squeezed part inside a
:class:`~jacfree.flows.SplitPrior`, which packs its inner output back into its input's shape.
Layers that change the event shape define ``output_shape(shape) -> shape`` (event shape without
the batch dimension); composites use it to invert.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import Tensor, nn

from .._checks import check_positive_int
from .core import FlowLayer

__all__ = ["Squeeze", "Unsqueeze", "output_shape"]


def squeeze(x: Tensor, f: int) -> Tensor:
    """Space-to-depth ``(B, C, H, W) -> (B, C·f², H/f, W/f)`` (no checks)."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // f, f, w // f, f).permute(0, 1, 3, 5, 2, 4)
    return x.reshape(b, c * f * f, h // f, w // f)


def unsqueeze(z: Tensor, f: int) -> Tensor:
    """Depth-to-space ``(B, C·f², H, W) -> (B, C, H·f, W·f)``, the inverse of :func:`squeeze`."""
    b, c, h, w = z.shape
    z = z.reshape(b, c // (f * f), f, f, h, w).permute(0, 1, 4, 2, 5, 3)
    return z.reshape(b, c // (f * f), h * f, w * f)


def _check_squeezable(shape: Sequence[int], f: int, layer: str) -> None:
    if len(shape) != 3:
        raise ValueError(
            f"{layer} expects images of shape (batch, C, H, W), got per-sample shape "
            f"{tuple(shape)}; reshape the data to (batch, C, H, W) first."
        )
    _, h, w = shape
    if h % f or w % f:
        raise ValueError(
            f"{layer} (factor {f}) needs height and width divisible by {f}, got {h}×{w}; crop or "
            f"pad the images to a multiple of {f} (e.g. 28×28 squeezes twice, to 7×7, but not a "
            "third time), or squeeze fewer times."
        )


def _check_unsqueezable(shape: Sequence[int], f: int, layer: str) -> None:
    if len(shape) != 3:
        raise ValueError(
            f"{layer} expects images of shape (batch, C, H, W), got per-sample shape "
            f"{tuple(shape)}; reshape the data to (batch, C, H, W) first."
        )
    if shape[0] % (f * f):
        raise ValueError(
            f"{layer} (factor {f}) needs a channel count divisible by {f * f}, got {shape[0]}; "
            "use it only to undo a Squeeze of the same factor."
        )


class _Reshuffle(FlowLayer):
    """Squeeze or unsqueeze by ``factor`` (``to_depth`` says which way the forward map goes)."""

    to_depth: bool

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = check_positive_int(factor, "factor", minimum=2)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"

    def _shuffle(self, x: Tensor, to_depth: bool, where: str) -> Tensor:
        check = _check_squeezable if to_depth else _check_unsqueezable
        check(x.shape[1:], self.factor, where)
        return (squeeze if to_depth else unsqueeze)(x, self.factor)

    def output_shape(self, shape: Sequence[int]) -> tuple[int, ...]:
        """Event shape of the output for an input event shape ``(C, H, W)``."""
        f = self.factor
        if self.to_depth:
            _check_squeezable(shape, f, type(self).__name__)
            c, h, w = shape
            return (c * f * f, h // f, w // f)
        _check_unsqueezable(shape, f, type(self).__name__)
        c, h, w = shape
        return (c // (f * f), h * f, w * f)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self._shuffle(x, self.to_depth, type(self).__name__), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return self._shuffle(z, not self.to_depth, f"{type(self).__name__}.inverse")


class Squeeze(_Reshuffle):
    """Space-to-depth: ``(B, C, H, W) -> (B, C·f², H/f, W/f)``, log-det 0, exact inverse.

    Args:
        factor: f (2 in RealNVP/Glow); H and W must be divisible by it.
    """

    to_depth = True


class Unsqueeze(_Reshuffle):
    """Depth-to-space ``(B, C, H, W) -> (B, C/f², H·f, W·f)``: the inverse of :class:`Squeeze`.

    Put one at the end of a flow for every :class:`Squeeze` in it, so the latent has the data's
    shape again (see the module docstring). log-det 0.

    Args:
        factor: f; C must be divisible by f².
    """

    to_depth = False


def output_shape(layers: Iterable[nn.Module], shape: Sequence[int]) -> tuple[int, ...]:
    """Event shape after ``layers`` for input event shape ``shape``.

    Layers without an ``output_shape`` method are taken to keep the shape.
    """
    out = tuple(int(s) for s in shape)
    for layer in layers:
        fn = getattr(layer, "output_shape", None)
        if fn is not None:
            out = tuple(fn(out))
    return out

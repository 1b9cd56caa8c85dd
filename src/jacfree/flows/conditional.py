r"""Conditional flows p(x | c): a context encoder and a context-dependent affine layer.

A conditional flow is a family of flows ``x ↦ z = F_θ(x; c)``, one per context ``c``, each
invertible in ``x``:

.. math::  \log p(x \mid c) = \log\mathcal N(F_θ(x; c); 0, I)
    + \log\left|\det \frac{\partial F_θ(x; c)}{\partial x}\right| .

jacfree feeds the context in through layers whose log-determinant is cheap and exact, and never
through the square or convolutional weights:

* :class:`ContextEncoder` maps the context once per batch to features ``h = e_φ(c)`` (an MLP for
  a vector context, an embedding table for a class label);
* :class:`ContextAffine` is an element-wise affine map ``z = x ⊙ e^{a(h)} + t(h)`` whose
  log-scale and shift come from ``h`` through a zero-initialised linear head (so a fresh
  conditional flow is the unconditional one); its log-det is ``Σ a(h)``, exact and O(D);
* the additive couplings of NICE read ``h`` next to their kept coordinates
  (:class:`~jacfree.flows.nice.AdditiveCoupling`, log-det 0).

**Why the relative and self-normalizing rules still hold.** A square layer ``y = W u + b`` sits
between context layers, so its input ``u`` and the gradient ``Δ = ∂ℓ/∂y`` arriving at its
output depend on ``c`` — but the log-likelihood still depends on ``W`` only through ``y`` and
through ``log|det W|``, which does not involve ``c``:

.. math::  \frac{\partial ℓ}{\partial W} = Δ^\top u - W^{-\top},

exactly the form both rules are built on. The relative rule computes ``(Δᵀu − W⁻ᵀ) WᵀW`` from
``Δ`` and the layer's own output; the SNF rule replaces ``W⁻ᵀ`` by ``Rᵀ`` with the reconstruction
penalty on the layer's own input. Neither looks outside the layer, so neither changes, per
sample and per context. The context parameters φ and the heads' weights appear only in the
cheap exact log-dets ``Σ a(h)`` and in ``Δ``; they receive ordinary (Euclidean) gradients.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import all_finite, check_positive_int, values_visible
from .core import FlowLayer

__all__ = ["ContextAffine", "ContextEncoder", "context_encoder"]


class ContextEncoder(nn.Module):
    """Map a context ``c`` to features ``h`` (shape ``(N, hidden)``) shared by the context layers.

    Exactly one of:

    Args:
        features: F for a vector context, a float tensor of shape ``(*batch, F)``; encoded by
            an MLP ``Linear(F, hidden) → SiLU → Linear(hidden, hidden) → SiLU``.
        classes: K for a class-label context, an integer tensor of shape ``(*batch,)`` with
            values in ``[0, K)``; encoded by an embedding table ``(K, hidden)``.
        hidden: width of ``h``.
    """

    def __init__(
        self, features: int | None = None, classes: int | None = None, hidden: int = 64
    ) -> None:
        super().__init__()
        if (features is None) == (classes is None):
            raise ValueError(
                "a context is either a vector (context_features=F) or a class label "
                f"(context_classes=K), not both or neither; got features={features!r}, "
                f"classes={classes!r}."
            )
        self.hidden = check_positive_int(hidden, "context_hidden")
        self.features = features
        self.classes = classes
        self.net: nn.Module
        if features is not None:
            check_positive_int(features, "context_features")
            self.net = nn.Sequential(
                nn.Linear(features, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
            )
        else:
            check_positive_int(classes, "context_classes", minimum=2)
            self.net = nn.Embedding(classes, hidden)

    def extra_repr(self) -> str:
        if self.features is not None:
            return f"features={self.features}, hidden={self.hidden}"
        return f"classes={self.classes}, hidden={self.hidden}"

    @property
    def event_shape(self) -> tuple[int, ...]:
        """Shape of one context: ``(F,)`` for vectors, ``()`` for class labels."""
        return (self.features,) if self.features is not None else ()

    def describe(self) -> str:
        if self.features is not None:
            return f"a float tensor of shape (batch, {self.features}) (or ({self.features},))"
        return f"integer class labels of shape (batch,) (or a scalar) in [0, {self.classes})"

    def batch_shape(self, context: Tensor) -> tuple[int, ...]:
        """The batch shape of ``context`` (its shape without the event dimensions), checked."""
        self._check_type(context)
        n = len(self.event_shape)
        if context.dim() < n or tuple(context.shape[context.dim() - n :]) != self.event_shape:
            raise ValueError(
                f"context must be {self.describe()}, got shape {tuple(context.shape)}."
            )
        return tuple(context.shape[: context.dim() - n])

    def flatten(self, context: Tensor, rows: int) -> Tensor:
        """``context`` with its batch dimensions flattened into ``rows``."""
        return context.reshape(rows, *self.event_shape)

    def per_sample(self, context: Tensor, batch: int, *, validate: bool = True) -> Tensor:
        """One context per sample: ``(batch, *event)``; a single context is shared by all.

        With ``validate``: the values are checked (finite vectors, labels in range).
        """
        shape = self.batch_shape(context)
        if shape == ():
            context = context.expand(batch, *self.event_shape)
        elif shape != (batch,):
            raise ValueError(
                f"context has batch shape {shape} but the data has {batch} samples; pass one "
                f"context per sample ({self.describe()} with batch = {batch}) or a single one."
            )
        if validate and values_visible(context):
            self._check_values(context)
        return context

    def _check_type(self, context: object) -> None:
        if not isinstance(context, Tensor):
            raise TypeError(f"context must be {self.describe()}, got {type(context).__name__}.")
        if self.features is not None and not context.is_floating_point():
            raise TypeError(
                f"context has dtype {context.dtype}; a vector context must be floating point "
                "(convert it with context.float()); for class labels build the flow with "
                "context_classes=K instead of context_features."
            )
        if self.classes is not None and (context.is_floating_point() or context.is_complex()):
            raise TypeError(
                f"context has dtype {context.dtype}; class labels must be integers "
                "(convert them with context.long())."
            )

    def _check_values(self, context: Tensor) -> None:
        if self.features is not None:
            if not all_finite(context):
                raise ValueError("context contains NaN or Inf values; clean or impute it first.")
        elif context.numel() and not bool(((context >= 0) & (context < self.classes)).all()):
            lo, hi = int(context.min()), int(context.max())
            raise ValueError(
                f"class labels must lie in [0, {self.classes}), got values in [{lo}, {hi}]; "
                f"build the flow with context_classes={hi + 1} or remap the labels."
            )

    def forward(self, context: Tensor) -> Tensor:
        """``h`` of shape ``(N, hidden)`` from ``N`` contexts ``(N, *event)``."""
        if self.features is None:
            return self.net(context)
        dtype = self.net[0].weight.dtype
        return self.net(context.to(dtype))


def context_encoder(
    features: int | None, classes: int | None, hidden: int = 64
) -> ContextEncoder | None:
    """The encoder of a flow built with ``context_features=`` / ``context_classes=`` (``None``
    for an unconditional flow)."""
    if features is None and classes is None:
        return None
    return ContextEncoder(features, classes, hidden)


PER = ("feature", "channel", "element")


class ContextAffine(FlowLayer):
    r"""``z = x ⊙ e^{a(h)} + t(h)`` with ``(ã, t) = head(h)``, ``a = β tanh(ã/β)``; log-det Σa.

    Args:
        shape: event shape of the layer's input: ``(D,)`` for vectors, ``(C, H, W)`` for images.
        context_dim: width of the encoded context ``h`` (``ContextEncoder.hidden``).
        per: ``"feature"`` (vectors: one scale and shift per coordinate), ``"channel"``
            (images: per channel, shared over pixels) or ``"element"`` (images: per pixel and
            channel).
        scale_bound: β of the soft clamp of the log-scale (as in the affine couplings).

    The head is zero-initialised: the layer starts as the identity, whatever the context.
    """

    conditional = True
    inverse_is_differentiable = True

    def __init__(
        self,
        shape: Sequence[int],
        context_dim: int,
        *,
        per: str = "feature",
        scale_bound: float = 2.0,
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if per not in PER:
            raise ValueError(f"per must be one of {PER}, got {per!r}.")
        if (len(shape) == 1) != (per == "feature"):
            raise ValueError(
                f"ContextAffine over shape {shape}: use per='feature' for vectors (D,) and "
                "per='channel' or 'element' for images (C, H, W)."
            )
        if not scale_bound > 0:
            raise ValueError(f"scale_bound must be positive, got {scale_bound}.")
        self.shape = shape
        self.per = per
        self.scale_bound = float(scale_bound)
        self.param_shape = (shape[0], 1, 1) if per == "channel" else shape
        self.n = math.prod(self.param_shape)
        # every parameter of a scale acts on this many coordinates (H·W per channel)
        self.repeat = math.prod(shape) // self.n
        self.head = nn.Linear(check_positive_int(context_dim, "context_dim"), 2 * self.n)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, per={self.per!r}"

    def _scale_shift(self, h: Tensor) -> tuple[Tensor, Tensor]:
        out = F.linear(h, self.head.weight, self.head.bias)
        b = self.scale_bound
        a = b * torch.tanh(out[:, : self.n] / b)
        t = out[:, self.n :]
        return a.reshape(-1, *self.param_shape), t.reshape(-1, *self.param_shape)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        a, t = self._scale_shift(h)
        return x * a.exp() + t, a.flatten(1).sum(1) * self.repeat

    def training_forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        return self(x, h)

    def inverse(self, z: Tensor, h: Tensor) -> Tensor:
        a, t = self._scale_shift(h)
        return (z - t) * torch.exp(-a)

    def approximate_inverse(self, z: Tensor, h: Tensor) -> Tensor:
        return self.inverse(z, h)

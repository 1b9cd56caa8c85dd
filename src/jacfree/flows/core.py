"""The flow core: the layer protocol, the standard Gaussian base and the :class:`Flow` container.

Direction convention (for every flow in jacfree): a flow maps **data → latent**,
``z, logdet = flow(x)`` and ``x = flow.inverse(z)``, with the change of variables

.. math::  \\log p(x) = \\log \\mathcal N(z; 0, I) + \\log |\\det \\partial z / \\partial x| .

Layers can give two versions of their log-determinant:

* ``forward(x) -> (z, logdet)`` — the **exact** per-sample log|det J| (shape ``(B,)``);
* ``training_forward(x) -> (z, logdet_term)`` — the same ``z``, and a term whose *gradient* is the
  gradient of the layer's training mode. Its value equals the exact log-det except for the parts a
  mode exists to avoid (the relative gradient never evaluates log|det W|: that value is zero).

:meth:`Flow.log_prob` uses the first, :meth:`Flow.loss` the second.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._checks import check_choice, check_positive_int, check_samples

GRADIENT_MODES = ("exact", "relative", "selfnorm")


class ParameterStateCache:
    """Cache of values derived from parameters, valid for exactly one parameter state.

    A stored value is reused while every tensor it was computed from has the same *state key*:
    its version counter (bumped by every in-place update autograd can see: ``copy_`` under
    ``no_grad``, ``load_state_dict``, most optimisers), its storage address (changed by ``.to()``,
    ``.double()`` and by assigning ``.data``), dtype, device and shape — and no
    ``torch.optim`` optimiser has stepped since (fused kernels such as ``Adam(fused=True)`` update
    parameters without bumping their version counters, so every optimiser step counts). Reading
    the key costs no device work and no host synchronisation, so a cached ``log_prob`` on a GPU
    never waits for the device to check it.

    An in-place edit through ``.data`` (``p.data.mul_(2)``) bypasses the version counter; after
    one, call :func:`invalidate_caches` on the module. Flows and layers also clear their caches
    themselves when they are moved or cast (``.to``, ``.double``) and when a state is loaded.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[tuple[object, ...], object]] = {}

    def get(self, name: str, tensors: Sequence[Tensor], compute: Callable[[], object]) -> object:
        key = (_optimizer_steps, *(_state_key(t) for t in tensors))
        entry = self._entries.get(name)
        if entry is not None and entry[0] == key:
            return entry[1]
        value = compute()
        self._entries[name] = (key, value)
        return value

    def clear(self) -> None:
        self._entries.clear()


def _state_key(t: Tensor) -> tuple[object, ...]:
    return (t._version, t.data_ptr(), t.dtype, t.device, tuple(t.shape))


_optimizer_steps = 0  # optimiser steps taken in this process (any torch.optim optimiser)


def _count_optimizer_step(optimizer: object, args: object, kwargs: object) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


register_optimizer_step_post_hook(_count_optimizer_step)


def invalidate_caches(module: nn.Module) -> nn.Module:
    """Forget every cached parameter-derived value (factorisations, log-dets) in ``module``.

    Needed only after editing parameters in place through ``.data``, which hides the edit from
    the version counters the caches are keyed on (see :class:`ParameterStateCache`).
    """
    for m in module.modules():
        cache = getattr(m, "_cache", None)
        if isinstance(cache, ParameterStateCache):
            cache.clear()
    return module


class CachedStateModule(nn.Module):
    """A module that clears its parameter caches when it is moved, cast or loaded."""

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        invalidate_caches(self)
        return super()._apply(*args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        cache = getattr(self, "_cache", None)
        if isinstance(cache, ParameterStateCache):
            cache.clear()
        super()._load_from_state_dict(*args, **kwargs)


class FlowLayer(CachedStateModule):
    """Base class of an invertible layer (data → latent).

    Subclasses implement :meth:`forward` (exact log-det) and :meth:`inverse`; layers whose
    log-det gradient can be computed more cheaply than through the exact value override
    :meth:`training_forward`.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Return ``(z, logdet)`` with the exact per-sample log|det ∂z/∂x| of shape ``(B,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Return ``x`` such that ``forward(x)[0] == z``."""
        raise NotImplementedError

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(z, logdet_term)`` for the training loss; by default the exact forward."""
        return self(x)

    def approximate_inverse(self, z: Tensor) -> Tensor:
        """Cheap approximate inverse (a learned one, for self-normalizing layers).

        By default the exact :meth:`inverse`; layers holding sub-layers forward the call.
        """
        return self.inverse(z)


_LOG_TWO_PI = math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """Standard Gaussian base distribution N(0, I) over an event shape.

    Its constant is a buffer, so it follows ``.to(device)`` / ``.double()`` with the flow.
    """

    def __init__(self, event_shape: Sequence[int]) -> None:
        super().__init__()
        self.event_shape = tuple(int(s) for s in event_shape)
        self.register_buffer("log_two_pi", torch.tensor(math.log(2 * math.pi)), persistent=False)

    @property
    def dim(self) -> int:
        return math.prod(self.event_shape)

    def log_prob(self, z: Tensor) -> Tensor:
        """Per-sample log N(z; 0, I), shape ``(B,)``."""
        # The constant is a Python float, applied at z's precision: the buffer was created in
        # float32, so after ``.double()`` it holds log 2π rounded to float32 (an error of
        # D/2 · 6e-8 nats). The buffer only carries the device and dtype for ``sample``.
        return -0.5 * (z.flatten(1).square().sum(1) + self.dim * _LOG_TWO_PI)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        c = self.log_two_pi
        return torch.randn(
            (n, *self.event_shape), generator=generator, device=c.device, dtype=c.dtype
        )


class Flow(nn.Module):
    """A normalizing flow: a sequence of :class:`FlowLayer` (data → latent) and a Gaussian base.

    Args:
        layers: the layers, applied in order to the data.
        event_shape: shape of one sample, e.g. ``(64,)`` or ``(1, 28, 28)``.
        validate: check every input for shape, dtype and finite values (one device sync per call).
    """

    def __init__(
        self, layers: Iterable[FlowLayer], event_shape: Sequence[int], *, validate: bool = True
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.base = StandardNormal(event_shape)
        self.validate = validate

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self.base.event_shape

    @property
    def dim(self) -> int:
        """Number of scalar dimensions D of one sample (used for bits per dimension)."""
        return self.base.dim

    def _check(self, x: Tensor, name: str = "x", *, values: bool = True) -> Tensor:
        """Shape and dtype checks, and (``values=True``) the finite-value scan (a host read)."""
        if not self.validate:
            return x
        dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), None)
        return check_samples(x, self.event_shape, name=name, finite=values, dtype=dtype)

    def validate_data(self, x: Tensor, name: str = "x") -> Tensor:
        """Check a whole dataset once, where it enters training: shape, dtype, finite values,
        and the value range each leading pre-processing layer expects (e.g. ``Dequantize``).

        :meth:`loss` only checks shapes and dtypes (a training step reads no value on the host),
        so :func:`jacfree.fit` calls this on the training and validation data before epoch 1.
        """
        x = check_samples(x, self.event_shape, name=name)
        for layer in self.layers:
            check = getattr(layer, "check_input", None)
            if check is None:
                break
            check(x)
        return x

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``(z, logdet)`` with the exact log|det ∂z/∂x| per sample."""
        z = self._check(x)
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer(z)
            logdet = logdet + ld
        return z, logdet

    def inverse(self, z: Tensor, *, approximate: bool = False) -> Tensor:
        """Map latent to data.

        ``approximate=True`` goes through the learned inverses of self-normalizing layers
        (x ≈ R(z − b): no solve, no factorisation) and the exact inverse of every other layer.
        """
        x = self._check(z, "z")
        for layer in reversed(self.layers):
            x = layer.approximate_inverse(x) if approximate else layer.inverse(x)
        return x

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density log p(x) in nats, shape ``(B,)``, whatever the gradient mode.

        The data-independent O(D³) parts (log|det W|) are computed in float64 once per parameter
        state and cached when no parameter gradient is needed.
        """
        z, logdet = self(x)
        return self.base.log_prob(z) + logdet

    def loss(self, x: Tensor) -> Tensor:
        """Training loss: the batch-mean negative log-likelihood, as seen by the gradient mode.

        ``loss.backward()`` leaves in ``.grad`` the gradient of the layers' modes. In the
        ``relative`` mode the *value* leaves out Σ_k log|det W_k| (never evaluated in training);
        use :meth:`log_prob` for the exact value.

        The step reads no tensor value on the host (no device synchronisation) and traces as one
        graph under ``torch.compile(fullgraph=True)``: inputs get shape and dtype checks only;
        check their values once with :meth:`validate_data`.
        """
        z = self._check(x, values=False)  # values: checked once per dataset (validate_data)
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer.training_forward(z)
            logdet = logdet + ld
        return -(self.base.log_prob(z) + logdet).mean()

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, *, approximate: bool = False
    ) -> Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``.

        ``approximate=True`` samples through the learned inverses of self-normalizing layers
        (Keller et al. 2021), see :meth:`inverse`.
        """
        check_positive_int(n, "n")
        return self.inverse(self.base.sample(n, generator=generator), approximate=approximate)

    def training_diagnostics(self) -> dict[str, Tensor]:
        """Quantities of the last :meth:`loss` call worth logging (detached tensors).

        With self-normalizing layers in use: ``recon``, Σ over those layers of the batch-mean
        ‖R W h − h‖² (the penalty λ multiplies), and ``recon_rel``, the largest per-layer ratio
        of that error to the batch-mean ‖h‖² (scale-free; what the drift warning watches).
        """
        layers = [
            m
            for m in self.modules()
            if getattr(m, "gradient", None) == "selfnorm"
            and getattr(m, "last_reconstruction", None) is not None
        ]
        if not layers:
            return {}
        return {
            "recon": torch.stack([m.last_reconstruction for m in layers]).sum(),
            "recon_rel": torch.stack([m.last_relative_reconstruction for m in layers]).max(),
        }

    def set_recon_weight(self, value: float) -> Flow:
        """Set λ, the reconstruction weight, of every self-normalizing layer."""
        for m in self.modules():
            if hasattr(m, "set_recon_weight") and m is not self:
                m.set_recon_weight(value)
        return self

    @property
    def recon_weight(self) -> float | None:
        """λ of the self-normalizing layers: ``None`` without any, else the largest of their
        values (:meth:`set_recon_weight` gives them all one value)."""
        values = [float(b) for name, b in self.named_buffers() if name.endswith("recon_weight")]
        return max(values) if values else None

    @property
    def gradient(self) -> str | None:
        """The gradient mode shared by the layers that have one (``None`` if they have none)."""
        modes = {m.gradient for m in self.modules() if isinstance(m, GradientModeMixin)}
        if len(modes) > 1:
            return "mixed"
        return modes.pop() if modes else None

    def set_gradient(self, mode: str) -> Flow:
        """Switch every layer that has a gradient mode to ``mode`` (works on a live model)."""
        check_choice(mode, "gradient mode", GRADIENT_MODES)
        for m in self.modules():
            if isinstance(m, GradientModeMixin):
                m.set_gradient(mode)
        return self


class GradientModeMixin:
    """A layer whose log-det gradient can be computed in several ways (see ``GRADIENT_MODES``)."""

    supported_gradients: tuple[str, ...] = ("exact",)
    gradient: str = "exact"

    def set_gradient(self, mode: str) -> None:
        check_choice(mode, "gradient mode", GRADIENT_MODES)
        if mode not in self.supported_gradients:
            raise NotImplementedError(
                f"{type(self).__name__} supports gradient modes "
                f"{', '.join(map(repr, self.supported_gradients))}, not {mode!r}."
            )
        self.gradient = mode

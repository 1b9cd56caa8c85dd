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
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from .._checks import check_choice, check_positive_int, check_samples

if TYPE_CHECKING:
    from .linear import InvertibleLinear

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

    A *conditional* layer (``conditional = True``) takes the encoded context ``h`` (one row per
    sample) as a second argument of ``forward``, ``inverse``, ``training_forward`` and
    ``approximate_inverse``; :class:`Flow` passes it (see :mod:`jacfree.flows.conditional`).

    ``inverse_is_differentiable`` says whether :meth:`inverse` is differentiable with respect to
    the layer's parameters (analytic inverses: couplings, scalings). Layers whose inverse is a
    solve or an iteration on detached parameters leave it ``False``, and
    :meth:`inverse_and_logdet` supplies the implicit-function gradient.

    ``supported_gradients`` names the gradient modes (``GRADIENT_MODES``) a layer can train in;
    it is empty for a layer trained by plain autograd through its exact log-det. Layers with modes
    are :class:`~jacfree.flows.linear.InvertibleLinear` layers, which :class:`Flow` asks for their
    mode, λ and reconstruction statistics.
    """

    conditional: bool = False
    supported_gradients: tuple[str, ...] = ()
    inverse_is_differentiable: bool = False

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Return ``(z, logdet)`` with the exact per-sample log|det ∂z/∂x| of shape ``(B,)``."""
        raise NotImplementedError

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Return ``x`` such that ``forward(x)[0] == z``."""
        raise NotImplementedError

    def training_forward(self, x: Tensor, *context: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(z, logdet_term)`` for the training loss; by default the exact forward.

        (``context``: the encoded context ``h``, passed to conditional layers only.)
        """
        return self(x, *context)

    def approximate_inverse(self, z: Tensor, *context: Tensor) -> Tensor:
        """Cheap approximate inverse (a learned one, for self-normalizing layers).

        By default the exact :meth:`inverse`; layers holding sub-layers forward the call.
        """
        return self.inverse(z, *context)

    def call(self, method: str, x: Tensor, h: Tensor | None) -> object:
        """``self.<method>(x)``, or ``self.<method>(x, h)`` for a conditional layer."""
        fn = getattr(self, method)
        return fn(x, h) if self.conditional else fn(x)

    def inverse_and_logdet(self, z: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        r"""``(x, logdet)``: the inverse ``x = f⁻¹(z)`` and the exact log|det ∂f/∂x| *at x*.

        Differentiable with respect to ``z`` and the parameters θ whatever :meth:`inverse` does
        (float64 solves on detached weights, Newton iterations): with ``x* = f⁻¹(z)`` held fixed,

        .. math::  x = x^* + f^{-1}_θ(z) - f^{-1}_θ\big(f_θ(x^*)\big)

        has the value ``x*`` (``f(x*) = z``) and, by the implicit-function theorem, the exact
        derivatives ∂x/∂z = J⁻¹ and ∂x/∂θ = −J⁻¹ ∂f_θ/∂θ (the inverse's own θ-dependence, if
        any, cancels between its two calls). It needs only that :meth:`inverse` be differentiable
        in its input, and it is skipped when no gradient is recorded or the inverse is already
        differentiable in θ. The log-det comes from :meth:`forward` at ``x``, so it carries both
        its direct θ-dependence and the one through ``x``.
        """
        x = self.call("inverse", z, h)
        needs_implicit = (
            not self.inverse_is_differentiable
            and torch.is_grad_enabled()
            and any(p.requires_grad for p in self.parameters())
        )
        if needs_implicit:
            x_star = x.detach()
            fx, _ = self.call("forward", x_star, h)
            x = x_star + (x - self.call("inverse", fx, h))
        _, logdet = self.call("forward", x, h)
        return x, logdet


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
        context_encoder: for a conditional flow p(x | c), the module that maps a context ``c``
            to the features ``h`` every conditional layer reads
            (:class:`~jacfree.flows.conditional.ContextEncoder`); then ``log_prob``, ``loss``,
            ``sample``, ``inverse`` and ``distribution`` take ``context=``.
    """

    def __init__(
        self,
        layers: Iterable[FlowLayer],
        event_shape: Sequence[int],
        *,
        validate: bool = True,
        context_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.base = StandardNormal(event_shape)
        self.validate = validate
        self.context_encoder = context_encoder

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

    def validate_data(self, x: Tensor, name: str = "x", *, context: Tensor | None = None) -> Tensor:
        """Check a whole dataset once, where it enters training: shape, dtype, finite values,
        and the value range each leading pre-processing layer expects (e.g. ``Dequantize``);
        for a conditional flow also the contexts (one per sample: finite vectors, labels in
        range).

        :meth:`loss` only checks shapes and dtypes (a training step reads no value on the host),
        so :func:`jacfree.fit` calls this on the training and validation data before epoch 1.
        """
        x = check_samples(x, self.event_shape, name=name)
        if context is not None or self.conditional:
            self.encode_context(context, x.shape[0])
        for layer in self.layers:
            check = getattr(layer, "check_input", None)
            if check is None:
                break
            check(x)
        return x

    @property
    def conditional(self) -> bool:
        """Whether this flow models p(x | c) (it was built with a context encoder)."""
        return self.context_encoder is not None

    def encode_context(
        self, context: Tensor | None, batch: int, *, values: bool = True
    ) -> Tensor | None:
        """The features ``h`` (one row per sample) that conditional layers read, or ``None``.

        ``context`` holds one context per sample (``batch`` rows) or a single one, shared by
        the batch. Raises when a conditional flow gets no context or an unconditional one does.
        ``values=False`` skips the value checks (finite vectors, labels in range: host reads),
        as the training step does.
        """
        encoder = self.context_encoder
        if encoder is None:
            if context is not None:
                raise ValueError(
                    f"{type(self).__name__} was built without a context, so it models p(x) and "
                    "takes no context=; build it with context_features= (or context_classes=) "
                    "for a conditional flow p(x | c)."
                )
            return None
        if context is None:
            raise ValueError(
                f"this {type(self).__name__} is conditional (it models p(x | c)): pass "
                f"context= with {encoder.describe()}."
            )
        return encoder(encoder.per_sample(context, batch, validate=self.validate and values))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Map data to latent: ``(z, logdet)`` with the exact log|det ∂z/∂x| per sample."""
        z = self._check(x)
        h = self.encode_context(context, z.shape[0])
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer.call("forward", z, h)
            logdet = logdet + ld
        return z, logdet

    def inverse(
        self, z: Tensor, *, approximate: bool = False, context: Tensor | None = None
    ) -> Tensor:
        """Map latent to data.

        ``approximate=True`` goes through the learned inverses of self-normalizing layers
        (x ≈ R(z − b): no solve, no factorisation) and the exact inverse of every other layer.
        """
        x = self._check(z, "z")
        h = self.encode_context(context, x.shape[0])
        method = "approximate_inverse" if approximate else "inverse"
        for layer in reversed(self.layers):
            x = layer.call(method, x, h)
        return x

    def inverse_and_logdet(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(x, logdet)``: x = flow⁻¹(z) and the exact log|det ∂z/∂x| at x, in one pass.

        So ``log p(x) = base.log_prob(z) + logdet``. Differentiable in ``z`` and in every
        parameter (implicit-function gradients through solves and Newton inverses, see
        :meth:`FlowLayer.inverse_and_logdet`): this is what ``rsample`` goes through.
        """
        x = self._check(z, "z")
        h = self.encode_context(context, x.shape[0])
        logdet = x.new_zeros(x.shape[0])
        for layer in reversed(self.layers):
            x, ld = layer.inverse_and_logdet(x, h)
            logdet = logdet + ld
        return x, logdet

    def log_prob(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact log-density log p(x) (or log p(x | context)) in nats, shape ``(B,)``, whatever
        the gradient mode.

        The data-independent O(D³) parts (log|det W|) are computed in float64 once per parameter
        state and cached when no parameter gradient is needed.
        """
        z, logdet = self(x, context)
        return self.base.log_prob(z) + logdet

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Training loss: the batch-mean negative log-likelihood, as seen by the gradient mode.

        ``loss.backward()`` leaves in ``.grad`` the gradient of the layers' modes. In the
        ``relative`` mode the *value* leaves out Σ_k log|det W_k| (never evaluated in training);
        use :meth:`log_prob` for the exact value. A conditional flow takes ``context=`` (one
        row per sample); the context network's parameters get ordinary gradients.

        The step reads no tensor value on the host (no device synchronisation) and traces as one
        graph under ``torch.compile(fullgraph=True)``: inputs (and contexts) get shape and dtype
        checks only; check their values once with :meth:`validate_data`.
        """
        z = self._check(x, values=False)  # values: checked once per dataset (validate_data)
        h = self.encode_context(context, z.shape[0], values=False)
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer.call("training_forward", z, h)
            logdet = logdet + ld
        return -(self.base.log_prob(z) + logdet).mean()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        approximate: bool = False,
        context: Tensor | None = None,
    ) -> Tensor:
        """Draw ``n`` samples, shape ``(n, *event_shape)``; with a batch of contexts of batch
        shape ``S``, ``n`` samples for each: shape ``(n, *S, *event_shape)``.

        ``approximate=True`` samples through the learned inverses of self-normalizing layers
        (Keller et al. 2021), see :meth:`inverse`.
        """
        check_positive_int(n, "n")
        if context is None:
            return self.inverse(self.base.sample(n, generator=generator), approximate=approximate)
        encoder = self.context_encoder
        if encoder is None:
            self.encode_context(context, n)  # raises: an unconditional flow takes no context
        batch_shape = encoder.batch_shape(context)
        rows = n * math.prod(batch_shape)
        c = encoder.flatten(context.expand(n, *context.shape), rows)
        z = self.base.sample(rows, generator=generator)
        x = self.inverse(z, approximate=approximate, context=c)
        return x.reshape(n, *batch_shape, *self.event_shape)

    def distribution(self, context: Tensor | None = None) -> torch.distributions.Distribution:
        """This flow as a :class:`torch.distributions.Distribution` (of p(x | context) for a
        conditional flow, with batch shape = the context's batch shape).

        A light view, made per call and holding no state: ``log_prob``, ``sample``,
        ``rsample`` (differentiable in the parameters) and ``rsample_and_log_prob``; see
        :class:`~jacfree.flows.distribution.FlowDistribution`.
        """
        from .distribution import FlowDistribution

        return FlowDistribution(self, context)

    def training_diagnostics(self) -> dict[str, Tensor]:
        """Quantities of the last :meth:`loss` call worth logging (detached tensors).

        With self-normalizing layers in use: ``recon``, Σ over those layers of the batch-mean
        ‖R W h − h‖² (the penalty λ multiplies), and ``recon_rel``, the largest per-layer ratio
        of that error to the batch-mean ‖h‖² (scale-free; what the drift warning watches).
        """
        stats = [s for m in self.gradient_layers() if (s := m.reconstruction_stats()) is not None]
        if not stats:
            return {}
        return {
            "recon": torch.stack([mean for mean, _ in stats]).sum(),
            "recon_rel": torch.stack([rel for _, rel in stats]).max(),
        }

    def gradient_layers(self) -> list[InvertibleLinear]:
        """The layers, at any depth, that have a gradient mode (non-empty ``supported_gradients``),
        in data → latent order."""
        return [m for m in self.modules() if isinstance(m, FlowLayer) and m.supported_gradients]  # type: ignore[misc]

    def set_recon_weight(self, value: float) -> Flow:
        """Set λ, the reconstruction weight, of every self-normalizing layer."""
        for m in self.gradient_layers():
            m.set_recon_weight(value)
        return self

    @property
    def recon_weight(self) -> float | None:
        """λ of the self-normalizing layers: ``None`` without any, else the largest of their
        values (:meth:`set_recon_weight` gives them all one value)."""
        values = [
            float(lam)
            for m in self.gradient_layers()
            if (lam := m.reconstruction_weight()) is not None
        ]
        return max(values) if values else None

    @property
    def gradient(self) -> str | None:
        """The gradient mode shared by the layers that have one (``None`` if they have none)."""
        modes = {m.gradient for m in self.gradient_layers()}
        if len(modes) > 1:
            return "mixed"
        return modes.pop() if modes else None

    def set_gradient(self, mode: str) -> Flow:
        """Switch every layer that has a gradient mode to ``mode`` (works on a live model)."""
        check_choice(mode, "gradient mode", GRADIENT_MODES)
        for m in self.gradient_layers():
            m.set_gradient(mode)
        return self

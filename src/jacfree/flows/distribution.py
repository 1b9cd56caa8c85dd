r"""A flow as a :class:`torch.distributions.Distribution` (``flow.distribution(context)``).

The view is light — made per call, like zuko's ``flow(c)``, holding only the flow and the
context — so ``flow.log_prob`` and ``flow.loss`` keep working as they are and the distribution
always sees the flow's current parameters, device and dtype. It gives what Pyro, sbi and other
code written against ``torch.distributions`` use:

* ``log_prob(x)``: the flow's exact ``log p(x | c)`` (nats) for ``x`` of shape
  ``(*sample, *batch, *event)``;
* ``sample(shape)`` / ``rsample(shape)``: ``x = F⁻¹(z)``, ``z ~ N(0, I)``, of shape
  ``(*shape, *batch, *event)``; ``rsample`` is differentiable in every parameter of the flow
  (through the float64 solves of the square layers and the Newton inverse of the smooth leaky
  ReLU by implicit-function gradients, see :meth:`jacfree.flows.FlowLayer.inverse_and_logdet`);
* ``rsample_and_log_prob(shape)``: both in one pass, the inverse returning its log-det:
  ``log p(x) = log N(z) + Σ_k log|det ∂f_k/∂x_k|`` at the points the inverse visits;
* ``batch_shape`` (the context's batch shape; ``()`` for an unconditional flow),
  ``event_shape`` (the flow's), ``support`` (real coordinates) and ``has_rsample = True``.

``pyro.contrib.zuko.ZukoToPyro(flow.distribution())`` turns it into a Pyro distribution, e.g. a
variational guide trained by SVI (see ``examples/pyro_svi_flow_guide.py``).

Notes: a flow whose first layers pre-process bounded data (dequantisation, logit transform) has a
bounded support that ``support`` does not describe; ``log_prob`` is then what the flow's own
``log_prob`` is (with uniform dequantisation, a stochastic lower bound).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Size, Tensor
from torch.distributions import Distribution, constraints

from .core import Flow

__all__ = ["FlowDistribution"]


class FlowDistribution(Distribution):
    """``p(x)`` (or ``p(x | context)``) of a :class:`~jacfree.flows.Flow` as a torch distribution.

    Args:
        flow: the flow (data → latent).
        context: ``None`` for an unconditional flow; for a conditional one, contexts of batch
            shape ``S`` (vectors ``(*S, F)``, class labels ``(*S,)``): the distribution then has
            batch shape ``S``.
        batch_shape: for an unconditional flow, a batch of independent copies of p(x) (default
            ``()``; :meth:`expand` sets it).
    """

    arg_constraints: dict = {}  # noqa: RUF012 - the torch.distributions convention
    has_rsample = True

    def __init__(
        self, flow: Flow, context: Tensor | None = None, *, batch_shape: Sequence[int] = ()
    ) -> None:
        if not isinstance(flow, Flow):
            raise TypeError(f"flow must be a jacfree Flow, got {type(flow).__name__}.")
        encoder = flow.context_encoder
        if encoder is None:
            flow.encode_context(context, 1)  # raises if a context is given
            batch_shape = tuple(batch_shape)
        else:
            if context is None:
                flow.encode_context(None, 1)  # raises: a conditional flow needs a context
            batch_shape = encoder.batch_shape(context)
        self.flow = flow
        self.context = context
        super().__init__(Size(batch_shape), Size(flow.event_shape), validate_args=False)

    @property
    def support(self) -> constraints.Constraint:  # type: ignore[override]
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: Size, _instance: object = None) -> FlowDistribution:
        """The same flow over ``batch_shape``: the context broadcast to it (conditional flows),
        or independent copies of p(x) (unconditional ones; what Pyro's plates ask for)."""
        batch_shape = Size(batch_shape)
        if self.context is None:
            return FlowDistribution(self.flow, batch_shape=batch_shape)
        event = self.flow.context_encoder.event_shape  # type: ignore[union-attr]
        return FlowDistribution(self.flow, self.context.expand(*batch_shape, *event))

    # -- helpers ------------------------------------------------------------------------------

    def _parameter(self) -> Tensor:
        """A tensor of the flow's device and dtype (its base's constant buffer)."""
        return self.flow.base.log_two_pi

    def _contexts(self, sample_shape: Size) -> Tensor | None:
        """One context per drawn sample, flattened: ``(prod(sample_shape + batch), *event)``."""
        if self.context is None:
            return None
        encoder = self.flow.context_encoder
        rows = math.prod(sample_shape) * math.prod(self.batch_shape)
        c = self.context.expand(*sample_shape, *self.context.shape)
        return encoder.flatten(c, rows)  # type: ignore[union-attr]

    def _latent(self, sample_shape: Size) -> Tensor:
        rows = math.prod(sample_shape) * math.prod(self.batch_shape)
        p = self._parameter()
        return torch.randn((rows, *self.event_shape), device=p.device, dtype=p.dtype)

    def _shape(self, flat: Tensor, sample_shape: Size, event: bool = True) -> Tensor:
        tail = tuple(self.event_shape) if event else ()
        return flat.reshape((*sample_shape, *self.batch_shape, *tail))

    # -- the Distribution interface -----------------------------------------------------------

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact ``log p(value | context)``, shape ``value.shape[:-len(event_shape)]``.

        ``value`` has shape ``(*sample, *batch, *event)``; its batch dimensions broadcast
        against the context's.
        """
        if not isinstance(value, Tensor):
            raise TypeError(f"value must be a tensor, got {type(value).__name__}.")
        n_event = len(self.event_shape)
        if value.dim() < n_event or tuple(value.shape[value.dim() - n_event :]) != tuple(
            self.event_shape
        ):
            raise ValueError(
                f"value must have shape (..., {', '.join(map(str, self.event_shape))}), got "
                f"{tuple(value.shape)}."
            )
        outer = torch.broadcast_shapes(value.shape[: value.dim() - n_event], self.batch_shape)
        x = value.expand(*outer, *self.event_shape).reshape(-1, *self.event_shape)
        context = None
        if self.context is not None:
            event = self.flow.context_encoder.event_shape  # type: ignore[union-attr]
            context = self.context.expand(*outer, *event).reshape(-1, *event)
        return self.flow.log_prob(x, context=context).reshape(outer)

    def rsample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        """Differentiable samples ``(*sample_shape, *batch, *event)``."""
        x, _ = self.rsample_and_log_prob(sample_shape)
        return x

    def sample(self, sample_shape: Size | tuple[int, ...] = ()) -> Tensor:
        """Samples ``(*sample_shape, *batch, *event)``, no gradient recorded (the inverse only,
        no log-det)."""
        sample_shape = Size(sample_shape)
        with torch.no_grad():
            z = self._latent(sample_shape)
            x = self.flow.inverse(z, context=self._contexts(sample_shape))
        return self._shape(x, sample_shape)

    def rsample_and_log_prob(
        self, sample_shape: Size | tuple[int, ...] = ()
    ) -> tuple[Tensor, Tensor]:
        """``(x, log p(x | c))`` in one pass through the inverse; both differentiable."""
        sample_shape = Size(sample_shape)
        z = self._latent(sample_shape)
        x, logdet = self.flow.inverse_and_logdet(z, context=self._contexts(sample_shape))
        log_p = self.flow.base.log_prob(z) + logdet
        return self._shape(x, sample_shape), self._shape(log_p, sample_shape, event=False)

    def __repr__(self) -> str:
        return (
            f"FlowDistribution({type(self.flow).__name__}, batch_shape={tuple(self.batch_shape)}, "
            f"event_shape={tuple(self.event_shape)})"
        )

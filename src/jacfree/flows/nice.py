r"""NICE: additive coupling layers and a diagonal scaling (Dinh, Krueger, Bengio 2014).

.. math::

    \text{coupling } k:\quad y_{I_k} = x_{I_k},\quad
        y_{J_k} = x_{J_k} + m_k(x_{I_k}),\qquad \log|\det| = 0,

    \text{scaling:}\quad z = e^{s} \odot y,\qquad \log|\det| = \textstyle\sum_i s_i,

with ``(I_k, J_k)`` the even/odd coordinates, alternating between layers, and a standard Gaussian
base, so

.. math::  \log p(x) = \log\mathcal N(z; 0, I) + \textstyle\sum_i s_i .

The log-density is exact and cheap (no Jacobian term beyond ``Σ s``), which is why the FD-SM paper
(Pang et al., NeurIPS 2020, after Song et al., UAI 2019) uses NICE to compare score-matching
estimators *by exact test log-likelihood*: a NICE trained with (FD-)SSM or DSM on its energy
``E(x) = −log p(x)`` is evaluated like one trained by maximum likelihood. Their MNIST model has 4
couplings whose MLPs have 5 linear layers of width 1000 (4 hidden layers) with softplus units.

``NICE`` is a :class:`~jacfree.flows.Flow` (data → latent): ``log_prob``, ``inverse``, ``sample``
and ``loss`` (maximum likelihood) work as for every flow. Pre-processing layers (dequantisation
and logit transform for images, :func:`jacfree.kinds.preprocess_layers`) may come first; their
log-dets count in ``log_prob`` (density on the data's original scale). Score matching works in the
space *after* pre-processing: :meth:`NICE.preprocess` maps data there and :meth:`NICE.energy` is
``−log p`` of the NICE body in that space.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .. import _activations
from .._checks import check_positive_int, check_samples
from .core import Flow, FlowLayer
from .options import FlowOptions, SharedOptions

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["NICE", "AdditiveCoupling", "DiagonalScaling"]


def _coupling_net(
    n_in: int, n_out: int, hidden: int, hidden_layers: int, activation: str
) -> nn.Sequential:
    _activations.activation(activation)  # refuses unknown and piecewise-linear names
    layers: list[nn.Module] = []
    width = n_in
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden), _activations.Activation(activation)]
        width = hidden
    out = nn.Linear(width, n_out)
    # Zero output layer: every coupling starts as the identity (a common, stable initialisation;
    # the output weights still receive gradients because the hidden units are non-zero).
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    layers.append(out)
    return nn.Sequential(*layers)


class AdditiveCoupling(FlowLayer):
    r"""Additive coupling layer: ``y_J = x_J + m(x_I)``, ``y_I = x_I``; log-det 0.

    Args:
        features: data dimension D (flattened events).
        parity: ``0`` keeps the even coordinates ``I = {0, 2, 4, …}`` and shifts the odd ones;
            ``1`` the other way round.
        hidden: width of the coupling MLP ``m``.
        hidden_layers: number of hidden layers of ``m`` (the paper's "5 layers" are 4 hidden
            layers plus the output layer).
        activation: a smooth activation by name: ``"softplus"`` (default, as in the FD-SM
            reference), ``"elu"``, ``"silu"``, ``"tanh"``, ... (``jacfree._activations``).
        context_dim: width of an encoded context ``h`` that ``m`` reads next to ``x_I``
            (``y_J = x_J + m(x_I, h)``: still log-det 0, still invertible in x); 0: none.
    """

    inverse_is_differentiable = True

    def __init__(
        self,
        features: int,
        parity: int,
        hidden: int = 1000,
        hidden_layers: int = 4,
        activation: str = "softplus",
        *,
        context_dim: int = 0,
    ) -> None:
        super().__init__()
        check_positive_int(features, "features", minimum=2)
        if parity not in (0, 1):
            raise ValueError(f"parity must be 0 or 1, got {parity!r}.")
        check_positive_int(hidden, "hidden")
        check_positive_int(hidden_layers, "hidden_layers", minimum=0)
        self.features = features
        self.parity = parity
        idx = torch.arange(features)
        keep = idx[idx % 2 == parity]
        move = idx[idx % 2 != parity]
        self.register_buffer("keep", keep, persistent=False)
        self.register_buffer("move", move, persistent=False)
        # y = cat([x_I, x_J + m(x_I)])[:, unsort] puts every coordinate back in its place.
        self.register_buffer("unsort", torch.argsort(torch.cat([keep, move])), persistent=False)
        check_positive_int(context_dim, "context_dim", minimum=0)
        self.context_dim = context_dim
        self.conditional = context_dim > 0
        self.net = _coupling_net(
            len(keep) + context_dim, len(move), hidden, hidden_layers, activation
        )

    def extra_repr(self) -> str:
        extra = f", context_dim={self.context_dim}" if self.context_dim else ""
        return f"features={self.features}, parity={self.parity}{extra}"

    def _couple(self, x: Tensor, sign: float, h: Tensor | None = None) -> Tensor:
        kept = x[:, self.keep]
        inputs = kept if h is None else torch.cat([kept, h.to(kept.dtype)], 1)
        moved = x[:, self.move] + sign * self.net(inputs)
        return torch.cat([kept, moved], 1)[:, self.unsort]

    def forward(self, x: Tensor, h: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, 1.0, h), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor, h: Tensor | None = None) -> Tensor:
        return self._couple(z, -1.0, h)


class DiagonalScaling(FlowLayer):
    r"""``z = exp(s) ⊙ x`` with a learned log-scale ``s`` (initialised to 0); log-det ``Σ s``."""

    inverse_is_differentiable = True

    def __init__(self, features: int) -> None:
        super().__init__()
        check_positive_int(features, "features")
        self.log_scale = nn.Parameter(torch.zeros(features))

    def extra_repr(self) -> str:
        return f"features={self.log_scale.numel()}"

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x * self.log_scale.exp()
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z * torch.exp(-self.log_scale)


class NICE(Flow):
    r"""NICE (Dinh et al. 2014) as a :class:`~jacfree.flows.Flow`: couplings + diagonal scaling.

    Args:
        features: data dimension D (images are flattened: 784 for 28×28).
        couplings: number of additive coupling layers, alternating even/odd (paper: 4).
        hidden: width of every coupling MLP (paper: 1000).
        hidden_layers: hidden layers per coupling MLP (paper: 4, i.e. 5 linear layers).
        activation: smooth activation of the coupling MLPs (paper: softplus).
        **options: the keywords every flow model shares
            (:class:`~jacfree.flows.options.FlowOptions`): ``preprocess`` (e.g. ``Dequantize``
            and ``LogitTransform`` for 8-bit images), ``validate``, ``context_features``,
            ``context_classes``, ``context_hidden``. With a context, every coupling network
            reads it next to its kept coordinates (log-det still 0).

    Exact ``log_prob`` (nats, data scale), ``inverse``, ``sample``, and ``loss`` (maximum
    likelihood) come from :class:`~jacfree.flows.Flow`. For score matching use :meth:`energy`
    on data mapped by :meth:`preprocess` (identity without pre-processing layers)::

        y = flow.preprocess(x)                       # no parameters, no gradient
        loss = jf.sm.fd_ssm(flow.energy, y, eps=0.1)  # E(y) = −log p_body(y)

    Example:
        >>> import torch, jacfree as jf
        >>> flow = jf.NICE(features=8, couplings=4, hidden=32, hidden_layers=2)
        >>> x = torch.randn(16, 8)
        >>> torch.allclose(flow.energy(x), -flow.log_prob(x))
        True
    """

    def __init__(
        self,
        features: int,
        couplings: int = 4,
        hidden: int = 1000,
        hidden_layers: int = 4,
        activation: str = "softplus",
        **options: Unpack[FlowOptions],
    ) -> None:
        check_positive_int(features, "features", minimum=2)
        check_positive_int(couplings, "couplings")
        shared = SharedOptions.resolve("NICE", options)
        encoder = shared.encoder
        width = encoder.hidden if encoder is not None else 0
        body: list[FlowLayer] = [
            AdditiveCoupling(features, k % 2, hidden, hidden_layers, activation, context_dim=width)
            for k in range(couplings)
        ]
        body.append(DiagonalScaling(features))
        super().__init__(
            shared.layers(body), (features,), validate=shared.validate, context_encoder=encoder
        )
        self.features = features
        self.n_preprocess = len(shared.preprocess)

    @property
    def preprocess_layers(self) -> list[FlowLayer]:
        """The pre-processing layers (data → model space)."""
        return list(self.layers[: self.n_preprocess])

    @property
    def body(self) -> list[FlowLayer]:
        """The NICE layers proper: the couplings and the final scaling."""
        return list(self.layers[self.n_preprocess :])

    @torch.no_grad()
    def preprocess(self, x: Tensor) -> Tensor:
        """Map data to the space the NICE body models (dequantise + logit for images).

        Stochastic layers (uniform dequantisation) draw fresh noise from the global RNG on every
        call. Returns ``x`` itself when there is no pre-processing.
        """
        y = self._check(x, values=False)
        for layer in self.preprocess_layers:
            y, _ = layer.training_forward(y)
        return y

    def body_log_prob(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        """Exact ``log p(y)`` (or ``log p(y | context)``) of the NICE body at pre-processed
        points ``y``, shape ``(B,)``."""
        if self.validate:
            check_samples(y, self.event_shape, name="y", finite=False)
        h = self.encode_context(context, y.shape[0], values=False)
        z = y
        logdet = y.new_zeros(y.shape[0])
        for layer in self.body:
            z, ld = layer.call("forward", z, h)
            logdet = logdet + ld
        return self.base.log_prob(z) + logdet

    def energy(self, y: Tensor, context: Tensor | None = None) -> Tensor:
        r"""``E(y) = −log p(y)`` of the NICE body, shape ``(B,)`` — the energy score matching
        trains (for a conditional NICE, ``lambda y: flow.energy(y, context=c)``). Without
        pre-processing layers ``energy(x) == −log_prob(x)``."""
        return -self.body_log_prob(y, context)

    @property
    def log_scale(self) -> Tensor:
        """The log-scales ``s`` of the final diagonal scaling, shape ``(D,)``."""
        return self.layers[-1].log_scale

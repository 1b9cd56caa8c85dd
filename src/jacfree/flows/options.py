"""The keywords every flow model of jacfree shares, documented and resolved in one place.

:class:`~jacfree.flows.FCFlow`, :class:`~jacfree.flows.CNNFlow`, :class:`~jacfree.flows.GlowFlow`
and :class:`~jacfree.flows.nice.NICE` take their own architecture parameters, then the keywords
of :class:`FlowOptions` (``**options``): pre-processing layers, input checks and a context for a
conditional flow p(x | c). The three models whose layers have gradient modes also take λ
(:class:`GradientFlowOptions`). Every model resolves them with :meth:`SharedOptions.resolve`,
which fills in the defaults, refuses unknown keywords as Python does, and builds the context
encoder the model's context layers read.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

from .conditional import ContextEncoder, context_encoder
from .core import FlowLayer

__all__ = ["FlowOptions", "GradientFlowOptions", "SharedOptions"]


class FlowOptions(TypedDict, total=False):
    """The keywords every flow model takes after its own (all optional).

    Args:
        preprocess: flow layers applied to the data first (e.g. ``Dequantize``,
            ``LogitTransform``), whose log-dets count in ``log_prob``. Default ``()``.
        validate: check inputs for shape, dtype and finite values. Default ``True``.
        context_features: F, to model p(x | c) for a vector context c of F features (a float
            tensor ``(batch, F)``). Default ``None``.
        context_classes: K, to model p(x | c) for a class-label context (integers in
            ``[0, K)``). Default ``None``; give at most one of the two.
        context_hidden: width of the encoded context ``h``. Default 64.

    The context is encoded once per batch (:class:`~jacfree.flows.conditional.ContextEncoder`:
    an MLP for vectors, an embedding table for labels); each model's docstring says which of its
    layers read ``h``. Those are layers with cheap exact log-dets, so the layers with gradient
    modes keep their rules unchanged (see :mod:`jacfree.flows.conditional`).
    """

    preprocess: Sequence[FlowLayer]
    validate: bool
    context_features: int | None
    context_classes: int | None
    context_hidden: int


class GradientFlowOptions(FlowOptions, total=False):
    """:class:`FlowOptions` and, for the models whose layers have gradient modes, λ.

    Args:
        recon_weight: λ of the selfnorm mode's reconstruction penalty, given to every layer with
            a gradient mode (change it on the live model with ``Flow.set_recon_weight``). Its
            default is the model's: 1.0 for ``FCFlow`` and ``CNNFlow``, 100.0 for ``GlowFlow``
            (Keller et al.'s values).
    """

    recon_weight: float


@dataclass(frozen=True)
class SharedOptions:
    """The shared options of one model, resolved: defaults filled in, the encoder built.

    Attributes:
        preprocess: the pre-processing layers (to put before the model's own layers).
        validate: the ``validate`` flag of :class:`~jacfree.flows.Flow`.
        encoder: the context encoder, ``None`` for an unconditional flow.
        recon_weight: λ for the layers with gradient modes (``None`` for a model without any).
    """

    preprocess: tuple[FlowLayer, ...]
    validate: bool
    encoder: ContextEncoder | None
    recon_weight: float | None

    @classmethod
    def resolve(
        cls, model: str, options: GradientFlowOptions, *, recon_weight: float | None = None
    ) -> SharedOptions:
        """Resolve the ``**options`` given to the constructor of ``model``.

        ``recon_weight``: the model's default λ, or ``None`` for a model without gradient modes
        (which then refuses the keyword). Raises ``TypeError`` for a keyword that is not an
        option, with the message Python gives for an unexpected keyword argument.
        """
        keys = (GradientFlowOptions if recon_weight is not None else FlowOptions).__optional_keys__
        for name in options:
            if name not in keys:
                raise TypeError(f"{model}.__init__() got an unexpected keyword argument {name!r}")
        return cls(
            preprocess=tuple(options.get("preprocess", ())),
            validate=options.get("validate", True),
            encoder=context_encoder(
                options.get("context_features"),
                options.get("context_classes"),
                options.get("context_hidden", 64),
            ),
            recon_weight=options.get("recon_weight", recon_weight),
        )

    def layers(self, body: Iterable[FlowLayer]) -> list[FlowLayer]:
        """The flow's layers, data → latent: the pre-processing layers, then ``body``."""
        return [*self.preprocess, *body]

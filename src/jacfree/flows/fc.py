"""The fully connected flow of Gresele et al. (NeurIPS 2020).

L square affine layers of width D with a smooth leaky ReLU between consecutive ones and none after
the last, and a standard Gaussian base::

    x → W₁x+b₁ → σ → W₂·+b₂ → … → σ → W_L·+b_L → z ~ N(0, I)

so that log p(x) = log N(z) + Σ_{k<L} Σᵢ log σ'(y_{k,i}) + Σ_k log|det W_k|.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from .._checks import check_positive_int
from .activations import SmoothLeakyReLU
from .conditional import ContextAffine
from .core import Flow, FlowLayer
from .linear import SquareAffine
from .options import GradientFlowOptions, SharedOptions
from .relative_stats import tap_row_stats

if TYPE_CHECKING:
    from typing_extensions import Unpack


class FCFlow(Flow):
    """Fully connected flow: ``layers`` square affine layers with smooth leaky ReLUs between them.

    Args:
        features: data dimension D.
        layers: number L of square affine layers (≥ 1; the paper uses 2).
        alpha: smooth leaky ReLU slope.
        gradient: ``"exact"``, ``"relative"`` or ``"selfnorm"`` (switch on the live model with
            ``set_gradient``).
        paper_bias_rule: reproduce the reference code's bias rule (no −b), see ``SquareAffine``.
        **options: the keywords every flow model shares
            (:class:`~jacfree.flows.options.GradientFlowOptions`): ``preprocess``,
            ``recon_weight`` (λ of the selfnorm mode; default 1.0, as Keller et al.),
            ``validate``, ``context_features``, ``context_classes``, ``context_hidden``. With a
            context, an element-wise affine map ``u ⊙ e^{a(c)} + t(c)`` (:class:`ContextAffine`,
            exact log-det Σa) precedes every square layer (see :mod:`jacfree.flows.conditional`).

    Example:
        >>> import torch, jacfree as jf
        >>> flow = jf.FCFlow(features=5, layers=3, gradient="relative")
        >>> x = torch.randn(32, 5)
        >>> flow.loss(x).backward()           # relative gradient in .grad, no O(D³) work
        >>> flow.log_prob(x).shape            # exact log-density
        torch.Size([32])
    """

    def __init__(
        self,
        features: int,
        layers: int = 2,
        alpha: float = 0.3,
        gradient: str = "relative",
        *,
        paper_bias_rule: bool = False,
        **options: Unpack[GradientFlowOptions],
    ) -> None:
        check_positive_int(features, "features")
        check_positive_int(layers, "layers")
        shared = SharedOptions.resolve("FCFlow", options, recon_weight=1.0)
        encoder = shared.encoder
        body: list[FlowLayer] = []
        for k in range(layers):
            if k > 0:
                body.append(SmoothLeakyReLU(alpha))
            if encoder is not None:
                body.append(ContextAffine((features,), encoder.hidden))
            body.append(
                SquareAffine(
                    features,
                    gradient,
                    paper_bias_rule=paper_bias_rule,
                    recon_weight=shared.recon_weight,
                )
            )
        super().__init__(
            shared.layers(body), (features,), validate=shared.validate, context_encoder=encoder
        )
        self.features = features
        self.alpha = alpha
        self._row_stats = False

    @property
    def affine_layers(self) -> list[SquareAffine]:
        """The square affine layers, in data → latent order."""
        return [m for m in self.layers if isinstance(m, SquareAffine)]

    def enable_row_stats(self, whole: bool = False) -> list[SquareAffine]:
        """Measure, in every training step, the row statistics of each relative layer's gradient.

        After this call, :meth:`loss` taps the output of every square affine layer in
        ``"relative"`` mode, and its backward pass writes into the layer's non-persistent buffer
        ``relative_row_stats`` (2, D) the row mean squares and the bias column of the gradient in
        multiplicative coordinates (:mod:`jacfree.flows.relative_stats`), at O(B·D·min(B, D))
        per layer; with ``whole=True`` the buffer is the whole multiplicative gradient Ê
        (D, D+1) instead, for data-parallel training. :class:`jacfree.train.RelativeAdam` calls
        it. Returns the square affine layers.
        """
        for m in self.affine_layers:
            shape = (m.features, m.features + 1) if whole else (2, m.features)
            stats = m.bias.detach().new_zeros(shape)
            m.register_buffer("relative_row_stats", stats, persistent=False)
        self._row_stats = True
        return self.affine_layers

    def loss(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """Batch-mean NLL as in :meth:`Flow.loss`; with :meth:`enable_row_stats`, the relative
        layers' outputs pass through the statistics tap (an identity)."""
        if not self._row_stats:
            return super().loss(x, context)
        z = self._check(x, values=False)  # values: checked once per dataset (validate_data)
        h = self.encode_context(context, z.shape[0], values=False)
        logdet = z.new_zeros(z.shape[0])
        for layer in self.layers:
            z, ld = layer.call("training_forward", z, h)
            if isinstance(layer, SquareAffine) and layer.gradient == "relative":
                z, ld = tap_row_stats(z, ld, layer.relative_row_stats)
            logdet = logdet + ld
        return -(self.base.log_prob(z) + logdet).mean()

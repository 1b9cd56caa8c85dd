"""The frame the multi-scale image flows share (:class:`~jacfree.flows.CNNFlow`,
:class:`~jacfree.flows.GlowFlow`).

Both take images ``(C, H, W)``, squeeze them (space-to-depth, factor 2) between or inside their
blocks, and end in unsqueezes that give the latent the data's shape (a fixed permutation of an
i.i.d. Gaussian: the density is unchanged), as :class:`~jacfree.flows.Flow` requires.
"""

from __future__ import annotations

from collections.abc import Sequence

from .._checks import check_image_shape
from .core import Flow, FlowLayer
from .options import SharedOptions
from .squeeze import Unsqueeze

__all__ = ["ImageFlow", "image_shape"]


class ImageFlow(Flow):
    """Base class of the image flows: the pre-processing layers, the model's layers, then
    ``unsqueezes`` unsqueezes back to the data's shape.

    Args:
        body: the model's layers (data → latent), context layers included.
        shape: event shape ``(C, H, W)`` of the images.
        unsqueezes: how many squeezes the body leaves undone at its end.
        shared: the model's resolved shared options (:class:`~jacfree.flows.options.SharedOptions`).
    """

    def __init__(
        self,
        body: Sequence[FlowLayer],
        shape: tuple[int, int, int],
        unsqueezes: int,
        shared: SharedOptions,
    ) -> None:
        layers = shared.layers([*body, *(Unsqueeze() for _ in range(unsqueezes))])
        super().__init__(layers, shape, validate=shared.validate, context_encoder=shared.encoder)

    @property
    def conv_layers(self) -> list[FlowLayer]:
        """The convolutions (the layers with a gradient mode), in data → latent order."""
        return self.gradient_layers()  # type: ignore[return-value]


def image_shape(
    shape: Sequence[int], model: str, blocks: int, squeezes: int
) -> tuple[int, int, int]:
    """``shape`` as ``(C, H, W)``, checked: the event shape of one image, whose height and width
    ``model`` (with ``blocks`` blocks) can squeeze by 2 ``squeezes`` times."""
    shape = check_image_shape(shape, model)
    _, H, W = shape
    f = 2**squeezes
    if H % f or W % f:
        raise ValueError(
            f"{model} with {blocks} blocks squeezes {squeezes} times, so the image height and "
            f"width must be divisible by {f}; got {H}×{W}. Use fewer blocks or crop/pad the "
            f"images to a multiple of {f}."
        )
    return shape

"""Model specs: a plain dict that names a model and its options, stored in every checkpoint so a
run can be rebuilt (``jacfree eval`` / ``jacfree sample``) without the code that created it.

A spec for the fully connected flow of Gresele et al.::

    {"kind": "fc", "data_shape": [1, 8, 8], "layers": 2, "alpha": 0.3,
     "gradient": "relative", "levels": 17, "logit_alpha": 1e-6}

``levels`` (quantised data) adds uniform dequantisation and the logit transform in front of the
flow, so its ``log_prob`` is a density on the data's original [0, levels)^D scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ._checks import check_choice
from .flows import Dequantize, FCFlow, FlowLayer, LogitTransform

ModelSpec = dict[str, Any]


def _preprocess(spec: ModelSpec) -> list[FlowLayer]:
    levels = spec.get("levels")
    if not levels:
        return []
    return [Dequantize(levels), LogitTransform(levels, spec.get("logit_alpha", 1e-6))]


def _build_fc(spec: ModelSpec) -> nn.Module:
    return FCFlow(
        math.prod(spec["data_shape"]),
        layers=spec.get("layers", 2),
        alpha=spec.get("alpha", 0.3),
        gradient=spec.get("gradient", "relative"),
        preprocess=_preprocess(spec),
        paper_bias_rule=spec.get("paper_bias_rule", False),
    )


BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {"fc": _build_fc}


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (untrained) model a spec describes."""
    check_choice(spec.get("kind", ""), "model kind", tuple(BUILDERS))
    return BUILDERS[spec["kind"]](spec)


def model_input(x: Tensor, model: nn.Module) -> Tensor:
    """Reshape data (samples first) to the model's event shape (fully connected flows flatten)."""
    return x.reshape(len(x), *model.event_shape)


def data_output(x: Tensor, spec: ModelSpec) -> Tensor:
    """Reshape model samples back to the data's per-sample shape (for image grids)."""
    return x.reshape(len(x), *spec["data_shape"])

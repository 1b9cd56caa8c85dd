"""The keywords every flow model shares (``jacfree.flows.options``): each model takes them with
the same meaning and defaults (λ's default is the model's), refuses unknown ones as Python does,
and keeps its own leading parameters in their positional order."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

import jacfree as jf
from jacfree.flows.options import FlowOptions, GradientFlowOptions

SHAPE = (1, 4, 4)

# every model, small, built with the given shared options
MODELS: dict[str, Callable[..., jf.Flow]] = {
    "FCFlow": lambda **kw: jf.FCFlow(4, layers=2, **kw),
    "CNNFlow": lambda **kw: jf.CNNFlow(SHAPE, blocks=2, layers_per_block=1, **kw),
    "GlowFlow": lambda **kw: jf.GlowFlow(SHAPE, blocks=2, steps=1, hidden=4, **kw),
    "NICE": lambda **kw: jf.NICE(4, couplings=2, hidden=4, hidden_layers=1, **kw),
}
GRADIENT_MODELS = ("FCFlow", "CNNFlow", "GlowFlow")


def test_the_typed_dicts_list_the_shared_keywords() -> None:
    shared = {"preprocess", "validate", "context_features", "context_classes", "context_hidden"}
    assert FlowOptions.__optional_keys__ == shared
    assert GradientFlowOptions.__optional_keys__ == shared | {"recon_weight"}


@pytest.mark.parametrize(
    ("model", "default"), [("FCFlow", 1.0), ("CNNFlow", 1.0), ("GlowFlow", 100.0)]
)
def test_recon_weight_default_is_the_models(model: str, default: float) -> None:
    assert MODELS[model](gradient="selfnorm").recon_weight == default
    flow = MODELS[model](gradient="selfnorm", recon_weight=3.0)
    lams = [float(m.reconstruction_weight()) for m in flow.gradient_layers()]
    assert lams and lams == [3.0] * len(lams)


@pytest.mark.parametrize("model", MODELS)
def test_shared_defaults(model: str) -> None:
    flow = MODELS[model]()
    assert flow.validate is True
    assert flow.context_encoder is None
    assert not any(isinstance(m, (jf.Dequantize, jf.LogitTransform)) for m in flow.layers)


@pytest.mark.parametrize("model", MODELS)
def test_shared_options_reach_the_flow(model: str) -> None:
    pre = [jf.Dequantize(256), jf.LogitTransform(256)]
    flow = MODELS[model](preprocess=pre, validate=False, context_classes=3, context_hidden=5)
    assert list(flow.layers[:2]) == pre  # the pre-processing layers come first
    assert flow.validate is False
    encoder = flow.context_encoder
    assert isinstance(encoder, jf.ContextEncoder)
    assert (encoder.classes, encoder.features, encoder.hidden) == (3, None, 5)
    x = torch.randint(0, 256, (3, *flow.event_shape)).float()
    assert flow.log_prob(x, context=torch.tensor([0, 1, 2])).shape == (3,)


@pytest.mark.parametrize("model", MODELS)
def test_context_errors_unchanged(model: str) -> None:
    with pytest.raises(ValueError, match="not both or neither"):
        MODELS[model](context_features=2, context_classes=3)
    with pytest.raises(ValueError, match="context_hidden"):
        MODELS[model](context_features=2, context_hidden=0)


@pytest.mark.parametrize("model", MODELS)
def test_unknown_keyword_is_a_type_error(model: str) -> None:
    with pytest.raises(TypeError, match=rf"^{model}\.__init__\(\) got an unexpected keyword "):
        MODELS[model](recon_wieght=1.0)


def test_nice_has_no_recon_weight() -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'recon_weight'"):
        MODELS["NICE"](recon_weight=1.0)


def test_leading_parameters_keep_their_positions() -> None:
    fc = jf.FCFlow(3, 1, 0.5, "exact")
    assert (fc.features, len(fc.affine_layers), fc.alpha, fc.gradient) == (3, 1, 0.5, "exact")
    cnn = jf.CNNFlow(SHAPE, 2, 1, "exact")
    assert (cnn.event_shape, cnn.blocks, cnn.layers_per_block, cnn.gradient) == (
        SHAPE,
        2,
        1,
        "exact",
    )
    glow = jf.GlowFlow(SHAPE, 2, 1, 4, "relative")
    assert (glow.blocks, glow.steps, glow.hidden, glow.gradient) == (2, 1, 4, "relative")
    nice = jf.NICE(4, 3, 5, 1, "tanh")
    assert len(nice.body) == 4 and nice.body[0].net[0].out_features == 5
    assert len(nice.body[0].net) == 3  # one hidden layer: Linear, activation, Linear
    with pytest.raises(TypeError):
        jf.FCFlow(3, 1, 0.5, "exact", False)  # paper_bias_rule stays keyword-only

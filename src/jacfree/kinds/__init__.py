"""The model kinds of ``jacfree train`` / ``eval`` / ``sample``: specs, the registry and every kind.

This package sits above the library layer: it builds models from the flows and score-matching
packages, which never import it.

* :mod:`.registry` — :class:`ModelKind`, :func:`register_model`, :func:`build_model` and the spec
  helpers (option types, pre-processing layers, reshaping data to a model's event shape);
  the fully connected flow ``fc`` of Gresele et al.;
* :mod:`.scorematching` — ``energy-mlp``, ``nice``, ``dkef``, ``ncsn`` and ``ebm``;
* :mod:`.flows` — the image flows ``cnn`` and ``glow``;
* :mod:`.latent` — the implicit-encoder ``vae-implicit`` and ``wae-implicit``;
* :mod:`.evaluate` — :func:`evaluate` (``jf.evaluate``): the NLL on the data's original scale,
  bits/dim and a kind's own metrics, as ``jacfree train`` / ``eval`` report them;
* :mod:`.adapters` — what the kind-agnostic reports need from a trained model of any kind:
  samples on the data's scale and a novelty score.

Importing the package registers every kind.
"""

# registration order is the listing order: fc (registry), the score-matching kinds, cnn, glow
from . import scorematching as scorematching

# isort: split
from . import flows as flows
from . import latent as latent
from .adapters import model_samples, model_score_fn
from .evaluate import Evaluation, evaluate, stat_table
from .registry import (
    FLOW_OPTIONS,
    MODELS,
    ModelKind,
    ModelSpec,
    Objective,
    OptionType,
    Plotter,
    TestMetrics,
    ValMetric,
    build_model,
    context_options,
    data_output,
    kinds,
    model_data,
    model_input,
    model_kind,
    option,
    option_type_name,
    parse_option,
    preprocess_layers,
    register_model,
)

__all__ = [
    "FLOW_OPTIONS",
    "MODELS",
    "Evaluation",
    "ModelKind",
    "ModelSpec",
    "Objective",
    "OptionType",
    "Plotter",
    "TestMetrics",
    "ValMetric",
    "build_model",
    "context_options",
    "data_output",
    "evaluate",
    "kinds",
    "model_data",
    "model_input",
    "model_kind",
    "model_samples",
    "model_score_fn",
    "option",
    "option_type_name",
    "parse_option",
    "preprocess_layers",
    "register_model",
    "stat_table",
]

"""Deprecated alias of :mod:`jacfree.kinds`, where model specs and kinds now live.

``from jacfree.models import build_model`` (and every other name below) keeps working; new code
imports from :mod:`jacfree.kinds`.
"""

import warnings

from .kinds import (
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
    model_input,
    model_kind,
    option_type_name,
    parse_option,
    preprocess_layers,
    register_model,
)

__all__ = [
    "FLOW_OPTIONS",
    "MODELS",
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
    "kinds",
    "model_input",
    "model_kind",
    "option_type_name",
    "parse_option",
    "preprocess_layers",
    "register_model",
]

warnings.warn(
    "jacfree.models is deprecated; import from jacfree.kinds instead.",
    DeprecationWarning,
    stacklevel=2,
)

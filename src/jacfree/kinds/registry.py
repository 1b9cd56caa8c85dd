"""Model specs and the registry of model kinds that ``jacfree train`` / ``eval`` / ``sample`` build.

A *spec* is a plain dict that names a model kind and its options; it is stored in every
checkpoint so that a run can be rebuilt without the code that created it. The fully connected
flow of Gresele et al.::

    {"kind": "fc", "data_shape": [1, 8, 8], "layers": 2, "alpha": 0.3,
     "gradient": "relative", "levels": 17, "logit_alpha": 1e-6}

``levels`` (quantised data) puts uniform dequantisation and the logit transform in front of a
flow, so that its ``log_prob`` is a density on the data's original [0, levels)^D scale.

Every kind is a :class:`ModelKind`: how to build the model from a spec, which training objective
and validation metric :func:`jacfree.fit` uses for it, and which extra test metrics ``jacfree
train`` / ``eval`` report. Register new kinds with :func:`register_model`; the CLI lists them.
"""

from __future__ import annotations

import json
import math
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union, get_args, get_origin

import torch
from torch import Tensor, nn

from .._checks import check_choice
from ..flows import Dequantize, FCFlow, FlowLayer, LogitTransform

ModelSpec = dict[str, Any]
Objective = Callable[[nn.Module, Tensor], Tensor]
ValMetric = Callable[[nn.Module, Tensor], float]
TestMetrics = Callable[[nn.Module, Tensor], dict[str, float]]
# plot(model, dataset, spec, out_dir) -> written paths
Plotter = Callable[[nn.Module, Any, "ModelSpec", Path], list[Path]]


@dataclass(frozen=True)
class ModelKind:
    """How ``jacfree train`` builds, trains and evaluates one kind of model.

    Attributes:
        build: ``build(spec) -> nn.Module`` (untrained).
        description: one line for ``jacfree train --help``.
        objective: ``objective(spec) -> (model, x) -> loss``; ``None`` trains on ``model.loss``.
        val_metric: ``val_metric(spec) -> (model, x) -> float`` (lower is better); ``None`` uses
            the exact NLL (``model.log_prob``).
        val_name: the validation metric's name in the metrics file (``val_<name>``), or a
            function of the spec that gives it (when the metric depends on the options).
        test_metrics: ``test_metrics(spec) -> (model, x) -> {name: value}``, reported besides the
            NLL (or instead of it, for models without a normalised density).
        has_density: whether the model has an exact, normalised ``log_prob`` (NLL is reported).
        plot: ``plot(model, dataset, spec, out_dir) -> paths`` writes the kind's own figures
            after training (``None``: sample grid for images, density for 2-D data, which
            needs ``model.sample`` and ``model.log_prob``).
        options: the spec keys the kind reads (besides ``kind``, ``data_shape`` and
            ``levels``), each with its type: ``int``, ``float``, ``bool``, ``str``, a tuple of
            allowed strings, or a union with ``None`` (see :func:`parse_option`). ``jacfree
            train`` refuses options a kind does not read and types ``--set`` values by it.
            ``None``: not declared (every key is accepted unchecked).
        sampler: how ``model.sample`` draws, for messages (``"through the exact inverse"``,
            ``"by Langevin dynamics"``, ...).
    """

    build: Callable[[ModelSpec], nn.Module]
    description: str = ""
    objective: Callable[[ModelSpec], Objective] | None = None
    val_metric: Callable[[ModelSpec], ValMetric] | None = None
    val_name: str | Callable[[ModelSpec], str] = "nll"
    test_metrics: Callable[[ModelSpec], TestMetrics] | None = None
    has_density: bool = True
    plot: Plotter | None = None
    options: Mapping[str, Any] | None = None
    sampler: str = "through the exact inverse"

    @classmethod
    def from_hooks(cls, hooks: Any) -> ModelKind:
        """The kind whose fields are the attributes of ``hooks`` by the same names (e.g. an
        object whose methods are ``build``, ``objective``, ...); a field it lacks keeps its
        default."""
        given = {f.name: getattr(hooks, f.name) for f in fields(cls) if hasattr(hooks, f.name)}
        return cls(**given)

    def validation_name(self, spec: ModelSpec) -> str:
        """The name of the validation metric for this spec (``val_<name>`` in the metrics)."""
        return self.val_name(spec) if callable(self.val_name) else self.val_name

    def fit_options(self, spec: ModelSpec) -> dict[str, Any]:
        """The arguments of :func:`jacfree.fit` that train and validate a model of this kind
        as ``jacfree train`` does: ``objective``, ``val_metric`` and ``val_name``
        (``fit(model, train, val, **kind.fit_options(spec))``)."""
        return {
            "objective": self.objective(spec) if self.objective else None,
            "val_metric": self.val_metric(spec) if self.val_metric else None,
            "val_name": self.validation_name(spec),
        }

    def run_tag(self, spec: ModelSpec) -> str:
        """How a run is labelled: the training objective if the spec names one, else the
        gradient mode."""
        return str(option(spec, "objective") or option(spec, "gradient"))


MODELS: dict[str, ModelKind] = {}


def kinds() -> dict[str, ModelKind]:
    """Every registered model kind, by name."""
    return MODELS


def register_model(name: str, kind: ModelKind) -> ModelKind:
    """Make ``name`` a model kind of ``jacfree train --model``."""
    if name in MODELS:
        raise ValueError(f"model kind {name!r} is already registered.")
    MODELS[name] = kind
    return kind


def model_kind(spec_or_name: ModelSpec | str) -> ModelKind:
    """The :class:`ModelKind` of a spec (or of a kind name)."""
    name = spec_or_name if isinstance(spec_or_name, str) else spec_or_name.get("kind", "")
    check_choice(name, "model kind", tuple(kinds()))
    return MODELS[name]


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the (untrained) model a spec describes."""
    return model_kind(spec).build(spec)


def option(spec: ModelSpec, key: str, default: Any = None, kind: type | None = None) -> Any:
    """The value of option ``key`` of a spec: ``default`` when the spec leaves it out or sets it
    to ``None``, else the value, converted by ``kind`` (``int``, ``float``, ``bool``) if given.

    The one way every model kind reads its options (required entries such as ``data_shape``
    are read as ``spec[key]``).
    """
    value = spec.get(key)
    if value is None:
        return default
    return kind(value) if kind is not None else value


def preprocess_layers(spec: ModelSpec) -> list[FlowLayer]:
    """Dequantisation and logit transform for quantised data (``spec["levels"]``), else none."""
    levels = option(spec, "levels")
    if not levels:
        return []
    return [Dequantize(levels), LogitTransform(levels, option(spec, "logit_alpha", 1e-6))]


OptionType = Any  # int, float, bool, str, tuple of allowed strings, or ``T | None``


def option_type_name(kind: OptionType) -> str:
    """How an option type reads in help texts and messages."""
    if isinstance(kind, tuple):
        return "|".join(kind)
    if get_origin(kind) in (Union, types.UnionType):
        names = ("none" if a is type(None) else option_type_name(a) for a in get_args(kind))
        return " or ".join(names)
    return getattr(kind, "__name__", str(kind))


def parse_option(name: str, value: Any, kind: OptionType) -> Any:
    """The value of option ``name`` (text from the command line, or already typed, e.g. from a
    TOML file) converted to its declared type, or a ``ValueError`` naming the expected type.

    Booleans read ``true/false``, ``yes/no``, ``on/off``, ``1/0`` (any case); ``none``/``null``
    is ``None`` for types that allow it; JSON-quoted strings are unquoted.
    """
    if isinstance(value, str):
        text = value.strip()
        try:
            decoded = json.loads(text)
        except json.JSONDecodeError:
            decoded = text
        if isinstance(decoded, str):
            text = decoded
    else:
        text, decoded = value, value
    if get_origin(kind) in (Union, types.UnionType):
        is_none = text is None or (isinstance(text, str) and text.lower() in ("none", "null"))
        if is_none and type(None) in get_args(kind):
            return None
        errors = []
        for alternative in get_args(kind):
            if alternative is type(None):
                continue
            try:
                return parse_option(name, value, alternative)
            except ValueError as err:
                errors.append(err)
        raise errors[0]
    want = option_type_name(kind)
    bad = ValueError(
        f"option {name} must be {want}, got {value!r}; e.g. --set {name}="
        + {"bool": "true", "int": "3", "float": "0.5"}.get(want, "VALUE")
    )
    if kind is bool:
        if isinstance(decoded, bool):
            return decoded
        words = {"true": True, "yes": True, "on": True, "1": True}
        words.update({"false": False, "no": False, "off": False, "0": False})
        if isinstance(text, str) and text.lower() in words:
            return words[text.lower()]
        raise bad
    if kind is int:
        if isinstance(decoded, bool) or not isinstance(decoded, int):
            raise bad
        return decoded
    if kind is float:
        if isinstance(decoded, bool) or not isinstance(decoded, int | float):
            raise bad
        if not math.isfinite(decoded):
            raise bad
        return float(decoded)
    if isinstance(kind, tuple):
        if text not in kind:
            raise ValueError(
                f"option {name} must be one of {', '.join(map(repr, kind))}, got {value!r}."
            )
        return text
    if kind is str:
        if not isinstance(text, str):
            return str(text)
        return text
    raise TypeError(f"unsupported option type {kind!r} for {name}.")


def context_options(spec: ModelSpec) -> dict[str, int]:
    """The context keywords of a conditional flow's spec (``context_features`` for a vector
    context, ``context_classes`` for class labels; ``context_hidden``), or none."""
    keys = ("context_features", "context_classes", "context_hidden")
    return {k: option(spec, k, kind=int) for k in keys if option(spec, k) is not None}


def model_input(x: Tensor, model: nn.Module) -> Tensor:
    """Reshape data (samples first) to the model's event shape (fully connected flows flatten)."""
    return x.reshape(len(x), *model.event_shape)


def model_data(ds: Any, split: str, model: nn.Module, spec: dict[str, Any]) -> Any:
    """A split as the model takes it: the data, or ``(x, context)`` pairs for a conditional
    flow (the class labels, or the context column taken out of the table)."""
    x = ds.split(split)
    if "context_column" in spec:
        k = spec["context_column"]
        rest = torch.cat([x[:, :k], x[:, k + 1 :]], 1)
        return model_input(rest, model), x[:, k : k + 1]
    if option(spec, "conditional") == "label":
        return model_input(x, model), ds.labels[split]
    return model_input(x, model)


def data_output(x: Tensor, spec: ModelSpec) -> Tensor:
    """Reshape model samples back to the data's per-sample shape (for image grids)."""
    return x.reshape(len(x), *spec["data_shape"])


def _build_fc(spec: ModelSpec) -> nn.Module:
    return FCFlow(
        math.prod(spec["data_shape"]),
        layers=option(spec, "layers", 2),
        alpha=option(spec, "alpha", 0.3),
        gradient=option(spec, "gradient", "relative"),
        preprocess=preprocess_layers(spec),
        paper_bias_rule=option(spec, "paper_bias_rule", False),
        recon_weight=option(spec, "recon_weight", 1.0),
        **context_options(spec),
    )


# options of every flow with a gradient mode on quantised data
FLOW_OPTIONS: dict[str, OptionType] = {
    "gradient": ("exact", "relative", "selfnorm"),
    "logit_alpha": float,
    "recon_weight": float,
}

register_model(
    "fc",
    ModelKind(
        _build_fc,
        "fully connected flow of Gresele et al.: --layers square affine layers, smooth leaky "
        "ReLU (--alpha) between them",
        options={**FLOW_OPTIONS, "layers": int, "alpha": float, "paper_bias_rule": bool},
    ),
)

"""What the score-matching model kinds share: :class:`SMKind`, the option groups, the objective
settings of a spec and :func:`energy_loss`.

A kind is a subclass of :class:`SMKind`: its attributes are the kind's name, objectives,
options (with their defaults) and how it samples; its methods are the hooks of
:class:`~jacfree.kinds.registry.ModelKind` (``build``, ``objective``, ``val_metric``,
``val_name``, ``test_metrics``, ``plot``). :func:`register` turns one into a registered
:class:`~jacfree.kinds.registry.ModelKind`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from ... import sample_noise
from ...scorematching.evaluate import Estimate, evaluate_per_sample, exact_sm_loss
from ...scorematching.objectives import SETTING_NAMES, Settings, objective, objective_names
from ..registry import (
    ModelKind,
    ModelSpec,
    Objective,
    OptionType,
    TestMetrics,
    ValMetric,
    option,
    register_model,
)

ENERGY_OBJECTIVES = ("fd_ssm", "ssm", "ssm_vr", "sm", "dsm", "fd_dsm")
MULTISCALE_OBJECTIVES = tuple(n for n in objective_names() if "sigmas" in objective(n).reads)
SMALL_D = 100  # exact SM (d Hessian-vector products per row) is cheap up to this dimension

# -- option groups (``jacfree train`` refuses options a kind does not read) ---------------------

# the objective settings a spec may set (:class:`Settings` fields by the same name)
SETTING_OPTIONS: dict[str, OptionType] = {
    "eps": float,
    "sigma": float,
    "projection": ("rademacher", "gaussian"),
    "n_particles": int,
    "parallel": bool,
}
# every score-matching kind: the objective, its settings and the evaluation sizes
SM_OPTIONS: dict[str, OptionType] = {
    "objective": str,
    **SETTING_OPTIONS,
    "exact_sm_n": int | None,
    "val_metric": str,
    "val_n": int,
}
# the networks: width, depth (what a layer is depends on the kind), nonlinearity
NETWORK_OPTIONS: dict[str, OptionType] = {"hidden": int, "layers": int, "activation": str}
# the range of noise levels of the noise-conditional and multiscale kinds
NOISE_RANGE: dict[str, OptionType] = {"sigma_min": float, "sigma_max": float}
# the multiscale DSM settings besides the range
MDSM_OPTIONS: dict[str, OptionType] = {"sigma0": float, "random_sigmas": bool}


def without(options: dict[str, OptionType], *keys: str) -> dict[str, OptionType]:
    """``options`` less ``keys`` (for a kind that does not read them)."""
    return {k: v for k, v in options.items() if k not in keys}


def _converter(kind: OptionType) -> Callable[[Any], Any] | None:
    """How a spec value of an option of type ``kind`` is converted when read (numbers and
    booleans; strings, choices and optional values are taken as they are)."""
    return kind if kind in (int, float, bool) else None


# -- objective settings -------------------------------------------------------------------------


def energy_loss(
    name: str, **settings: Any
) -> Callable[[Callable[[Tensor], Tensor], Tensor], Tensor]:
    """The score-matching loss ``loss(energy, x) -> scalar`` called ``name`` for an energy model.

    ``"sm"`` exact, ``"ssm"`` / ``"ssm_vr"`` sliced (``projection``, ``n_particles``),
    ``"fd_ssm"`` finite differences (``eps``, ``parallel``), ``"dsm"`` / ``"fd_dsm"`` denoising
    (``sigma``; ``eps`` for the FD form), ``"mdsm"`` / ``"fd_mdsm"`` multiscale denoising
    (``sigmas``, ``sigma0``, ``random_sigmas``). All SM forms target
    ``J = E[tr ∇² log p̃ + ½‖∇ log p̃‖²]``; the DSM forms ``½E‖s(x̃) + (x̃ − x)/σ²‖²`` (see
    :mod:`jacfree.scorematching.losses`). The energy objectives of
    :mod:`jacfree.scorematching.objectives`, bound to these settings.

    Keywords (the fields of :class:`~jacfree.scorematching.objectives.Settings`, with their
    defaults): ``eps=0.1``, ``sigma=0.1``, ``projection="rademacher"``, ``n_particles=1``,
    ``parallel=True``, ``sigmas=(0.05, 1.2)``, ``sigma0=0.1``, ``random_sigmas=False``; any other
    keyword is a ``TypeError``.
    """
    unknown = sorted(set(settings) - set(SETTING_NAMES))
    if unknown:
        raise TypeError(
            f"energy_loss() got unknown keywords {unknown}; the settings are "
            f"{', '.join(SETTING_NAMES)}."
        )
    return objective(name, "energy").bind(Settings(**settings))


def dim(spec: ModelSpec) -> int:
    """The data dimension ``D`` of a spec."""
    return math.prod(spec["data_shape"])


def unit_dequantise(levels: int | None) -> Callable[[Tensor], Tensor]:
    """Quantised data to ``(x + u)/levels ∈ [0, 1)`` (fresh noise per call), else unchanged."""
    if not levels:
        return lambda x: x
    return lambda x: sample_noise.dequantise(x, levels)  # per sample in fit


def report(prefix: str, est: Estimate) -> dict[str, float]:
    """An estimate as test metrics: ``prefix``, ``prefix_stderr``, ``prefix_n``."""
    return {prefix: est.mean, f"{prefix}_stderr": est.stderr, f"{prefix}_n": est.n}


# a per-sample loss of a model: ``per_sample(model)(batch) -> (B,)``
PerSample = Callable[[nn.Module], Callable[[Tensor], Tensor]]


# -- the kinds ----------------------------------------------------------------------------------


class SMKind(ABC):
    """A score-matching model kind of ``jacfree train``.

    Attributes (set by each kind):
        name: the kind's name (``--model``).
        objectives: the training objectives it takes (``--objective``), the default first.
        summary, flags: what the model is and the command-line options worth naming; the
            :attr:`description` reads ``"{summary}: --objective A|B|..., {flags}"``.
        has_density, sampler: as in :class:`~jacfree.kinds.registry.ModelKind`.
        options: the spec options it reads, with their types.
        defaults: the static defaults of those options (read by :meth:`get`).
        exact_sm_rows: test rows of the exact SM loss when ``D > 100`` (all when ``D ≤ 100``);
            ``None``: all rows.
        setting_defaults: the kind's defaults of the objective :class:`Settings` (where they
            differ from the FD-SM paper's DKEF / NICE / NCSN defaults).

    Methods: the :class:`~jacfree.kinds.registry.ModelKind` hooks ``build``, ``objective``,
    ``val_metric``, ``val_name`` (a method or a string), ``test_metrics`` and ``plot`` (left
    out: the default figures).
    The default :meth:`objective` applies the named energy objective to :meth:`energy` of the
    model, on the data :meth:`energy` transforms.
    """

    name: ClassVar[str]
    objectives: ClassVar[tuple[str, ...]] = ENERGY_OBJECTIVES
    summary: ClassVar[str]
    flags: ClassVar[str]
    has_density: ClassVar[bool] = False
    sampler: ClassVar[str] = "by Langevin dynamics"
    options: ClassVar[dict[str, OptionType]]
    defaults: ClassVar[dict[str, Any]] = {"val_n": 2000}
    exact_sm_rows: ClassVar[int | None] = 100
    setting_defaults: ClassVar[dict[str, Any]] = {}

    @property
    def description(self) -> str:
        """One line for ``jacfree train --help`` and ``jacfree models``."""
        return f"{self.summary}: --objective {'|'.join(self.objectives)}, {self.flags}"

    def get(self, spec: ModelSpec, key: str) -> Any:
        """Option ``key`` of a spec, else its default, converted to its declared type."""
        kind = self.options.get(key)
        return option(spec, key, self.defaults.get(key), _converter(kind))

    def read(self, spec: ModelSpec, *keys: str) -> dict[str, Any]:
        """Options ``keys`` of a spec by :meth:`get`, as keywords (of a model that takes them
        under the same names)."""
        return {k: self.get(spec, k) for k in keys}

    def objective_name(self, spec: ModelSpec) -> str:
        """``spec["objective"]`` (default: the kind's first objective), checked against the
        kind's choices; the default is written back into the spec so that checkpoints record
        it."""
        choices = self.objectives
        name = option(spec, "objective") or choices[0]
        if name not in choices:
            raise ValueError(
                f"unknown objective {name!r} for model kind {self.name!r}; choose one of "
                f"{', '.join(map(repr, choices))} (--objective NAME)."
            )
        spec["objective"] = name
        return name

    def settings(self, spec: ModelSpec) -> Settings:
        """The objective settings of a spec: its options, else :attr:`setting_defaults`, else
        the :class:`~jacfree.scorematching.objectives.Settings` defaults."""
        types = {**SETTING_OPTIONS, **MDSM_OPTIONS}
        given = {k: option(spec, k, kind=_converter(t)) for k, t in types.items()}
        given = {k: v for k, v in given.items() if v is not None}
        return Settings(**{**self.setting_defaults, **given})

    def energy(
        self, model: nn.Module, spec: ModelSpec
    ) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
        """``(energy, transform)``: the energy that score matching fits and the map of a data
        batch to its input (default: the model itself on [0, 1)-dequantised data)."""
        return model, unit_dequantise(option(spec, "levels"))

    def loss(self, spec: ModelSpec) -> Callable[[Callable[..., Tensor], Tensor], Tensor]:
        """The spec's energy objective bound to its settings: ``loss(energy, x) -> scalar``."""
        return objective(self.objective_name(spec)).bind(self.settings(spec))

    def objective(self, spec: ModelSpec) -> Objective | None:
        """The training loss ``(model, x) -> scalar``."""
        loss = self.loss(spec)

        def train_loss(model: nn.Module, x: Tensor) -> Tensor:
            energy, transform = self.energy(model, spec)
            return loss(energy, transform(x))

        return train_loss

    def exact_sm(self, model: nn.Module, spec: ModelSpec, x: Tensor, **kw: Any) -> Estimate:
        """The exact SM loss of :meth:`energy` over ``x`` (``kw``: of
        :func:`~jacfree.scorematching.evaluate.exact_sm_loss`)."""
        energy, transform = self.energy(model, spec)
        return exact_sm_loss(energy, x, transform=transform, **kw)

    def exact_sm_n(self, spec: ModelSpec) -> int | None:
        """Test rows of the exact SM loss: ``exact_sm_n``, else all when ``D ≤ 100``, else
        :attr:`exact_sm_rows`."""
        n = option(spec, "exact_sm_n")
        if n is not None:
            return int(n)
        return None if dim(spec) <= SMALL_D else self.exact_sm_rows

    def val_choice(self, spec: ModelSpec, allowed: tuple[str, ...], default: str) -> str:
        """The ``val_metric`` option (``default`` when left out), one of ``allowed``."""
        choice = option(spec, "val_metric", default)
        if choice not in allowed:
            raise ValueError(
                f"unknown val_metric {choice!r}; choose one of {', '.join(map(repr, allowed))}."
            )
        return choice

    def val_mean(self, spec: ModelSpec, per_sample: PerSample) -> ValMetric:
        """The validation metric: the mean of ``per_sample(model)`` over the first ``val_n``
        rows."""
        n = self.get(spec, "val_n")
        return lambda model, x: evaluate_per_sample(per_sample(model), x, max_n=n, model=model).mean

    def objective_metric(self, spec: ModelSpec) -> ValMetric:
        """Validation by the training objective itself (the batch's value for each row)."""
        loss = self.objective(spec)
        assert loss is not None
        return self.val_mean(spec, lambda model: lambda b: loss(model, b).reshape(1).expand(len(b)))

    def require_images(self, spec: ModelSpec, example: str) -> None:
        """Refuse data that are not images ``(C, H, W)`` (``example``: an image dataset)."""
        if len(spec["data_shape"]) != 3:
            raise ValueError(
                f"{self.name} models images (data of shape C x H x W, e.g. --data {example}); "
                "use energy-mlp for vectors."
            )

    @abstractmethod
    def build(self, spec: ModelSpec) -> nn.Module:
        """The untrained model of a spec."""

    @abstractmethod
    def test_metrics(self, spec: ModelSpec) -> TestMetrics:
        """``(model, x) -> {name: value}``, reported besides (or instead of) the NLL."""


def register(cls: type[SMKind]) -> ModelKind:
    """Register the kind ``cls`` declares as a model kind of ``jacfree train --model``."""
    kind = cls()
    return register_model(kind.name, ModelKind.from_hooks(kind))

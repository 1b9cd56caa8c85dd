r"""The score-matching objectives by name: one registry for ``jacfree train``, ``bench`` and tests.

Every objective of :mod:`jacfree.scorematching.losses` appears here once, as an
:class:`Objective`: its name (what ``--objective`` takes), a display label, the model type it
trains (``"energy"``: ``E(x) -> (B,)`` with ``log p̃ = −E``; ``"score"``: a score network
``s(x) -> x.shape``), the estimator function, which :class:`Settings` it reads and, for a
finite-difference form, the autograd objective it replaces (its *baseline*: the same target,
computed with a gradient of a gradient):

=========  =====  ==================  ========  =====================================
name       model  estimator           baseline  settings read
=========  =====  ==================  ========  =====================================
sm         both   exact_sm(_scorenet)           —
ssm        both   ssm(_scorenet)                projection, n_particles
ssm_vr     both   ssm(_scorenet), vr            projection, n_particles
fd_ssm     energy fd_ssm              ssm       eps, n_particles, parallel
fd_ssm_vr  score  fd_ssm_vr           ssm_vr    eps, n_particles, parallel
dsm        both   dsm(_scorenet)                sigma
fd_dsm     energy fd_dsm              dsm       sigma, eps, n_particles, parallel
mdsm       energy mdsm                          sigmas, sigma0, random_sigmas
fd_mdsm    energy fd_mdsm             mdsm      sigmas, sigma0, random_sigmas, eps,
                                                n_particles, parallel
=========  =====  ==================  ========  =====================================

The annealed (σ²-weighted, noise-conditional) forms of NCSN are the ``"score"`` objectives
applied at per-sample noise levels: :func:`jacfree.scorematching.ncsn.annealed_loss`.

Example:
    >>> import torch, jacfree as jf
    >>> from jacfree.scorematching.objectives import Settings, objective
    >>> fd = objective("fd_ssm")
    >>> fd.baseline, fd.fd, fd.reads
    ('ssm', True, ('eps', 'n_particles', 'parallel'))
    >>> energy = jf.MLPEnergy(3, hidden=(8,))
    >>> loss = fd.bind(Settings(eps=0.05))
    >>> loss(energy, torch.randn(16, 3)).shape
    torch.Size([])
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal

import torch
from torch import Tensor

from . import losses as sm
from .losses import SMTerms

__all__ = [
    "LABELS",
    "SM_OBJECTIVES",
    "ModelType",
    "Objective",
    "Settings",
    "objective",
    "objective_names",
]

ModelType = Literal["energy", "score"]


@dataclass(frozen=True)
class Settings:
    """The options an objective may read (each :class:`Objective` lists the ones it does).

    Defaults are those of the FD-SM paper's DKEF / NICE / NCSN runs (Pang et al., NeurIPS 2020);
    its deep energy models use ``eps=0.05``.
    """

    eps: float = 0.1  # FD step: L2 norm of the direction
    sigma: float = 0.1  # DSM noise level
    projection: str = "rademacher"  # SSM projection vectors
    n_particles: int = 1  # projections / directions per sample
    parallel: bool = True  # FD stencil points in one concatenated forward pass
    sigmas: tuple[float, float] = (0.05, 1.2)  # MDSM per-sample noise range
    sigma0: float = 0.1  # MDSM target noise level
    random_sigmas: bool = False  # MDSM: σ_b ~ U(lo, hi) instead of the batch linspace


SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(Settings))


@dataclass(frozen=True)
class Objective:
    """One score-matching objective: ``objective(model, x, settings) -> scalar tensor``.

    Attributes:
        name: the objective's name (``--objective``); an energy and a score-network objective
            may share it (``"ssm"`` is sliced SM for both).
        label: display name (tables and plots).
        model: ``"energy"`` or ``"score"``, the model the estimator takes.
        estimator: the :mod:`jacfree.sm <jacfree.scorematching.losses>` function.
        reads: the :class:`Settings` fields passed to it as keywords.
        baseline: for a finite-difference form, the name of the autograd objective of the same
            target; ``None`` for autograd objectives.
        vr: the variance-reduced sliced form (passed as ``vr=True``).
        random: whether it draws random numbers (projections, directions, noise); it then
            takes a ``generator``.
    """

    name: str
    label: str
    model: ModelType
    estimator: Callable[..., Tensor | SMTerms]
    reads: tuple[str, ...] = ()
    baseline: str | None = None
    vr: bool = False
    random: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.reads) - set(SETTING_NAMES)
        if unknown:
            raise ValueError(f"{self.name}: unknown settings {sorted(unknown)}")

    @property
    def fd(self) -> bool:
        """A finite-difference form: no gradient with respect to ``x``, no double backward."""
        return self.baseline is not None

    def kwargs(self, settings: Settings | None = None) -> dict[str, Any]:
        """The keyword arguments this objective passes its estimator for ``settings``."""
        s = Settings() if settings is None else settings
        out: dict[str, Any] = {"vr": True} if self.vr else {}
        out.update((k, getattr(s, k)) for k in self.reads)
        return out

    def __call__(
        self,
        model: Callable[..., Tensor],
        x: Tensor,
        settings: Settings | None = None,
        *,
        generator: torch.Generator | None = None,
        **overrides: Any,
    ) -> Tensor:
        """The loss of ``model`` on ``x`` (``overrides``: further estimator keywords, e.g.
        ``reduction`` or ``cond``; they win over ``settings``)."""
        kw = {**self.kwargs(settings), **overrides}
        if self.random and generator is not None:
            kw["generator"] = generator
        return self.estimator(model, x, **kw)  # type: ignore[return-value]

    def bind(
        self, settings: Settings | None = None
    ) -> Callable[[Callable[..., Tensor], Tensor], Tensor]:
        """``loss(model, x) -> scalar`` with the settings fixed (keywords built once)."""
        estimator, kw = self.estimator, self.kwargs(settings)
        return lambda model, x: estimator(model, x, **kw)  # type: ignore[return-value]


_FD = ("eps", "n_particles", "parallel")
_SLICED = ("projection", "n_particles")
_MULTISCALE = ("sigmas", "sigma0", "random_sigmas")

#: every score-matching objective, energy forms first
SM_OBJECTIVES: tuple[Objective, ...] = (
    Objective("sm", "SM", "energy", sm.exact_sm, random=False),
    Objective("ssm", "SSM", "energy", sm.ssm, _SLICED),
    Objective("ssm_vr", "SSM-VR", "energy", sm.ssm, _SLICED, vr=True),
    Objective("fd_ssm", "FD-SSM", "energy", sm.fd_ssm, _FD, baseline="ssm"),
    Objective("dsm", "DSM", "energy", sm.dsm, ("sigma",)),
    Objective("fd_dsm", "FD-DSM", "energy", sm.fd_dsm, ("sigma", *_FD), baseline="dsm"),
    Objective("mdsm", "MDSM", "energy", sm.mdsm, _MULTISCALE),
    Objective("fd_mdsm", "FD-MDSM", "energy", sm.fd_mdsm, (*_MULTISCALE, *_FD), baseline="mdsm"),
    Objective("sm", "SM", "score", sm.exact_sm_scorenet, random=False),
    Objective("ssm", "SSM", "score", sm.ssm_scorenet, _SLICED),
    Objective("ssm_vr", "SSM-VR", "score", sm.ssm_scorenet, _SLICED, vr=True),
    Objective("fd_ssm_vr", "FD-SSM-VR", "score", sm.fd_ssm_vr, _FD, baseline="ssm_vr"),
    Objective("dsm", "DSM", "score", sm.dsm_scorenet, ("sigma",)),
)
_BY_KEY: dict[tuple[str, str], Objective] = {(o.model, o.name): o for o in SM_OBJECTIVES}

#: objective name -> display label
LABELS: dict[str, str] = {o.name: o.label for o in SM_OBJECTIVES}


def objective_names(model: ModelType = "energy") -> tuple[str, ...]:
    """The names of the objectives for ``model`` (``"energy"`` or ``"score"``), registry order."""
    return tuple(o.name for o in SM_OBJECTIVES if o.model == model)


def objective(name: str, model: ModelType = "energy") -> Objective:
    """The objective called ``name`` for a ``model`` (``"energy"`` or ``"score"``)."""
    found = _BY_KEY.get((model, name))
    if found is None:
        if model not in ("energy", "score"):
            raise ValueError(f"unknown model type {model!r}; choose 'energy' or 'score'.")
        choices = ", ".join(map(repr, objective_names(model)))
        raise ValueError(f"unknown {model} objective {name!r}; choose one of {choices}.")
    return found

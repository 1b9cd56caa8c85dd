r"""Score matching without Hessians: finite-difference score matching (Pang et al., NeurIPS 2020).

* :mod:`.fd` — central finite-difference stencils of any order, sphere directions and batched
  directional derivatives (exposed as ``jacfree.fd``);
* :mod:`.losses` — every score-matching estimator (exact, sliced, denoising and their
  finite-difference forms) under one sign convention, ``log p̃ = −E`` (exposed as ``jacfree.sm``);
* :mod:`.objectives` — the registry of those estimators by objective name (model type, settings
  read, autograd baseline of each FD form), read by ``jacfree train`` and ``jacfree bench sm``;
* :mod:`.convention` — the single helper that applies that sign;
* models: :mod:`.energy` (:class:`MLPEnergy`), :mod:`.ebm` (:class:`ResEBM`, the residual
  deep EBM with a quadratic head, and its reference annealed Langevin sampler), :mod:`.dkef`
  (:class:`DKEF`, deep kernel exponential family with its closed-form α), :mod:`.ncsn`
  (:class:`NCSN`, a small noise-conditional score network) and NICE
  (:class:`jacfree.flows.nice.NICE`, re-exported);
* :mod:`.sampling` — Langevin and annealed Langevin dynamics;
* :mod:`.evaluate` — the exact SM loss over a dataset (mean ± standard error);
* :mod:`.ood` — OOD detection (AUROC, ROC curves) with an energy or ``−log p``;
* :mod:`.frechet` — the classifier-feature Fréchet distance of image samples.

The ``energy-mlp``, ``nice``, ``dkef``, ``ncsn`` and ``ebm`` kinds of ``jacfree train`` live
above this package, in :mod:`jacfree.kinds.scorematching`.
"""

from ..flows.nice import NICE, AdditiveCoupling, DiagonalScaling
from . import fd, losses, objectives
from .convention import log_density, score
from .dkef import DKEF, FeatureNet, LogPartition, alpha_normal_equations, solve_alpha
from .ebm import ResEBM, annealed_langevin_energy, temperature_schedule
from .energy import MLPEnergy
from .evaluate import Estimate, evaluate_per_sample, exact_sm_loss, exact_sm_loss_scorenet
from .fd import (
    Stencil,
    central_stencil,
    directional_derivative,
    directional_derivatives,
    sphere_directions,
    stencil,
)
from .losses import (
    PROJECTIONS,
    SMTerms,
    dsm,
    dsm_scorenet,
    exact_sm,
    exact_sm_scorenet,
    fd_dsm,
    fd_mdsm,
    fd_ssm,
    fd_ssm_vr,
    jacobian_trace,
    mdsm,
    mdsm_sigmas,
    random_projections,
    ssm,
    ssm_scorenet,
)
from .ncsn import NCSN, annealed_loss, geometric_sigmas
from .sampling import annealed_langevin, energy_score, langevin

__all__ = [
    "DKEF",
    "NCSN",
    "NICE",
    "PROJECTIONS",
    "AdditiveCoupling",
    "DiagonalScaling",
    "Estimate",
    "FeatureNet",
    "LogPartition",
    "MLPEnergy",
    "ResEBM",
    "SMTerms",
    "Stencil",
    "alpha_normal_equations",
    "annealed_langevin",
    "annealed_langevin_energy",
    "annealed_loss",
    "central_stencil",
    "directional_derivative",
    "directional_derivatives",
    "dsm",
    "dsm_scorenet",
    "energy_score",
    "evaluate_per_sample",
    "exact_sm",
    "exact_sm_loss",
    "exact_sm_loss_scorenet",
    "exact_sm_scorenet",
    "fd",
    "fd_dsm",
    "fd_mdsm",
    "fd_ssm",
    "fd_ssm_vr",
    "geometric_sigmas",
    "jacobian_trace",
    "langevin",
    "log_density",
    "losses",
    "mdsm",
    "mdsm_sigmas",
    "objectives",
    "random_projections",
    "score",
    "solve_alpha",
    "sphere_directions",
    "ssm",
    "ssm_scorenet",
    "stencil",
    "temperature_schedule",
]

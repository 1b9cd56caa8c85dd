r"""Score matching without Hessians: finite-difference score matching (Pang et al., NeurIPS 2020).

* :mod:`.fd` — central finite-difference stencils of any order, sphere directions and batched
  directional derivatives (exposed as ``jacfree.fd``);
* :mod:`.losses` — every score-matching estimator (exact, sliced, denoising and their
  finite-difference forms) under one sign convention, ``log p̃ = −E`` (exposed as ``jacfree.sm``);
* :mod:`.convention` — the single helper that applies that sign.
"""

from . import fd, losses
from .convention import log_density, score
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
    fd_ssm,
    fd_ssm_vr,
    jacobian_trace,
    random_projections,
    ssm,
    ssm_scorenet,
)

__all__ = [
    "PROJECTIONS",
    "SMTerms",
    "Stencil",
    "central_stencil",
    "directional_derivative",
    "directional_derivatives",
    "dsm",
    "dsm_scorenet",
    "exact_sm",
    "exact_sm_scorenet",
    "fd",
    "fd_dsm",
    "fd_ssm",
    "fd_ssm_vr",
    "jacobian_trace",
    "log_density",
    "losses",
    "random_projections",
    "score",
    "sphere_directions",
    "ssm",
    "ssm_scorenet",
    "stencil",
]

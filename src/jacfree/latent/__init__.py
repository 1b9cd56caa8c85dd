"""Latent-variable models trained without a density for the encoder, and their likelihood.

* :mod:`.implicit` — VAE and WAE with implicit encoders ``z = G(x, ξ)``, whose entropy gradient
  comes from a score network fitted each step by ``ssm_vr`` or ``fd_ssm_vr`` (Pang et al. 2020);
* :mod:`.ais` — annealed importance sampling of ``log p(x)`` with HMC transitions.

Their ``jacfree train`` kinds, ``vae-implicit`` and ``wae-implicit``, live in
:mod:`jacfree.kinds.latent`.
"""

from .ais import AISResult, ais_log_marginal, sigmoid_schedule
from .implicit import (
    SCORE_OBJECTIVES,
    BernoulliDecoder,
    ImplicitEncoder,
    ImplicitLatentModel,
    LatentScoreNet,
    binarize,
)

__all__ = [
    "SCORE_OBJECTIVES",
    "AISResult",
    "BernoulliDecoder",
    "ImplicitEncoder",
    "ImplicitLatentModel",
    "LatentScoreNet",
    "ais_log_marginal",
    "binarize",
    "sigmoid_schedule",
]

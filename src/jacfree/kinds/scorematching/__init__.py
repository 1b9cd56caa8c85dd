r"""Score-matching model kinds of ``jacfree train``: ``energy-mlp``, ``nice``, ``dkef``, ``ncsn``.

Each kind builds its model from a spec (see :mod:`jacfree.kinds.registry`) and trains it with the
objective named by ``spec["objective"]`` (``--objective``):

=============  ==============================================  ================  ==============
kind           objectives (default first)                      validation        test metrics
=============  ==============================================  ================  ==============
energy-mlp     fd_ssm, ssm, ssm_vr, sm, dsm, fd_dsm            exact SM (d≤100)  exact SM; grid
                                                               else objective    NLL in 2-D
nice           fd_ssm, mle, ssm, ssm_vr, sm, dsm, fd_dsm       NLL (mle), exact  NLL, bits/dim,
                                                               SM (d≤100), else  exact SM
                                                               objective
dkef           fd_ssm, ssm, ssm_vr, sm, dsm, fd_dsm            exact SM          NLL (log Z by
                                                                                 IS), exact SM
ncsn           fd_ssm_vr, dsm, ssm, ssm_vr                     annealed DSM      annealed DSM,
                                                                                 annealed exact
                                                                                 SM
ebm            fd_mdsm, mdsm, fd_ssm, ssm                      MDSM (mdsm        exact SM, MDSM
                                                               objectives), else
                                                               the objective
=============  ==============================================  ================  ==============

Spec options read here (``--eps``, ``--sigma``, ``--hidden``, ``--layers``, ``--set KEY=VALUE``),
with the FD-SM paper's defaults (Pang et al., NeurIPS 2020):

* every kind: ``objective``; ``eps`` (0.1, the FD step: L2 norm of the direction); ``sigma``
  (0.1, DSM noise); ``projection`` (``"rademacher"``; ``"gaussian"`` for ncsn) and
  ``n_particles`` (1) of SSM; ``parallel`` (true: one concatenated FD batch); ``exact_sm_n``
  (rows of the test set for the exact SM loss; all when ``d ≤ 100``, else 100 — 16 for ncsn);
  ``val_metric`` (``"exact_sm"``, ``"objective"`` or, for nice, ``"nll"``).
* energy-mlp: ``hidden`` (128), ``layers`` (3 hidden layers), ``activation`` (softplus),
  ``base_std`` (none).
* nice: ``layers`` = couplings (4), ``hidden`` (8·D, between 64 and 1000), ``hidden_layers``
  (4), ``activation``.
* dkef: ``hidden`` (30), ``n_inducing`` (200), ``n_kernels`` (3), ``alpha_solve`` (sliced),
  ``alpha_points`` (4000), ``logz_samples`` (10⁶), ``q0_std`` (2), ``log_lambda`` (−2).
* ebm (:class:`~jacfree.scorematching.ebm.ResEBM`): ``hidden`` = base width (16; the paper
  128), ``layers`` = extra residual blocks per stage (1; the paper 2), ``activation``
  (nsoftplus), ``eps`` (0.05, the paper's deep-EBM FD step), ``sigma_min`` / ``sigma_max``
  (0.05 / 1.2, the per-sample MDSM noise range), ``sigma0`` (0.1), ``random_sigmas``
  (false: batch linspace),
  ``projection`` (gaussian); samples: ``sample_step`` (0.02), ``t_max`` (100), ``t_min`` (1),
  ``sample_hold`` / ``sample_anneal`` / ``sample_tail`` (500 / 2000 / 200 Langevin steps, the
  reference schedule), ``n_samples`` (64); ``test_n`` (test rows of the MDSM test metric; all).
* ncsn: ``hidden`` = channels (16), ``sigma_max`` (1), ``sigma_min`` (0.01), ``n_levels`` (10),
  ``activation`` (elu), ``sample_steps`` (Langevin steps per level of the plot, 20),
  ``step_lr`` (2e-5).

Quantised data (``spec["levels"]``): nice puts :func:`jacfree.kinds.preprocess_layers`
(dequantisation + logit) in front of the flow, so its NLL is on the original [0, levels)^D scale
like every flow's, and score matching runs in the logit space after them; energy-mlp and ncsn
dequantise to ``(x + u)/levels ∈ [0, 1)``.

Each kind is a subclass of :class:`~.base.SMKind` (its name, objectives, options with their
defaults, and the :class:`~jacfree.kinds.registry.ModelKind` hooks as methods), one module per
family: :mod:`.energy` (``energy-mlp``, ``ebm``), :mod:`.nice`, :mod:`.dkef`, :mod:`.ncsn`;
:data:`KINDS` registers them in this order.
"""

from __future__ import annotations

from .base import ENERGY_OBJECTIVES, SMKind, energy_loss, register
from .dkef import DKEFKind
from .energy import EBMKind, EnergyMLPKind, ebm_samples, grid_log_partition
from .ncsn import NCSNKind
from .nice import NICEKind

__all__ = [
    "ENERGY_OBJECTIVES",
    "KINDS",
    "OBJECTIVES",
    "SMKind",
    "ebm_samples",
    "energy_loss",
    "grid_log_partition",
]

# the score-matching kinds, in the order `jacfree models` lists them
KINDS: tuple[type[SMKind], ...] = (EnergyMLPKind, NICEKind, DKEFKind, NCSNKind, EBMKind)
for _kind in KINDS:
    register(_kind)
# each kind's training objectives (``--objective``), the default first
OBJECTIVES: dict[str, tuple[str, ...]] = {k.name: k.objectives for k in KINDS}

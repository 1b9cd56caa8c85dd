r"""VAE and WAE with implicit encoders, their entropy gradient from a learned score network.

The latent-variable experiments of the finite-difference score-matching paper (Pang et al.,
NeurIPS 2020, following Song et al. 2019). The encoder is **implicit**: ``z = G_θ(x, ξ)`` with
``ξ ~ N(0, I)`` fed to an MLP together with ``x``, so ``q_θ(z|x)`` can be sampled but has no
density. The decoder ``p_θ(x|z)`` is Bernoulli (logits of every pixel) and the prior
``p(z) = N(0, I)``.

**VAE.** The negative ELBO ``−E_q[log p(x|z) + log p(z)] − H[q(·|x)]`` needs the gradient of the
entropy, ``∇_θ H = −E_ξ[(∇_z log q(z|x))ᵀ ∂z/∂θ]`` (the score-function term has mean zero).
A conditional score network ``s_φ(z, x) ≈ ∇_z log q(z|x)`` supplies it, so the surrogate loss

.. math::

    L_θ = \mathbb E\big[-\log p(x \mid z) - \log p(z)
          + \operatorname{stopgrad}(s_φ(z, x))^\top z\big],  \quad z = G_θ(x, ξ)

has the gradient of the negative ELBO. **WAE** (Tolstikhin et al. 2018, the reference's form):
``E[−log p(x|z)] + λ·KL(q(z) ‖ p(z))`` with the *aggregate* posterior ``q(z) = E_x q(z|x)``,
whose entropy gradient comes from an unconditional ``s_φ(z) ≈ ∇_z log q(z)``:

.. math::

    L_θ = \mathbb E\big[-\log p(x \mid z)\big]
          + λ\, \mathbb E\big[-\log p(z) + \operatorname{stopgrad}(s_φ(z))^\top z\big],
          \quad λ = 10.

(The reference's MNIST WAE scores the reconstruction by squared error; here it is the Bernoulli
negative log-likelihood, so that the trained decoder and prior form a model whose likelihood
annealed importance sampling can estimate, like the VAE's.)

**The score step.** Every training step also fits ``s_φ`` to the current encoder's samples
(``z`` detached) by sliced score matching with variance reduction, ``ssm_vr``
(:func:`jacfree.sm.ssm_scorenet` with ``vr=True``, Gaussian projections: a double backward) or
its finite-difference form ``fd_ssm_vr`` (:func:`jacfree.sm.fd_ssm_vr`, ε = 0.1 on the sphere: two
forward evaluations, no input gradient) — the comparison of the paper — both taken from the
objective registry (:mod:`jacfree.scorematching.objectives`, score-network forms). The data
``x`` enters the conditional score network as the estimators' ``cond``. The reference alternates
two optimisers (the score net first, then the autoencoder on a fresh ``z``); here one loss carries
both gradients — ``θ`` sees only the surrogate (the score net's output is detached) and ``φ`` only
the score-matching loss (``z`` is detached), on the same ``z`` — so one optimiser step updates
both, with the score net one step behind the reference's.

The time of the score step alone (the score-matching loss and its gradient with respect to ``φ``)
is measured in eager mode and reported per step as the diagnostic ``score_step_ms``
(``train_score_step_ms`` in ``jacfree train``'s metrics). On CUDA this needs a synchronisation
before and after the score step: it is taken only while ``time_score`` is true (the default; turn
it off for production GPU runs). Under ``torch.compile`` nothing is timed.
"""

from __future__ import annotations

import math
import time
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import sample_noise
from .._compile import is_compiling
from ..scorematching import objectives
from ..scorematching.objectives import Settings
from .ais import AISResult, ais_log_marginal

__all__ = [
    "SCORE_OBJECTIVES",
    "BernoulliDecoder",
    "ImplicitEncoder",
    "ImplicitLatentModel",
    "LatentScoreNet",
    "binarize",
]

SCORE_OBJECTIVES: tuple[str, ...] = ("fd_ssm_vr", "ssm_vr")
LOG_2PI = math.log(2 * math.pi)


def _mlp(n_in: int, hidden: int, layers: int, n_out: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ELU()]
        width = hidden
    mods.append(nn.Linear(width, n_out))
    return nn.Sequential(*mods)


def binarize(x: Tensor, levels: int | None, generator: torch.Generator | None = None) -> Tensor:
    """Stochastic binarisation ``b = [u < x/(levels − 1)]``, ``u ~ U(0, 1)`` (data in
    ``[0, levels)``; data already in [0, 1] when ``levels`` is ``None``). Training draws ``u``
    per sample through :func:`jacfree.sample_noise.rand_like` (dynamic binarisation); pass a
    ``generator`` (on ``x``'s device) for a fixed binarisation of a test set."""
    p = x / (levels - 1) if levels else x
    if generator is None:
        u = sample_noise.rand_like(p)
    else:
        u = torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator)
    return (u < p).to(p.dtype)


class ImplicitEncoder(nn.Module):
    """``z = G(x, ξ)``: an MLP on ``[x, ξ]`` with ``ξ ~ N(0, I_{noise_dim})`` drawn per call."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int = 256, layers: int = 2,
                 noise_dim: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.noise_dim = int(noise_dim or z_dim)
        self.net = _mlp(x_dim + self.noise_dim, hidden, layers, z_dim)

    def forward(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        if noise is None:
            noise = sample_noise.randn_like(x.new_empty(len(x), self.noise_dim))
        return self.net(torch.cat([x, noise], -1))


class BernoulliDecoder(nn.Module):
    """``p(x|z) = Π_i Bernoulli(x_i; sigmoid(logit_i(z)))``: an MLP from ``z`` to logits."""

    def __init__(self, z_dim: int, x_dim: int, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.net = _mlp(z_dim, hidden, layers, x_dim)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x|z)`` summed over pixels; ``z (..., d_z)`` broadcasts against ``x (B, D)``."""
        logits = self(z)
        return -F.binary_cross_entropy_with_logits(
            logits, x.expand_as(logits), reduction="none"
        ).sum(-1)


class LatentScoreNet(nn.Module):
    """``s_φ(z) ≈ ∇_z log q(z)``, or ``s_φ(z, x) ≈ ∇_z log q(z|x)`` when ``x_dim > 0`` (the
    data enters as the score-matching estimators' ``cond``)."""

    def __init__(self, z_dim: int, x_dim: int = 0, hidden: int = 256, layers: int = 2) -> None:
        super().__init__()
        self.conditional = x_dim > 0
        self.net = _mlp(z_dim + x_dim, hidden, layers, z_dim)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        return self.net(z if cond is None else torch.cat([z, cond], -1))


class ImplicitLatentModel(nn.Module):
    """An implicit-encoder VAE (``mode="vae"``) or WAE (``mode="wae"``) on binary vectors.

    Args:
        x_dim: data dimension ``D`` (flattened).
        z_dim: latent dimension (32 in the paper).
        mode: ``"vae"`` (conditional score net, ELBO surrogate) or ``"wae"`` (score net of the
            aggregate posterior, ``λ``-weighted KL surrogate).
        objective: the score-matching estimator of the score step, ``"fd_ssm_vr"`` or
            ``"ssm_vr"``.
        hidden, layers: width and hidden layers of the encoder, decoder and score MLPs.
        eps: FD step of ``fd_ssm_vr`` (0.1, the paper's).
        lam: the WAE weight λ (10).
        time_score: measure the score step's time (see the module docs).
        data_shape, levels: the shape and quantisation of the images, for :meth:`sample`.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int = 32,
        *,
        mode: Literal["vae", "wae"] = "vae",
        objective: str = "fd_ssm_vr",
        hidden: int = 256,
        layers: int = 2,
        eps: float = 0.1,
        lam: float = 10.0,
        time_score: bool = True,
        data_shape: tuple[int, ...] | None = None,
        levels: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in ("vae", "wae"):
            raise ValueError(f"unknown mode {mode!r}; choose 'vae' or 'wae'.")
        if objective not in SCORE_OBJECTIVES:
            raise ValueError(
                f"unknown score objective {objective!r}; choose one of "
                f"{', '.join(map(repr, SCORE_OBJECTIVES))}."
            )
        self.x_dim, self.z_dim, self.mode, self.objective = x_dim, z_dim, mode, objective
        # the score-network estimator from the objective registry; Gaussian projections for
        # SSM-VR as the reference, the sphere of radius eps for FD-SSM-VR
        self._estimator = objectives.objective(objective, "score")
        self._settings = Settings(eps=float(eps), projection="gaussian")
        self.eps, self.lam, self.time_score = float(eps), float(lam), bool(time_score)
        self.encoder = ImplicitEncoder(x_dim, z_dim, hidden, layers)
        self.decoder = BernoulliDecoder(z_dim, x_dim, hidden, layers)
        self.score = LatentScoreNet(z_dim, x_dim if mode == "vae" else 0, hidden, layers)
        self.data_shape = tuple(data_shape) if data_shape else (x_dim,)
        self.levels = levels
        self._diagnostics: dict[str, Tensor] = {}

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one data point (the images' ``data_shape``)."""
        return self.data_shape

    # -- training ----------------------------------------------------------------------------

    def score_loss(self, z: Tensor, x: Tensor) -> Tensor:
        """The score-matching loss of ``s_φ`` on encoder samples ``z`` (detached here)."""
        cond = x if self.score.conditional else None
        return self._estimator(self.score, z.detach(), self._settings, cond=cond)

    def _score_term(self, z: Tensor, x: Tensor) -> Tensor:
        """A zero-valued term whose gradient is the score step's gradient (for ``φ`` only)."""
        if is_compiling() or not torch.is_grad_enabled():
            loss = self.score_loss(z, x)
            self._diagnostics = {"score_loss": loss.detach()}
            return loss - loss.detach()
        cuda = z.is_cuda and self.time_score
        if cuda:
            torch.cuda.synchronize(z.device)
        t0 = time.perf_counter()
        loss = self.score_loss(z, x)
        params = [p for p in self.score.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params)
        if cuda:
            torch.cuda.synchronize(z.device)
        ms = 1e3 * (time.perf_counter() - t0)
        self._diagnostics = {"score_loss": loss.detach()}
        if self.time_score:
            self._diagnostics["score_step_ms"] = torch.tensor(ms, dtype=z.dtype, device=z.device)
        linear = sum((p * g).sum() for p, g in zip(params, grads, strict=True))
        assert isinstance(linear, Tensor)
        return linear - linear.detach()

    def loss(self, x: Tensor) -> Tensor:
        """The training loss on binary ``x (B, D)``: its gradient is the surrogate's for the
        encoder and decoder and the score-matching loss's for the score net; its value is
        ``E[−log p(x|z) − log p(z)]`` (VAE) or ``E[−log p(x|z)] − λ E[log p(z)]`` (WAE) — the
        part of the objective without the (unknown) entropy."""
        z = self.encoder(x)
        score_term = self._score_term(z, x)
        recon = -self.decoder.log_likelihood(x, z)
        nlogpz = 0.5 * (z * z).sum(-1) + 0.5 * self.z_dim * LOG_2PI
        s = self.score(z.detach(), x if self.score.conditional else None).detach()
        ent = (s * z).sum(-1)
        weight = 1.0 if self.mode == "vae" else self.lam
        value = recon + weight * (nlogpz + ent - ent.detach())
        self._diagnostics["recon"] = recon.detach().mean()
        return value.mean() + score_term

    def training_diagnostics(self) -> dict[str, Tensor]:
        """Per-step quantities of the last :meth:`loss`: ``score_loss``, ``recon`` and, when
        timed, ``score_step_ms``."""
        return dict(self._diagnostics)

    # -- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def ais(self, x: Tensor, *, step_size: float = 0.2, **options: Any) -> AISResult:
        """AIS estimate of ``log p(x)`` for binary ``x (B, D)`` (nats per example), from the prior
        to the posterior ``p(z|x) ∝ p(x|z) p(z)``: :func:`jacfree.latent.ais_log_marginal` of the
        decoder's Bernoulli likelihood, with its keywords (``chains``, ``steps``, ``leapfrog``,
        ``pilot_chains``, ``generator``) and an initial HMC step of 0.2."""
        return ais_log_marginal(
            lambda z: self.decoder.log_likelihood(x, z),
            len(x),
            self.z_dim,
            step_size=step_size,
            like=x,
            **options,
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        mean: bool = True,
    ) -> Tensor:
        """``n`` draws ``x ~ p(x|z)``, ``z ~ N(0, I)``: the Bernoulli means (``mean=True``, the
        usual picture) or binary samples, shaped ``(n, *data_shape)`` on the data's scale
        (``[0, levels − 1]``; [0, 1] without ``levels``)."""
        ref = next(self.parameters())
        z = torch.randn(n, self.z_dim, dtype=ref.dtype, device=ref.device, generator=generator)
        p = torch.sigmoid(self.decoder(z))
        if not mean:
            u = torch.rand(p.shape, dtype=p.dtype, device=p.device, generator=generator)
            p = (u < p).to(p.dtype)
        scale = (self.levels - 1) if self.levels else 1
        return (p * scale).reshape(n, *self.data_shape)

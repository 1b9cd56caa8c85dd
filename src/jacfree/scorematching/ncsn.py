r"""A small noise-conditional score network (NCSN) for grey images, sized for a CPU.

Noise-conditional score networks (Song & Ermon, NeurIPS 2019) model the scores of the data
smoothed by Gaussian noise at levels ``σ_1 > … > σ_L`` (a geometric sequence; NCSN uses
``σ_1 = 1``, ``σ_L = 0.01``, ``L = 10`` for data in [0, 1]) with one network
``s_θ(x, σ) ≈ ∇ₓ log p_σ(x)``, trained with the σ²-weighted annealed objective

.. math::

    \frac1L\sum_i \sigma_i^2\,\mathbb E_{\tilde x\sim p_{\sigma_i}}\big[\ell(s_\theta(\cdot,
    \sigma_i); \tilde x)\big]

where ``ℓ`` is denoising score matching (the NCSN default), sliced score matching (SSM, SSM-VR) or
its finite-difference form FD-SSM-VR (Pang et al., NeurIPS 2020, the ``anneal_ESM_scorenet_VR``
loss of their NCSN runs, ε = 0.1); see :func:`annealed_loss`. Samples come from annealed
Langevin dynamics (:func:`jacfree.scorematching.sampling.annealed_langevin`).

The reference NCSN is a RefineNet with 128 base channels and conditional instance norm; this one is
a small U-Net (two down-samplings, residual blocks with GroupNorm and a per-level FiLM scale and
shift from an embedding of ``log σ``) whose output is divided by ``σ`` (the NCSNv2
parametrisation, ``‖s‖ ∝ 1/σ``), so that 28×28 training runs at minutes per epoch on 2 CPU cores.
GroupNorm normalises each sample on its own, so the finite-difference batch ``[x+v, x−v]`` is safe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import sample_noise
from .._activations import Activation
from .._checks import check_choice, check_positive_int, check_samples
from .objectives import Settings, objective_names
from .objectives import objective as find_objective

__all__ = ["NCSN", "NCSN_OBJECTIVES", "annealed_loss", "geometric_sigmas"]

#: the score-network objectives of the registry (:mod:`jacfree.scorematching.objectives`)
NCSN_OBJECTIVES = objective_names("score")


def geometric_sigmas(sigma_max: float = 1.0, sigma_min: float = 0.01, n_levels: int = 10) -> Tensor:
    """``n_levels`` noise levels in a geometric sequence from ``sigma_max`` down to ``sigma_min``
    (float64, on the CPU)."""
    check_positive_int(n_levels, "n_levels")
    if not (0 < sigma_min <= sigma_max and math.isfinite(sigma_max)):
        raise ValueError(
            f"need 0 < sigma_min <= sigma_max < inf, got sigma_min={sigma_min!r}, "
            f"sigma_max={sigma_max!r}."
        )
    if n_levels == 1:
        return torch.tensor([float(sigma_max)], dtype=torch.float64)
    return torch.logspace(
        math.log10(sigma_max), math.log10(sigma_min), n_levels, dtype=torch.float64
    )


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1  # pragma: no cover


class _FiLMNorm(nn.Module):
    """GroupNorm followed by a per-channel scale and shift predicted from the σ embedding."""

    def __init__(self, ch: int, emb: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch, affine=False)
        self.film = nn.Linear(emb, 2 * ch)
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        return self.norm(h) * (1 + scale) + shift


class _ResBlock(nn.Module):
    def __init__(self, ch: int, emb: int, act: nn.Module) -> None:
        super().__init__()
        self.n1, self.n2 = _FiLMNorm(ch, emb), _FiLMNorm(ch, emb)
        self.c1 = nn.Conv2d(ch, ch, 3, padding=1)
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.act = act

    def forward(self, h: Tensor, e: Tensor) -> Tensor:
        r = self.c1(self.act(self.n1(h, e)))
        r = self.c2(self.act(self.n2(r, e)))
        return h + r


class NCSN(nn.Module):
    r"""Noise-conditional score network ``s(x, σ) -> x.shape`` for images ``(C, H, W)``.

    Args:
        shape: per-sample shape ``(C, H, W)`` (``(1, 28, 28)`` for MNIST / Fashion-MNIST).
        channels: base width ``c`` (the U-Net uses ``c`` at full and ``2c`` at lower resolution;
            ``c = 32`` is about 0.1 GFLOP per 28×28 image, ``c = 16`` a quarter of that).
        sigma_max, sigma_min, n_levels: the geometric noise levels (NCSN: 1, 0.01, 10), stored
            in the buffer ``sigmas`` (largest first).
        levels: number of grey levels of quantised data (256 for 8-bit images): then
            :meth:`preprocess` dequantises to ``(x + u)/levels ∈ [0, 1)`` and :meth:`to_data`
            maps samples back; ``None`` for data already on a continuous scale.
        activation: ``"elu"`` (default, as NCSN), ``"silu"`` or ``"softplus"``.

    ``forward(x, sigma)`` takes ``sigma`` as a tensor of per-sample levels ``(B,)`` (or a number)
    — any positive value, not only the training levels.

    Example:
        >>> import torch, jacfree as jf
        >>> net = jf.NCSN((1, 8, 8), channels=8, n_levels=4)
        >>> x = torch.rand(5, 1, 8, 8)
        >>> net(x, net.sigmas[:1].expand(5)).shape
        torch.Size([5, 1, 8, 8])
    """

    def __init__(
        self,
        shape: Sequence[int] = (1, 28, 28),
        channels: int = 32,
        *,
        sigma_max: float = 1.0,
        sigma_min: float = 0.01,
        n_levels: int = 10,
        levels: int | None = None,
        activation: str = "elu",
    ) -> None:
        super().__init__()
        shape = tuple(int(s) for s in shape)
        if len(shape) != 3:
            raise ValueError(
                f"NCSN models images: shape must be (C, H, W), got {shape}; for vectors use an "
                "energy model (MLPEnergy) or another score network."
            )
        C, H, W = shape
        if H < 4 or W < 4:
            raise ValueError(f"images must be at least 4x4 (two down-samplings), got {H}x{W}.")
        check_positive_int(channels, "channels")
        act = Activation(activation)
        if levels is not None:
            check_positive_int(levels, "levels", minimum=2)
        self.event_shape = shape
        self.levels = levels
        self.register_buffer(
            "sigmas", geometric_sigmas(sigma_max, sigma_min, n_levels).to(torch.float32)
        )
        c, c2, emb = channels, 2 * channels, 4 * channels
        self.act = act
        self.embed = nn.Sequential(nn.Linear(1, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.Conv2d(C, c, 3, padding=1)
        self.enc1 = _ResBlock(c, emb, act)
        self.down1 = nn.Conv2d(c, c2, 3, stride=2, padding=1)
        self.enc2 = _ResBlock(c2, emb, act)
        self.down2 = nn.Conv2d(c2, c2, 3, stride=2, padding=1)
        self.mid = _ResBlock(c2, emb, act)
        self.up2 = nn.Conv2d(2 * c2, c2, 3, padding=1)
        self.dec2 = _ResBlock(c2, emb, act)
        self.up1 = nn.Conv2d(c2 + c, c, 3, padding=1)
        self.dec1 = _ResBlock(c, emb, act)
        self.out_norm = _FiLMNorm(c, emb)
        self.out = nn.Conv2d(c, C, 3, padding=1)

    def extra_repr(self) -> str:
        s = self.sigmas
        return (
            f"shape={self.event_shape}, sigmas={float(s[0]):g}..{float(s[-1]):g} "
            f"({len(s)} levels), levels={self.levels}"
        )

    def _sigma(self, sigma: Tensor | float, x: Tensor) -> Tensor:
        s = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if s.dim() == 0:
            s = s.expand(x.shape[0])
        if s.shape != (x.shape[0],):
            raise ValueError(
                f"sigma must be a number or one noise level per sample, shape ({x.shape[0]},); "
                f"got {tuple(s.shape)}."
            )
        return s

    def forward(self, x: Tensor, sigma: Tensor | float) -> Tensor:
        """The score ``s(x, σ)``, shape ``x.shape`` (shapes checked, values not: see
        :meth:`jacfree.scorematching.MLPEnergy.forward`)."""
        check_samples(x, self.event_shape, finite=False)
        s = self._sigma(sigma, x)
        e = self.embed(torch.log(s)[:, None])
        h1 = self.enc1(self.inp(x), e)
        h2 = self.enc2(self.down1(h1), e)
        h = self.mid(self.down2(h2), e)
        h = F.interpolate(h, size=h2.shape[-2:], mode="nearest")
        h = self.dec2(self.up2(torch.cat([h, h2], 1)), e)
        h = F.interpolate(h, size=h1.shape[-2:], mode="nearest")
        h = self.dec1(self.up1(torch.cat([h, h1], 1)), e)
        out = self.out(self.act(self.out_norm(h, e)))
        return out / s[:, None, None, None]

    # -- data scale --------------------------------------------------------------------------

    def preprocess(self, x: Tensor) -> Tensor:
        """Quantised data ``{0..levels−1}`` → ``(x + u)/levels ∈ [0, 1)`` (fresh uniform ``u``,
        per sample in training: :mod:`jacfree.sample_noise`); unchanged when ``levels`` is
        ``None``."""
        if self.levels is None:
            return x
        return sample_noise.dequantise(x, self.levels)

    def to_data(self, y: Tensor) -> Tensor:
        """Model-scale samples back to the data scale (``floor(y·levels)`` clipped)."""
        if self.levels is None:
            return y
        return (y * self.levels).floor().clamp(0, self.levels - 1)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        n_steps_each: int = 100,
        step_lr: float = 2e-5,
    ) -> Tensor:
        """``n`` samples on the data scale by annealed Langevin dynamics from uniform noise
        (``n_steps_each`` steps per level, step ``step_lr`` at the smallest level)."""
        from .sampling import annealed_langevin

        check_positive_int(n, "n")
        ref = self.sigmas
        x0 = torch.rand(
            (n, *self.event_shape), dtype=ref.dtype, device=ref.device, generator=generator
        )
        y = annealed_langevin(
            self, x0, self.sigmas, n_steps_each=n_steps_each, step_lr=step_lr, generator=generator
        )
        return self.to_data(y.clamp(0, 1) if self.levels else y)


def annealed_loss(
    net: NCSN,
    x: Tensor,
    objective: str = "dsm",
    *,
    eps: float = 0.1,
    projection: str = "gaussian",
    n_particles: int = 1,
    parallel: bool = True,
    reduction: str = "mean",
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""The σ²-weighted annealed score-matching loss of a noise-conditional score network.

    Every sample draws a level ``σ_b`` uniformly from ``net.sigmas``, is perturbed to
    ``x̃ = x + σ_b n`` and contributes ``σ_b² · ℓ_b``, with ``ℓ`` the score-network objective
    ``objective`` of :mod:`jacfree.scorematching.objectives`:

    * ``"dsm"``: ``ℓ = ½‖s(x̃, σ_b) + (x̃ − x)/σ_b²‖²`` (:func:`~.losses.dsm_scorenet`, annealed);
    * ``"ssm"`` / ``"ssm_vr"``: ``ℓ = J(x̃)`` by sliced score matching (autograd, ``projection``
      vectors, ``n_particles`` per sample; the reference uses Gaussian ones for NCSN);
    * ``"fd_ssm_vr"``: ``ℓ = J(x̃)`` by finite differences (:func:`~.losses.fd_ssm_vr`, ``eps``,
      ``n_particles``, ``parallel``);
    * ``"sm"``: ``ℓ = J(x̃)`` exactly (``d`` Jacobian-vector products; evaluation only).

    Here ``J(x̃) = tr ∇s(x̃, σ_b) + ½‖s(x̃, σ_b)‖²``. The SM-type losses share one expectation; the
    DSM one exceeds it by the constant ``d/2`` (``σ²·d/(2σ²)``), so the numbers are comparable.
    ``x`` is on the model scale (after :meth:`NCSN.preprocess`).
    """
    check_choice(objective, "NCSN objective", NCSN_OBJECTIVES)
    loss = find_objective(objective, "score")
    settings = Settings(eps=eps, projection=projection, n_particles=n_particles, parallel=parallel)
    sig_all = net.sigmas.to(x.dtype)
    if "sigma" in loss.reads:  # DSM perturbs the data itself, at the annealed levels
        return loss(
            net,
            x,
            settings,
            generator=generator,
            sigma=sig_all,
            noise_conditional=True,
            reduction=reduction,
        )
    B = x.shape[0]
    idx = torch.randint(len(sig_all), (B,), device=x.device, generator=generator)
    sig = sig_all[idx]
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    xt = x + sig.view(B, *[1] * (x.dim() - 1)) * noise
    values = loss(net, xt, settings, generator=generator, cond=sig, reduction="none") * sig**2
    if reduction == "none":
        return values
    if reduction == "sum":
        return values.sum()
    return values.mean()

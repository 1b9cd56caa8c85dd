r"""A residual energy network for images and the annealed Langevin sampler of its reference code.

:class:`ResEBM` is the deep energy-based model of the finite-difference score-matching paper
(Pang et al., NeurIPS 2020, reference ``Res18_Quadratic``, after Li, Chen & Sommer 2019): a
ResNet with three down-sampling stages and **no normalisation layers** (batch statistics would
couple the rows of the finite-difference batch ``[x̃ + v, x̃ − v]``), smooth activations (the
energy is differentiated twice by SSM and finite-differenced by FD-SSM), and a *quadratic head*

.. math::

    E(x) = \ell_1(h)\,\ell_2(h) + \ell_q(h \odot h), \qquad h = \text{ResNet}(x),

with three linear maps ``ℓ₁, ℓ₂, ℓ_q`` to one number. The reference uses 128 base channels (256,
512, 1024 in the three stages) and two extra residual blocks per stage; ``width`` and ``depth``
scale it down. Images whose side is not divisible by 8 are zero-padded to the next multiple (the
reference pads 28×28 MNIST to 32×32).

:func:`annealed_langevin_energy` is the reference sampler (``Annealed_Langevin_E`` +
``SS_denoise``): Langevin steps ``x ← x − ½ α² ∇E(x) + √T_k · α · z`` with a fixed step ``α``
(0.02) and a temperature schedule ``T_k`` (:func:`temperature_schedule`: ``T_max`` held, then
annealed to ``T_min``, then a tail from ``T_min`` to 0), started from ``0.5 + N(0, I)`` and
finished by one denoising step ``x − σ0² ∇E(x)`` (Tweedie's formula at the training target
level ``σ0 = 0.1``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._activations import ACTIVATIONS, Activation
from .._checks import check_positive

__all__ = [
    "ACTIVATIONS",
    "ResEBM",
    "annealed_langevin_energy",
    "temperature_schedule",
]


class ResidualBlock(nn.Module):
    """``x + conv(act(conv(act(x))))``; with ``down`` both branches end in a 2×2 mean pool and
    the shortcut is a 1×1 convolution (as the reference's ``resample="down"`` block)."""

    def __init__(self, c_in: int, c_out: int, activation: str, down: bool):
        super().__init__()
        self.act1, self.act2 = Activation(activation), Activation(activation)
        self.conv1 = nn.Conv2d(c_in, c_in, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.down = down
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (down or c_in != c_out) else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.act2(self.conv1(self.act1(x))))
        s = x
        if self.down:
            h = F.avg_pool2d(h, 2)
            s = F.avg_pool2d(s, 2)
        return self.shortcut(s) + h


class ResEBM(nn.Module):
    r"""Residual energy network with the quadratic head ``ℓ₁(h)·ℓ₂(h) + ℓ_q(h²)``.

    Args:
        image_shape: ``(C, H, W)`` of the inputs.
        width: base channels (reference 128); the stages have ``2·width``, ``4·width``,
            ``8·width`` channels.
        depth: residual blocks per stage after the down-sampling block (reference 2).
        activation: ``"nsoftplus"`` (softplus − log 2, the reference run), ``"elu"`` (the
            reference default), ``"swish"`` or ``"softplus"``.

    ``forward(x) -> (B,)`` energies (``log p̃ = −E``); ``x`` of shape ``(B, C, H, W)`` or
    flattened ``(B, C·H·W)``.
    """

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        width: int = 128,
        depth: int = 2,
        activation: str = "nsoftplus",
    ):
        super().__init__()
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise ValueError(f"image_shape must be (C, H, W), got {image_shape!r}")
        if width < 1 or depth < 0:
            raise ValueError(f"need width >= 1 and depth >= 0, got {width}, {depth}")
        Activation(activation)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.event_shape = self.image_shape
        c, h, w = self.image_shape
        self.pad_h, self.pad_w = (-h) % 8, (-w) % 8
        self.conv_in = nn.Conv2d(c, width, 3, padding=1)
        blocks: list[nn.Module] = []
        ch = width
        for stage in range(3):
            out = width * 2 ** (stage + 1)
            blocks.append(ResidualBlock(ch, out, activation, down=True))
            blocks += [ResidualBlock(out, out, activation, down=False) for _ in range(depth)]
            ch = out
        self.blocks = nn.Sequential(*blocks)
        features = ch * ((h + self.pad_h) // 8) * ((w + self.pad_w) // 8)
        self.ln1 = nn.Linear(features, 1)
        self.ln2 = nn.Linear(features, 1)
        self.lq = nn.Linear(features, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = x.reshape(x.shape[0], *self.image_shape)
        if self.pad_h or self.pad_w:
            top, left = self.pad_h // 2, self.pad_w // 2
            x = F.pad(x, (left, self.pad_w - left, top, self.pad_h - top))
        h = self.blocks(self.conv_in(x)).flatten(1)
        return (self.ln1(h) * self.ln2(h) + self.lq(h * h)).squeeze(-1)


def temperature_schedule(
    t_max: float = 100.0,
    t_min: float = 1.0,
    *,
    n_hold: int = 500,
    n_anneal: int = 2000,
    n_tail: int = 200,
    kind: str = "linear",
) -> Tensor:
    """The reference sampler's temperatures: ``n_hold`` steps at ``t_max``, ``n_anneal`` steps
    from ``t_max`` to ``t_min`` (``"linear"`` or ``"exp"``onential), then ``n_tail`` steps from
    ``t_min`` down to 0. Float64, on the CPU."""
    if not (t_max >= t_min > 0) or min(n_hold, n_anneal, n_tail) < 0:
        raise ValueError("need t_max >= t_min > 0 and non-negative step counts")
    if kind == "linear":
        anneal = torch.linspace(t_max, t_min, n_anneal, dtype=torch.float64)
    elif kind == "exp":
        k = torch.arange(n_anneal, dtype=torch.float64)
        anneal = t_max * torch.exp(-k * math.log(t_max / t_min) / max(n_anneal, 1))
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; choose 'linear' or 'exp'")
    hold = torch.full((n_hold,), float(t_max), dtype=torch.float64)
    tail = t_min * torch.linspace(1.0, 0.0, n_tail, dtype=torch.float64)
    return torch.cat([hold, anneal, tail])


def _grad_energy(energy: nn.Module | object, x: Tensor) -> Tensor:
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(energy(xr).sum(), xr)  # type: ignore[operator]
    return g


def annealed_langevin_energy(
    energy: nn.Module,
    x0: Tensor,
    temperatures: Tensor,
    *,
    step_size: float = 0.02,
    denoise_sigma: float | None = 0.1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Annealed Langevin sampling of an energy, as the deep-EBM reference code does it.

    ``x ← x − ½α²∇E(x) + √T_k·α·z`` for every temperature ``T_k`` (``α = step_size``), then,
    if ``denoise_sigma`` is given, one denoising step ``x ← x − σ0²∇E(x)``. ``x0`` (e.g.
    ``0.5 + N(0, I)`` as the reference) is not modified; the noise is drawn on its device with
    ``generator``. Returns the final iterate, detached.
    """
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.dim() < 2:
        raise ValueError("x0 must be a floating-point tensor of starting points (n, *event)")
    check_positive(step_size, "step_size")
    x = x0.detach().clone()
    a2 = step_size**2
    for t in temperatures.tolist():  # the schedule is host data, not a model output
        z = torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
        x = x - 0.5 * a2 * _grad_energy(energy, x) + math.sqrt(t) * step_size * z
    if denoise_sigma is not None:
        x = x - denoise_sigma**2 * _grad_energy(energy, x)
    return x.detach()

"""2-D toy densities, generated with a seeded NumPy generator (no download, no extra package).

Each toy has 20,000 train, 5,000 validation and 5,000 test points drawn independently from the
same generator seed. Shapes follow the conventions of the flow literature (FFJORD, Grathwohl et
al. 2019): points lie roughly in [-4, 4]².
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from .registry import Dataset, as_float_tensor, catalogued, spec

SPLIT_SIZES = {"train": 20_000, "val": 5_000, "test": 5_000}

Sampler = Callable[[int, np.random.Generator], np.ndarray]


def toy(name: str) -> Callable[[Sampler], Sampler]:
    """Register ``sampler(n, rng) -> (n, 2) array`` as the toy dataset ``name``, described by its
    entry of the catalogue; every split is drawn from ``default_rng([seed, 2020])``."""

    def wrap(sampler: Sampler) -> Sampler:
        def load(root: Path | None = None, seed: int = 0) -> Dataset:
            rng = np.random.default_rng([seed, 2020])
            splits = {k: as_float_tensor(sampler(n, rng)) for k, n in SPLIT_SIZES.items()}
            return Dataset(name=name, shape=(2,), description=description, **splits)

        catalogued(name)(load)
        description = spec(name).description
        load.__doc__ = (
            f"{description} ({sampler.__doc__.strip()})\n\n"
            "Generated with NumPy from ``default_rng([seed, 2020])``; no source file, served as "
            "drawn (``logdet = 0``). Split: 20,000 train, 5,000 validation and 5,000 test points "
            "drawn independently from the same generator. ``root`` is ignored."
        )
        return sampler

    return wrap


@toy("moons")
def moons(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved half circles with Gaussian noise (std 0.1), scaled to about [-4, 4]."""
    upper = rng.random(n) < 0.5
    t = rng.random(n) * np.pi
    x = np.where(upper, np.cos(t), 1 - np.cos(t))
    y = np.where(upper, np.sin(t), 0.5 - np.sin(t))
    pts = np.stack([x, y], 1) + 0.1 * rng.standard_normal((n, 2))
    return (pts - [0.5, 0.25]) * 2.0


@toy("8gaussians")
def eight_gaussians(n: int, rng: np.random.Generator) -> np.ndarray:
    """Mixture of 8 Gaussians (std 0.5/√2) on a circle of radius 4/√2 ≈ 2.83."""
    angles = rng.integers(0, 8, n) * (np.pi / 4)
    centres = 4 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (centres + 0.5 * rng.standard_normal((n, 2))) / np.sqrt(2)


@toy("checkerboard")
def checkerboard(n: int, rng: np.random.Generator) -> np.ndarray:
    """Uniform density on the black squares of a 4×4 checkerboard over [-4, 4]²."""
    x = rng.random(n) * 4 - 2
    y = rng.random(n) - 2 * rng.integers(0, 2, n)
    y = y + np.floor(x) % 2
    return 2 * np.stack([x, y], 1)


@toy("2spirals")
def two_spirals(n: int, rng: np.random.Generator) -> np.ndarray:
    """Two interleaved Archimedean spirals with small Gaussian noise."""
    t = np.sqrt(rng.random(n)) * 3 * np.pi
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    pts = sign[:, None] * np.stack([-np.cos(t) * t, np.sin(t) * t], 1) / 3
    return pts + 0.1 * rng.standard_normal((n, 2))


@toy("rings")
def rings(n: int, rng: np.random.Generator) -> np.ndarray:
    """Four concentric rings (radii 1, 2, 3, 4, equal mass) with radial noise (std 0.08)."""
    radius = rng.integers(1, 5, n).astype(float) + 0.08 * rng.standard_normal(n)
    angle = rng.random(n) * 2 * np.pi
    return radius[:, None] * np.stack([np.cos(angle), np.sin(angle)], 1)


@toy("pinwheel")
def pinwheel(n: int, rng: np.random.Generator) -> np.ndarray:
    """Five curved arms (the pinwheel of Johnson et al. 2016)."""
    arms, rate = 5, 0.25
    label = rng.integers(0, arms, n)
    r = rng.standard_normal(n) * 0.3 + 1.0
    feats = np.stack([r, 0.05 * rng.standard_normal(n)], 1)
    angle = label * 2 * np.pi / arms + rate * np.exp(feats[:, 0])
    c, s = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([c, -s], 1), np.stack([s, c], 1)], 1)
    return 2 * np.einsum("ni,nij->nj", feats, rot)

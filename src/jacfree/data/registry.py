"""The dataset registry: one way to name, describe, check and load every dataset.

``jf.data.load(name)`` returns a :class:`Dataset` whose splits are float tensors with samples
first. Each registered loader is a function ``loader(root, seed) -> Dataset``; loaders for data
that may be missing on a machine also register an ``available()`` check and raise
:class:`DatasetUnavailableError` (naming the dataset, the cause and the fix) when it fails.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be loaded on this machine; the message says why and how to fix it."""


@dataclass
class Dataset:
    """A dataset split into train / validation / test tensors (float32, samples first).

    Attributes:
        name: registry name.
        train, val, test: the splits, shape ``(n, *shape)``.
        shape: one sample's shape, e.g. ``(1, 8, 8)`` for digits or ``(2,)`` for a 2-D toy.
        levels: number of discrete values per dimension for quantised data (17 for digits, 256 for
            8-bit images), which the model dequantises; ``None`` for continuous data.
        logdet: log|det ∂x_loaded/∂x_original| of the loader's own pre-processing, the same for
            every sample (0 when the data is served on its original scale). An NLL on the original
            scale is ``nll_loaded − logdet``.
        description: one line for ``jacfree data list``.
        labels: optional class labels per split (for plots only; never used in training).
    """

    name: str
    train: Tensor
    val: Tensor
    test: Tensor
    shape: tuple[int, ...]
    levels: int | None = None
    logdet: float = 0.0
    description: str = ""
    labels: dict[str, Tensor] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        """Number of scalar dimensions D of one sample."""
        return math.prod(self.shape)

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def bits_per_dim_applies(self) -> bool:
        """Bits/dim are reported for quantised data (images), on the [0, levels)^D scale."""
        return self.levels is not None

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose 'train', 'val' or 'test'.")
        return getattr(self, name)

    def __repr__(self) -> str:
        sizes = "/".join(str(len(t)) for t in (self.train, self.val, self.test))
        return f"Dataset({self.name!r}, train/val/test={sizes}, shape={self.shape})"


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    loader: Callable[[Path | None, int], Dataset]
    available: Callable[[], bool] = lambda: True
    group: str = "real"


_REGISTRY: dict[str, DatasetSpec] = {}


def register(
    name: str,
    description: str,
    *,
    available: Callable[[], bool] = lambda: True,
    group: str = "real",
) -> Callable[[Callable[[Path | None, int], Dataset]], Callable[[Path | None, int], Dataset]]:
    """Decorator registering ``loader(root, seed) -> Dataset`` under ``name``."""

    def wrap(loader: Callable[[Path | None, int], Dataset]) -> Callable[..., Dataset]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        _REGISTRY[name] = DatasetSpec(name, description, loader, available, group)
        return loader

    return wrap


def names() -> list[str]:
    """Names of every registered dataset."""
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {', '.join(names())}.")
    return _REGISTRY[name]


def catalogue() -> list[tuple[str, str, bool]]:
    """``(name, description, available on this machine)`` for every registered dataset."""
    return [(s.name, s.description, bool(s.available())) for s in _REGISTRY.values()]


def load(name: str, *, root: str | Path | None = None, seed: int = 0) -> Dataset:
    """Load the dataset registered as ``name`` (splits are deterministic given ``seed``)."""
    s = spec(name)
    return s.loader(Path(root) if root is not None else None, seed)


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic random train/val/test index split with the given fractions."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def as_float_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

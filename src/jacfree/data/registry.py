"""The dataset registry: one way to name, describe, check and load every dataset.

``jf.data.load(name)`` returns a :class:`Dataset` whose splits are float tensors with samples
first. Each registered loader is a function ``loader(root, seed) -> Dataset``. The datasets of
this package take their description, group, source and licence from one catalogue, the package
data file ``catalogue.toml`` (:func:`read_catalogue`), and register with :func:`catalogued`;
:func:`register` takes them as arguments (for datasets defined elsewhere). Loaders of data
that may be missing on a machine also register a ``locate(root)`` function that finds the files
the loader reads (or raises :class:`DatasetUnavailableError` naming the dataset, the cause and the
command that fixes it); ``status(name)`` and ``catalogue()`` use it to report availability
without loading anything.

Folders (both can be set by the user):

* **user data** (``root=None``): copies of datasets that no package ships (MNIST, CIFAR-10, the
  MAF tables, Parkinsons) are looked up in ``data_dir()/<folder>``; ``data_dir()`` is
  ``$JACFREE_DATA_DIR``, else ``$XDG_DATA_HOME/jacfree``, else ``~/.local/share/jacfree``. The
  per-dataset folder names are those of the MAF data archive (``power``, ``gas``, ``hepmass``,
  ``miniboone``, ``BSDS300``, ...), so ``JACFREE_DATA_DIR`` may point at the archive's ``data/``.
* **cache** of prepared arrays: ``cache_dir=`` argument of :func:`load`, else
  ``$JACFREE_DATA_CACHE``, else ``$XDG_CACHE_HOME/jacfree/datasets``, else
  ``~/.cache/jacfree/datasets``. A cache entry is keyed by the dataset, the seed, the recipe
  version and the size and modification time of every source file, so a changed source is
  re-read. Delete the folder to clear it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

#: Environment variable naming the folder of user-supplied dataset copies.
DATA_DIR_ENV = "JACFREE_DATA_DIR"
#: Environment variable naming the cache folder of prepared arrays.
CACHE_DIR_ENV = "JACFREE_DATA_CACHE"


class DatasetUnavailableError(RuntimeError):
    """A dataset cannot be loaded on this machine; the message says why and how to fix it.

    ``DatasetUnavailableError(dataset, cause, fix)`` formats the message
    ``dataset 'NAME' is unavailable: CAUSE. Fix: FIX``; the three parts are kept as attributes.
    A single argument is used as the whole message.
    """

    def __init__(self, dataset: str, cause: str | None = None, fix: str | None = None) -> None:
        if cause is None:
            super().__init__(dataset)
            self.dataset, self.cause, self.fix = "", dataset, ""
            return
        self.dataset, self.cause, self.fix = dataset, cause.rstrip("."), (fix or "").rstrip(".")
        message = f"dataset {dataset!r} is unavailable: {self.cause}."
        if self.fix:
            message += f" Fix: {self.fix}."
        super().__init__(message)


@dataclass
class Dataset:
    """A dataset split into train / validation / test tensors (float32, samples first).

    Attributes:
        name: registry name.
        train, val, test: the splits, shape ``(n, *shape)``.
        shape: one sample's shape, e.g. ``(1, 28, 28)`` for a grey image or ``(2,)`` for a 2-D toy.
        levels: number of discrete values per dimension for quantised data (17 for digits, 256 for
            8-bit images), which the model dequantises; ``None`` for continuous data.
        logdet: log|det ∂x_loaded/∂x_original| of the loader's own pre-processing, the same for
            every sample (0 when the data is served on its original scale; −Σ log σ_j for data
            standardised with per-column scales σ_j). An NLL on the original scale is
            ``nll_loaded − logdet``.
        description: one line for ``jacfree data list``.
        labels: optional class labels per split (for plots only; never used in training).
        meta: JSON-serialisable facts about how the data was prepared (recipe, kept columns, and
            for standardised / whitened tables ``meta["affine"]`` = ``{"shift", "matrix"}`` with
            x_loaded = (x_original − shift) @ matrix, which :meth:`to_original` inverts).
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
    meta: dict[str, Any] = field(default_factory=dict)

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

    def to_original(self, x: Tensor) -> Tensor:
        """Map loaded-scale rows (e.g. model samples) back to the original scale of the source
        (after the recipe's column selection and jitter); identity for data served unchanged."""
        affine = self.meta.get("affine")
        if affine is None:
            return x
        matrix = torch.tensor(affine["matrix"], dtype=torch.float64)
        shift = torch.tensor(affine["shift"], dtype=torch.float64)
        out = torch.linalg.solve(matrix.T, x.double().reshape(len(x), -1).T).T + shift
        return out.to(x.dtype).reshape(x.shape)

    def split(self, name: str) -> Tensor:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose 'train', 'val' or 'test'.")
        return getattr(self, name)

    def __repr__(self) -> str:
        sizes = "/".join(str(len(t)) for t in (self.train, self.val, self.test))
        return f"Dataset({self.name!r}, train/val/test={sizes}, shape={self.shape})"


Loader = Callable[[Path | None, int], Dataset]
Locator = Callable[[Path | None], dict[str, Path]]


def _always() -> bool:
    return True


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about a dataset before loading it.

    ``locate(root)`` returns the source files the loader reads (role -> path) or raises
    :class:`DatasetUnavailableError`; ``cached`` datasets keep their prepared arrays on disk;
    ``version`` is bumped when the recipe changes so that old cache entries are not reused.
    """

    name: str
    description: str
    loader: Loader
    available: Callable[[], bool] = _always
    group: str = "real"  # "real" (packaged/embedded), "user" (your copy) or "toy"
    source: str = ""
    licence: str = ""
    locate: Locator | None = None
    cached: bool = False
    version: int = 1

    @property
    def doc(self) -> str:
        """The loader's docstring: source, licence, recipe and split."""
        return _dedent_doc(self.loader.__doc__ or "")


@dataclass(frozen=True)
class Availability:
    """Whether a dataset can be loaded here; if not, the cause and the command that fixes it."""

    available: bool
    cause: str = ""
    fix: str = ""

    def __bool__(self) -> bool:
        return self.available


_REGISTRY: dict[str, DatasetSpec] = {}


def register(
    name: str,
    description: str,
    *,
    available: Callable[[], bool] | None = None,
    group: str = "real",
    source: str = "",
    licence: str = "",
    locate: Locator | None = None,
    cached: bool = False,
    version: int = 1,
) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(root, seed) -> Dataset`` under ``name``.

    ``available()`` defaults to "``locate(None)`` finds the files" when ``locate`` is given and to
    "always" otherwise.
    """

    def wrap(loader: Loader) -> Loader:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is already registered")
        check = available
        if check is None:
            check = _always if locate is None else (lambda: bool(status(name)))
        _REGISTRY[name] = DatasetSpec(
            name, description, loader, check, group, source, licence, locate, cached, version
        )
        return loader

    return wrap


#: The fields of every entry of ``catalogue.toml``.
CATALOGUE_FIELDS = ("description", "group", "source", "licence")


@functools.cache
def read_catalogue() -> dict[str, dict[str, str]]:
    """The entries of the package data file ``catalogue.toml``: ``{name: {field: text}}`` with
    the :data:`CATALOGUE_FIELDS` of every dataset of this package, in the file's order."""
    text = resources.files(__package__).joinpath("catalogue.toml").read_text(encoding="utf-8")
    return parse_catalogue(text)


def parse_catalogue(text: str) -> dict[str, dict[str, str]]:
    """Parse catalogue TOML (one table per dataset) and check that every entry gives exactly the
    :data:`CATALOGUE_FIELDS`, as strings, with a group of :data:`GROUPS`."""
    entries = tomllib.loads(text)
    for name, entry in entries.items():
        if (
            not isinstance(entry, dict)
            or sorted(entry) != sorted(CATALOGUE_FIELDS)
            or not all(isinstance(v, str) for v in entry.values())
            or entry["group"] not in GROUPS
        ):
            raise ValueError(
                f"catalogue.toml: the entry {name!r} must give exactly the fields "
                f"{', '.join(CATALOGUE_FIELDS)} as strings, with a group in {GROUPS}; it gives "
                f"{entry!r}"
            )
    return entries


def catalogued(
    name: str, *, locate: Locator | None = None, version: int = 1
) -> Callable[[Loader], Loader]:
    """:func:`register` for a dataset of this package, described by its entry of the catalogue
    (:func:`read_catalogue`). A dataset whose loader reads located source files (``locate``)
    keeps its prepared arrays in the cache, keyed by those files; one without (embedded or
    generated data) is rebuilt on every load.
    """
    entries = read_catalogue()
    if name not in entries:
        raise KeyError(f"dataset {name!r} has no entry in jacfree/data/catalogue.toml")
    return register(
        name, **entries[name], locate=locate, cached=locate is not None, version=version
    )


def names() -> list[str]:
    """Names of every registered dataset."""
    return sorted(_REGISTRY)


def spec(name: str) -> DatasetSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered datasets: {', '.join(names())}.")
    return _REGISTRY[name]


def status(name: str, root: str | Path | None = None) -> Availability:
    """Whether ``name`` can be loaded here (with ``root``), and if not why and how to fix it."""
    s = spec(name)
    if s.locate is not None:
        try:
            s.locate(_as_path(root))
        except DatasetUnavailableError as err:
            return Availability(False, err.cause, err.fix)
        return Availability(True)
    if s.available():
        return Availability(True)
    return Availability(False, "not available on this machine")


GROUPS = ("real", "user", "toy")


def catalogue() -> list[tuple[str, str, bool]]:
    """``(name, description, available on this machine)`` for every registered dataset.

    Ordered by group (``real``: shipped by an installable package or embedded; ``user``: needs
    your own copy; ``toy``: generated), then by registration.
    """
    order = {g: i for i, g in enumerate(GROUPS)}
    specs = sorted(_REGISTRY.values(), key=lambda s: order.get(s.group, len(order)))
    return [(s.name, s.description, bool(s.available())) for s in specs]


def info(name: str, *, root: str | Path | None = None) -> dict[str, Any]:
    """Everything known about ``name`` without loading it: description, group, source, licence,
    availability (with cause and fix) and the loader's documentation (recipe and split)."""
    s = spec(name)
    st = status(name, root)
    return {
        "name": s.name,
        "description": s.description,
        "group": s.group,
        "source": s.source,
        "licence": s.licence,
        "available": st.available,
        "cause": st.cause,
        "fix": st.fix,
        "cached": s.cached,
        "doc": s.doc,
    }


def load(
    name: str,
    *,
    root: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> Dataset:
    """Load the dataset registered as ``name`` (splits are deterministic given ``seed``).

    Args:
        root: folder holding a user-supplied copy (or an alternative copy of a packaged one);
            ``None`` looks in the default places (see the module docstring).
        seed: seeds every random choice of the recipe (split permutation, jitter); the
            docstring of each dataset says which of its parts are fixed regardless of the seed.
        cache_dir: cache folder of prepared arrays (default: ``$JACFREE_DATA_CACHE`` or
            ``~/.cache/jacfree/datasets``); ``cache=False`` neither reads nor writes it.

    Raises:
        KeyError: unknown name.
        DatasetUnavailableError: the data is missing, unreadable or malformed here.
    """
    s = spec(name)
    root_path = _as_path(root)
    if not (cache and s.cached):
        return s.loader(root_path, seed)
    from . import cache as _cache  # local import: cache imports this module

    files = s.locate(root_path) if s.locate is not None else {}
    folder = resolve_cache_dir(cache_dir)
    key = _cache.cache_key(s.name, s.version, seed, files)
    hit = _cache.read(folder, s.name, seed, key)
    if hit is not None:
        return hit
    ds = s.loader(root_path, seed)
    _cache.write(folder, s.name, seed, key, ds)
    return ds


def data_dir() -> Path:
    """Root folder of user-supplied dataset copies (``$JACFREE_DATA_DIR`` or the XDG data home)."""
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "jacfree"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """The cache folder: the argument, else ``$JACFREE_DATA_CACHE``, else the XDG cache home."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(CACHE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "jacfree" / "datasets"


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic random train/val/test index split with the given fractions."""
    perm = np.random.default_rng(seed).permutation(n)
    n_train = round(fractions[0] * n)
    n_val = round(fractions[1] * n)
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]


def labelled_split(
    name: str,
    description: str,
    images: np.ndarray,
    labels: np.ndarray,
    fractions: tuple[float, float, float],
    seed: int,
    levels: int,
) -> Dataset:
    """A labelled image dataset split at random by :func:`split_indices`; ``images`` has shape
    ``(N, C, H, W)`` and integer values in ``0..levels-1``."""
    tr, va, te = split_indices(len(images), fractions, seed)
    return Dataset(
        name=name,
        train=as_float_tensor(images[tr]),
        val=as_float_tensor(images[va]),
        test=as_float_tensor(images[te]),
        shape=tuple(images.shape[1:]),
        levels=levels,
        description=description,
        labels={
            k: as_float_tensor(labels[i]).long()
            for k, i in (("train", tr), ("val", va), ("test", te))
        },
    )


def as_float_tensor(a: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def _as_path(root: str | Path | None) -> Path | None:
    return Path(root).expanduser() if root is not None else None


def _dedent_doc(doc: str) -> str:
    lines = doc.expandtabs().splitlines()
    if not lines:
        return ""
    indents = [len(x) - len(x.lstrip()) for x in lines[1:] if x.strip()]
    cut = min(indents) if indents else 0
    return "\n".join([lines[0].strip(), *(x[cut:] for x in lines[1:])]).strip()

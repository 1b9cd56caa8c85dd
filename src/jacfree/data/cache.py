"""On-disk cache of prepared datasets: one folder of ``.npy`` files per dataset, seed and source.

An entry is the folder ``NAME-sSEED-KEY/`` holding ``train.npy``, ``val.npy``, ``test.npy``, the
labels (``label_train.npy``, ...) if any, and ``meta.json``. ``KEY`` hashes the dataset name,
its recipe version, the seed and the resolved path, size and modification time of every source
file, so editing or replacing a source file makes the next load re-read it. Quantised data with
at most 256 levels is stored as ``uint8`` (a quarter of the float32 size); everything else as
float32. Plain ``.npy`` files read at disk speed (a 330 MB BSDS300 entry in about 0.1 s from the
page cache, against 1.3 s for the same arrays in an ``.npz``), and loading never unpickles
anything. An entry is written into a temporary folder and renamed into place; a cache that
cannot be written (read-only home, full disk) only warns, and an unreadable entry is ignored
and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .registry import Dataset

SPLITS = ("train", "val", "test")
_FORMAT = 2


def cache_key(name: str, version: int, seed: int, files: dict[str, Path]) -> str:
    """Hash of everything the prepared arrays depend on."""
    sources = []
    for role in sorted(files):
        path = Path(files[role]).resolve()
        st = path.stat()
        sources.append([role, str(path), st.st_size, st.st_mtime_ns])
    blob = json.dumps([_FORMAT, name, version, seed, sources], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_path(folder: Path, name: str, seed: int, key: str) -> Path:
    return folder / f"{name}-s{seed}-{key}"


def _compact(ds: Dataset) -> dict[str, np.ndarray]:
    """The splits as uint8 when they are exactly integers in 0..255, else as float32."""
    arrays = {s: getattr(ds, s).numpy() for s in SPLITS}
    if ds.levels is not None and ds.levels <= 256:
        small = {s: a.astype(np.uint8) for s, a in arrays.items()}
        if all(np.array_equal(small[s], arrays[s]) for s in SPLITS):
            return small
    return {s: a.astype(np.float32, copy=False) for s, a in arrays.items()}


def write(folder: Path, name: str, seed: int, key: str, ds: Dataset) -> Path | None:
    """Store ``ds``; returns the entry folder, or ``None`` (with a warning) if it failed."""
    arrays = _compact(ds)
    arrays.update({f"label_{s}": lab.numpy() for s, lab in ds.labels.items()})
    meta = {
        "format": _FORMAT,
        "name": ds.name,
        "shape": list(ds.shape),
        "levels": ds.levels,
        "logdet": ds.logdet,
        "description": ds.description,
        "labels": sorted(ds.labels),
        "meta": ds.meta,
    }
    target = entry_path(folder, name, seed, key)
    tmp: str | None = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=folder, prefix=f".{name}-", suffix=".tmp")
        for part, a in arrays.items():
            np.save(Path(tmp) / f"{part}.npy", a, allow_pickle=False)
        (Path(tmp) / "meta.json").write_text(json.dumps(meta))
        if target.exists():  # an unreadable old entry, or one a concurrent process just wrote
            shutil.rmtree(target, ignore_errors=True)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "meta.json").is_file():
                raise
    except OSError as err:
        warnings.warn(
            f"could not write the dataset cache {target} ({err}); the dataset is loaded but the "
            f"next load will prepare it again. Set JACFREE_DATA_CACHE to a writable folder.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    finally:
        if tmp is not None and os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read(folder: Path, name: str, seed: int, key: str) -> Dataset | None:
    """The cached dataset, or ``None`` if there is no usable entry."""
    path = entry_path(folder, name, seed, key)
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
        if meta.get("format") != _FORMAT or meta.get("name") != name:
            return None
        splits = {s: _tensor(path / f"{s}.npy", np.float32) for s in SPLITS}
        labels = {s: _tensor(path / f"label_{s}.npy", np.int64) for s in meta["labels"]}
        shape = tuple(int(d) for d in meta["shape"])
        if any(t.shape[1:] != shape for t in splits.values()):
            raise ValueError(f"arrays do not have the recorded sample shape {shape}")
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as err:
        warnings.warn(
            f"ignoring unreadable cache entry {path}: {err}", RuntimeWarning, stacklevel=3
        )
        return None
    return Dataset(
        name=name,
        shape=shape,
        levels=meta["levels"],
        logdet=float(meta["logdet"]),
        description=meta["description"],
        labels=labels,
        meta={**meta["meta"], "cache_path": str(path)},
        **splits,
    )


def _tensor(path: Path, dtype: type) -> torch.Tensor:
    return torch.from_numpy(np.load(path, allow_pickle=False).astype(dtype, copy=False))

"""On-disk cache of prepared datasets (one uncompressed ``.npz`` per dataset, seed and source).

Entries are named ``NAME-sSEED-KEY.npz``; ``KEY`` hashes the dataset name, its recipe version, the
seed and the resolved path, size and modification time of every source file, so editing or
replacing a source file makes the next load re-read it. Quantised data with at most 256 levels is
stored as ``uint8`` (a quarter of the float32 size); everything else as float32. The metadata is a
JSON string inside the archive, so loading never unpickles anything. Writes go to a temporary
file renamed into place; a cache that cannot be written (read-only home, full disk) only warns,
and an unreadable entry is ignored and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch

from .registry import Dataset

SPLITS = ("train", "val", "test")
_FORMAT = 1


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
    return folder / f"{name}-s{seed}-{key}.npz"


def write(folder: Path, name: str, seed: int, key: str, ds: Dataset) -> Path | None:
    """Store ``ds``; returns the file, or ``None`` (with a warning) if it could not be written."""
    compact = ds.levels is not None and ds.levels <= 256
    arrays: dict[str, np.ndarray] = {}
    for split in SPLITS:
        a = getattr(ds, split).numpy()
        if compact:
            a8 = a.astype(np.uint8)
            compact = bool(np.array_equal(a8, a))
            a = a8 if compact else a
        arrays[split] = a
    if not compact:
        arrays = {s: getattr(ds, s).numpy().astype(np.float32) for s in SPLITS}
    for split, lab in ds.labels.items():
        arrays[f"label_{split}"] = lab.numpy()
    meta = {
        "format": _FORMAT,
        "name": ds.name,
        "shape": list(ds.shape),
        "levels": ds.levels,
        "logdet": ds.logdet,
        "description": ds.description,
        "meta": ds.meta,
    }
    arrays["meta_json"] = np.array(json.dumps(meta))
    target = entry_path(folder, name, seed, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".npz.tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        warnings.warn(
            f"could not write the dataset cache {target} ({err}); the dataset is loaded but the "
            f"next load will prepare it again. Set JACFREE_DATA_CACHE to a writable folder.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return target


def read(folder: Path, name: str, seed: int, key: str) -> Dataset | None:
    """The cached dataset, or ``None`` if there is no usable entry."""
    path = entry_path(folder, name, seed, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta_json"]))
            if meta.get("format") != _FORMAT or meta.get("name") != name:
                return None
            splits = {s: torch.from_numpy(z[s].astype(np.float32)) for s in SPLITS}
            labels = {
                s: torch.from_numpy(z[f"label_{s}"].astype(np.int64))
                for s in SPLITS
                if f"label_{s}" in z.files
            }
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as err:
        warnings.warn(
            f"ignoring unreadable cache entry {path}: {err}", RuntimeWarning, stacklevel=3
        )
        return None
    shape = tuple(int(d) for d in meta["shape"])
    if any(t.shape[1:] != shape for t in splits.values()):
        return None
    return Dataset(
        name=name,
        shape=shape,
        levels=meta["levels"],
        logdet=float(meta["logdet"]),
        description=meta["description"],
        labels=labels,
        meta={**meta["meta"], "cache_file": str(path)},
        **splits,
    )

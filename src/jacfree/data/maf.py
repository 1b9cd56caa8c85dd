"""The five tabular benchmarks of the MAF paper (Papamakarios, Pavlakou & Murray 2017), read from
your copy of the MAF data files with the MAF code's exact pre-processing and splits.

No package ships these files. The MAF data archive (``data.tar.gz``, DOI 10.5281/zenodo.1161203)
unpacks to ``data/power/data.npy``, ``data/gas/ethylene_CO.pickle``,
``data/hepmass/1000_{train,test}.csv``, ``data/miniboone/data.npy`` and
``data/BSDS300/BSDS300.hdf5``; set ``JACFREE_DATA_DIR`` to that ``data/`` folder (or pass
``root=`` the dataset's folder). Each loader reproduces the corresponding ``datasets/*.py`` of the
MAF repository (also used by the relative-gradient paper), including its quirks, which the
docstrings point out. ``logdet`` = −Σ log σ_j of the standardisation (0 for BSDS300), so
NLL on the scale of the MAF files = NLL − logdet. Rows served are float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import bad_file, find_folder, require_module
from .recipes import affine_meta, drop_correlated
from .registry import Dataset, DatasetUnavailableError, Locator, as_float_tensor, catalogued

MAF_ARCHIVE = (
    "the MAF data archive (Papamakarios et al. 2017, data.tar.gz, DOI 10.5281/zenodo.1161203)"
)


def _maf_files(
    name: str, sub: str, files: dict[str, str], what: str, needs: str | None = None
) -> Locator:
    """``locate(root)`` of a MAF table: the ``files`` (role -> file name, described by ``what``)
    of the archive's folder ``data/<sub>/``, looked for in ``root`` and ``root/<sub>``, or without
    ``root`` in ``data_dir()/<sub>`` (and in ``<name>`` in place of ``<sub>`` where the two
    differ); ``needs`` names the Python package that reads them."""
    fix = (
        f"put your copy of {' and '.join(files.values())} ({what}) into {{folder}}; "
        f"{MAF_ARCHIVE} holds it as data/{sub}/: `mkdir -p {{folder}} && cp /path/to/data/{sub}/* "
        "{folder}/`, or set JACFREE_DATA_DIR to the unpacked data/ folder, or pass root=FOLDER"
    )
    subfolders = list(dict.fromkeys([sub, name]))

    def locate(root: Path | None) -> dict[str, Path]:
        found = find_folder(name, root, subfolders, list(files.values()), fix)
        if needs is not None:
            require_module(name, needs)
        return {role: found[file] for role, file in files.items()}

    return locate


def _maf_dataset(
    name: str, description: str, splits: tuple[np.ndarray, ...], logdet: float, meta: dict
) -> Dataset:
    train, val, test = splits
    return Dataset(
        name=name,
        train=as_float_tensor(train),
        val=as_float_tensor(val),
        test=as_float_tensor(test),
        shape=(train.shape[1],),
        logdet=logdet,
        description=description,
        meta={"recipe": "maf", **meta},
    )


def _tail_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MAF's split: test = last int(0.1 N) rows, validation = last int(0.1 N') of the rest."""
    n_test = int(0.1 * data.shape[0])
    test = data[data.shape[0] - n_test :]
    rest = data[: data.shape[0] - n_test]
    n_val = int(0.1 * rest.shape[0])
    return rest[: rest.shape[0] - n_val], rest[rest.shape[0] - n_val :], test


def _standardised_tail_split(name: str, description: str, data: np.ndarray) -> Dataset:
    """:func:`_tail_split`, then standardise every split with the mean and std (ddof 0) of
    train ∪ validation; ``logdet`` = −Σ log σ_j."""
    train, val, test = _tail_split(data)
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    splits = tuple((a - mu) / s for a in (train, val, test))
    meta = {"affine": affine_meta(mu, np.diag(1 / s))}
    return _maf_dataset(name, description, splits, float(-np.log(s).sum()), meta)


def _load_npy(name: str, path: Path, columns: int, expected: str) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise bad_file(name, path, f"cannot be read as a .npy array ({err})", expected) from err
    if data.ndim != 2 or data.shape[1] != columns or not np.issubdtype(data.dtype, np.floating):
        raise bad_file(name, path, f"holds {data.dtype} {data.shape}", expected)
    if data.shape[0] < 30:
        raise bad_file(name, path, f"only {data.shape[0]} rows", expected)
    return data.astype(np.float64, copy=False)


# ---------------------------------------------------------------------------------------------
# POWER

_locate_power = _maf_files(
    "power", "power", {"data": "data.npy"}, "float64 array of shape (2049280, 8)"
)


@catalogued("power", locate=_locate_power)
def load_power(root: Path | None = None, seed: int = 0) -> Dataset:
    """POWER (MAF paper): 2,049,280 household power readings, 6 dimensions.

    Source: ``power/data.npy`` of the MAF data archive (float64, 2,049,280 × 8). Recipe (MAF's
    ``datasets/power.py``): shuffle the rows with ``RandomState(42)`` (42 + seed), delete
    columns 3 (global intensity) and 1 (global reactive power), add uniform noise from the same
    generator (voltage U[0, 0.01), gap U[0, 0.001), the three sub-meterings U[0, 1), time none)
    to dequantise, then standardise with the mean and std (ddof 0) of train ∪ validation.
    Split: test = last 10 % (204,928), validation = last 10 % of the rest (184,435),
    train = 1,659,917. ``logdet`` = −Σ log σ_j. Seed 0 reproduces the paper's data exactly.
    """
    path = _locate_power(root)["data"]
    data = _load_npy("power", path, 8, "MAF power/data.npy, float64 (2049280, 8)")
    rng = np.random.RandomState(42 + seed)
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    return _standardised_tail_split("power", "POWER (MAF)", data)


# ---------------------------------------------------------------------------------------------
# GAS

GAS_FILE = "ethylene_CO.pickle"
_locate_gas = _maf_files(
    "gas",
    "gas",
    {"data": GAS_FILE},
    "a pickled pandas DataFrame, 1,052,065 rows; columns Time, Meth, Eth and 16 sensors",
    needs="pandas",
)


@catalogued("gas", locate=_locate_gas)
def load_gas(root: Path | None = None, seed: int = 0) -> Dataset:
    """GAS (MAF paper): ethylene–CO sensor readings, 8 dimensions.

    Source: ``gas/ethylene_CO.pickle`` of the MAF data archive, a pickled pandas DataFrame (read
    with ``pandas.read_pickle``, which runs code from the file: only load your own trusted copy).
    Recipe (MAF's ``datasets/gas.py``): drop the columns Meth, Eth and Time; while some column
    has corr > 0.98 (signed) with another, drop the first such column; standardise with the
    mean and std (ddof 1, pandas' default) of *all* rows. Split in file order (no shuffle):
    test = last 10 % (105,206), validation = last 10 % of the rest (94,685),
    train = 852,174. ``logdet`` = −Σ log σ_j. ``seed`` is ignored (nothing is random).
    """
    path = _locate_gas(root)["data"]
    import pandas as pd

    expected = "MAF gas/ethylene_CO.pickle (a pandas DataFrame with Time, Meth, Eth + sensors)"
    try:
        frame = pd.read_pickle(path)
    except Exception as err:  # unpickling can raise anything
        raise DatasetUnavailableError(
            "gas",
            f"{path} cannot be unpickled by pandas {pd.__version__} ({type(err).__name__}: {err})",
            "replace it with an intact copy; if it was written by a much older pandas, re-save it "
            'once with pandas 1.x: `python -c "import pandas as pd; '
            f"pd.read_pickle('{GAS_FILE}').to_pickle('{GAS_FILE}')\"`",
        ) from err
    if not isinstance(frame, pd.DataFrame) or not {"Time", "Meth", "Eth"} <= set(frame.columns):
        got = list(frame.columns) if isinstance(frame, pd.DataFrame) else type(frame).__name__
        raise bad_file("gas", path, f"holds {got}, not a DataFrame with Time, Meth, Eth", expected)
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    names = [str(c) for c in frame.columns]
    data = frame.to_numpy(dtype=np.float64)
    if data.shape[0] < 30 or data.shape[1] < 1:
        raise bad_file("gas", path, f"only {data.shape} after dropping Time/Meth/Eth", expected)
    keep = drop_correlated(data, 0.98, mode="signed")
    data = data[:, keep]
    mu, s = data.mean(axis=0), data.std(axis=0, ddof=1)
    data = (data - mu) / s
    meta = {"columns": [names[j] for j in keep], "affine": affine_meta(mu, np.diag(1 / s))}
    return _maf_dataset("gas", "GAS (MAF)", _tail_split(data), float(-np.log(s).sum()), meta)


# ---------------------------------------------------------------------------------------------
# HEPMASS

_locate_hepmass = _maf_files(
    "hepmass",
    "hepmass",
    {"train": "1000_train.csv", "test": "1000_test.csv"},
    "the UCI HEPMASS mass-1000 files, header '# label,f0,...,f26,mass'",
)


def _read_csv(name: str, path: Path, expected: str) -> tuple[list[str], np.ndarray]:
    """Header names and values of a comma-separated file (pandas if installed: much faster)."""
    try:
        import pandas as pd
    except ImportError:
        pd = None
    try:
        if pd is not None:
            frame = pd.read_csv(path, index_col=False)
            return [str(c).strip() for c in frame.columns], frame.to_numpy(dtype=np.float64)
        with path.open() as f:
            header = [c.strip() for c in f.readline().split(",")]
            return header, np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError) as err:
        raise bad_file(name, path, f"cannot be parsed as numbers ({err})", expected) from err


@catalogued("hepmass", locate=_locate_hepmass)
def load_hepmass(root: Path | None = None, seed: int = 0) -> Dataset:
    """HEPMASS (MAF paper): signal (label 1) collision events of the mass-1000 files, 21 dims.

    Source: ``hepmass/1000_train.csv`` and ``1000_test.csv`` (UCI HEPMASS, header
    ``# label,f0,...,f26,mass``). Recipe (MAF's ``datasets/hepmass.py``): keep label-1 rows and
    drop the label; drop the test file's last column (MAF: "because the data set is messed
    up!"); standardise both with the training file's mean and std (ddof 1); remove every
    feature whose *smallest* value occurs more than 5 times in the training data (MAF's
    "too many re-occurring values" rule counts the smallest value — reproduced as is; it
    removes the mass and 6 discrete features). Test columns are matched to training columns by
    header name (running the MAF code under a recent pandas would instead sort the test columns
    f0, f1, f10, ... when aligning them with the training means, silently permuting them).
    Split: validation = last 10 % of the training rows (35,013), train = 315,123, test = the
    test file's 174,987 signal rows. ``logdet`` = −Σ log σ_j over the kept features. ``seed``
    is ignored (nothing is random).
    """
    files = _locate_hepmass(root)
    expected = "the UCI HEPMASS 1000_*.csv file (header '# label,f0,...,f26,mass')"
    tr_names, train = _read_csv("hepmass", files["train"], expected)
    te_names, test = _read_csv("hepmass", files["test"], expected)
    for path, names_, values in (
        (files["train"], tr_names, train),
        (files["test"], te_names, test),
    ):
        if len(names_) < 3 or "label" not in names_[0] or values.shape[1] != len(names_):
            raise bad_file("hepmass", path, f"header {names_[:3]}... / {values.shape}", expected)
    train = train[train[:, 0] == 1][:, 1:]
    tr_names = tr_names[1:]
    test = test[test[:, 0] == 1][:, 1:-1]
    te_names = te_names[1:-1]
    missing = [c for c in te_names if c not in tr_names]
    if missing or len(train) < 30 or len(test) < 1:
        raise bad_file(
            "hepmass",
            files["test"],
            f"test columns {missing} not in the training header, or too few label-1 rows",
            expected,
        )
    mu, s = train.mean(axis=0), train.std(axis=0, ddof=1)
    train = (train - mu) / s
    pos = [tr_names.index(c) for c in te_names]
    test = (test - mu[pos]) / s[pos]
    removed = [j for j in range(train.shape[1]) if np.sum(train[:, j] == train[:, j].min()) > 5]
    kept = [j for j in range(train.shape[1]) if j not in removed]
    absent = [tr_names[j] for j in kept if j not in pos]
    if absent:
        raise bad_file("hepmass", files["test"], f"lacks the kept features {absent}", expected)
    test = test[:, [pos.index(j) for j in kept]]
    train = train[:, kept]
    n_val = int(0.1 * len(train))
    splits = (train[: len(train) - n_val], train[len(train) - n_val :], test)
    logdet = float(-np.log(s[kept]).sum())
    meta = {
        "columns": [tr_names[j] for j in kept],
        "dropped": [tr_names[j] for j in removed],
        "affine": affine_meta(mu[kept], np.diag(1 / s[kept])),
    }
    return _maf_dataset("hepmass", "HEPMASS (MAF)", splits, logdet, meta)


# ---------------------------------------------------------------------------------------------
# MINIBOONE

_locate_miniboone = _maf_files(
    "miniboone", "miniboone", {"data": "data.npy"}, "float64 array of shape (36488, 43)"
)


@catalogued("miniboone", locate=_locate_miniboone)
def load_miniboone(root: Path | None = None, seed: int = 0) -> Dataset:
    """MINIBOONE (MAF paper): 36,488 events × 43 features.

    Source: ``miniboone/data.npy`` of the MAF data archive (the MAF authors already removed
    outliers and discrete features). Recipe (MAF's ``datasets/miniboone.py``): split in file
    order, test = last 10 % (3,648), validation = last 10 % of the rest (3,284),
    train = 29,556; standardise with the mean and std (ddof 0) of train ∪ validation.
    ``logdet`` = −Σ log σ_j. ``seed`` is ignored (nothing is random).
    """
    path = _locate_miniboone(root)["data"]
    data = _load_npy("miniboone", path, 43, "MAF miniboone/data.npy, float64 (36488, 43)")
    return _standardised_tail_split("miniboone", "MINIBOONE (MAF)", data)


# ---------------------------------------------------------------------------------------------
# BSDS300

_locate_bsds = _maf_files(
    "bsds300",
    "BSDS300",
    {"data": "BSDS300.hdf5"},
    "HDF5 with datasets train (1000000, 63), validation (50000, 63), test (250000, 63)",
    needs="h5py",
)


@catalogued("bsds300", locate=_locate_bsds)
def load_bsds300(root: Path | None = None, seed: int = 0) -> Dataset:
    """BSDS300 (MAF paper): 8×8 monochrome patches of natural images with the bottom-right pixel
    removed, 63 dimensions.

    Source: ``BSDS300/BSDS300.hdf5`` of the MAF data archive (datasets ``train`` 1,000,000,
    ``validation`` 50,000 and ``test`` 250,000 rows × 63); needs ``h5py``. Recipe (MAF's
    ``datasets/bsds300.py``): used as given, no further pre-processing (``logdet = 0``).
    The splits are the file's. ``seed`` is ignored.
    """
    path = _locate_bsds(root)["data"]
    import h5py

    expected = "MAF BSDS300/BSDS300.hdf5 with datasets train, validation, test of 63 columns"
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("train", "validation", "test") if k not in f]
            if missing:
                raise bad_file("bsds300", path, f"has no dataset(s) {missing}", expected)
            splits = tuple(
                np.asarray(f[k][:], dtype=np.float32) for k in ("train", "validation", "test")
            )
    except (OSError, ValueError, TypeError) as err:
        raise bad_file("bsds300", path, f"cannot be read as HDF5 ({err})", expected) from err
    for k, a in zip(("train", "validation", "test"), splits, strict=True):
        if a.ndim != 2 or a.shape[1] != 63 or len(a) == 0:
            raise bad_file("bsds300", path, f"dataset {k} has shape {a.shape}", expected)
    return _maf_dataset("bsds300", "BSDS300 (MAF)", splits, 0.0, {})

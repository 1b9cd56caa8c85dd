"""Pre-processing recipes for tabular data (NumPy, float64), each with the log-det it implies.

Two families:

* **DKEF** (Wenliang et al. 2019, as run by the FD-SM / sliced-score-matching code for Parkinsons,
  RedWine, WhiteWine): optional correlated-column removal, per-column dequantisation with
  U(−δ, δ) noise where δ is the median gap between the column's distinct values, a fixed shuffle,
  PCA whitening computed on the whole data set, the split test = min(1000, N/10),
  validation = min(1000, (N − test)/10), and N(0, 0.05²) noise added once to every split.
* **MAF-style** (for the extra tables this library adds: CASP, CCPP, breast cancer, Old Faithful),
  following the spirit of Papamakarios et al. 2017: drop discrete columns (< 20 distinct values)
  and near-duplicate columns (|corr| > 0.98), dequantise columns whose values repeat with
  U(−δ/2, δ/2) noise (δ = median gap between distinct values, i.e. the recording resolution),
  a seeded 80/10/10 split, and standardisation with the training split's mean and std.

Affine maps y = (x − m)·A have the constant log-det log|det A| that :class:`Dataset` reports as
``logdet``; additive noise has no log-det (the served density is that of the noisy data).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .registry import split_indices

CORRELATION_THRESHOLD = 0.98
MIN_DISTINCT = 20


def drop_correlated(
    x: np.ndarray, threshold: float = CORRELATION_THRESHOLD, *, mode: str = "abs"
) -> np.ndarray:
    """Indices of the columns kept by the iterative rule of the MAF (GAS) and DKEF code.

    While some column is correlated above ``threshold`` with another one, drop the *first* such
    column and recompute. ``mode``: ``"abs"`` compares |corr| (this library's MAF-style recipe),
    ``"signed"`` compares corr (MAF's GAS loader), ``"dkef"`` compares |corr| in the first pass
    and corr afterwards (exactly what the DKEF / FD-SM ``clean_data`` does).
    """
    if mode not in ("abs", "signed", "dkef"):
        raise ValueError(f"mode must be 'abs', 'signed' or 'dkef', got {mode!r}")
    keep = list(range(x.shape[1]))
    first = True
    while len(keep) > 1:
        with np.errstate(invalid="ignore", divide="ignore"):
            c = np.corrcoef(x[:, keep].T)
        if mode == "abs" or (mode == "dkef" and first):
            c = np.abs(c)
        first = False
        counts = np.sum(c > threshold, axis=1)
        over = np.flatnonzero(counts > 1)
        if over.size == 0:
            break
        del keep[int(over[0])]
    return np.asarray(keep, dtype=np.int64)


def median_gaps(x: np.ndarray) -> np.ndarray:
    """Per column: the median gap between consecutive distinct values (0 for a constant column)."""
    gaps = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        u = np.unique(x[:, j])
        gaps[j] = float(np.median(np.diff(u))) if u.size > 1 else 0.0
    return gaps


def dequantise_dkef(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """DKEF dequantisation: x_j += U(−1, 1)·δ_j, δ_j the column's median gap (every column)."""
    x = x.astype(np.float64, copy=True)
    for j, gap in enumerate(median_gaps(x)):
        x[:, j] += (rng.random(len(x)) * 2 - 1) * gap
    return x


def jitter_repeats(x: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[int]]:
    """MAF-style jitter: x_j += U(−½, ½)·δ_j for each column j whose values repeat.

    Returns the jittered copy and the indices of the jittered columns.
    """
    x = x.astype(np.float64, copy=True)
    gaps = median_gaps(x)
    done = []
    for j in range(x.shape[1]):
        if np.unique(x[:, j]).size < len(x) and gaps[j] > 0:
            x[:, j] += (rng.random(len(x)) - 0.5) * gaps[j]
            done.append(j)
    return x, done


def discrete_columns(x: np.ndarray, min_distinct: int = MIN_DISTINCT) -> list[int]:
    """Columns with fewer than ``min_distinct`` distinct values."""
    return [j for j in range(x.shape[1]) if np.unique(x[:, j]).size < min_distinct]


@dataclass
class Prepared:
    """Splits after a recipe, the constant log-det, and what was done (for ``Dataset.meta``)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    logdet: float
    columns: list[str]
    meta: dict


def affine_meta(shift: np.ndarray, matrix: np.ndarray) -> dict:
    """``Dataset.meta["affine"]``: x_loaded = (x_original − shift) @ matrix."""
    return {"shift": np.asarray(shift).tolist(), "matrix": np.asarray(matrix).tolist()}


def standardise(
    train: np.ndarray, *others: np.ndarray, ddof: int = 0, stats_from: np.ndarray | None = None
) -> tuple[list[np.ndarray], float, dict]:
    """(x − mean)/std with mean and std of ``stats_from`` (default ``train``).

    Returns the standardised arrays (train first), log|det| = −Σ_j log std_j, and the map as
    :func:`affine_meta`.
    """
    ref = train if stats_from is None else stats_from
    mu = ref.mean(axis=0)
    sd = ref.std(axis=0, ddof=ddof)
    if np.any(sd <= 0):
        raise ValueError("a column is constant on the statistics split; it cannot be standardised")
    out = [(a - mu) / sd for a in (train, *others)]
    return out, float(-np.log(sd).sum()), affine_meta(mu, np.diag(1 / sd))


def maf_style(
    x: np.ndarray,
    names: list[str],
    seed: int,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
) -> Prepared:
    """This library's MAF-style recipe for a table ``x`` (rows = samples) with column ``names``.

    1. drop columns with < 20 distinct values, then near-duplicates (|corr| > 0.98, iterative);
    2. jitter columns whose values repeat by U(−δ/2, δ/2), δ = median gap (seeded by ``seed``);
    3. seeded permutation split into ``fractions`` (default 80/10/10);
    4. standardise with the training split's mean and std (ddof 0).
    """
    x = np.asarray(x, dtype=np.float64)
    discrete = discrete_columns(x)
    cont = [j for j in range(x.shape[1]) if j not in discrete]
    kept = [cont[i] for i in drop_correlated(x[:, cont], mode="abs")]
    rng = np.random.default_rng([seed, 7])
    xk, jittered = jitter_repeats(x[:, kept], rng)
    tr, va, te = split_indices(len(xk), fractions, seed)
    (train, val, test), logdet, affine = standardise(xk[tr], xk[va], xk[te])
    return Prepared(
        train,
        val,
        test,
        logdet,
        [names[j] for j in kept],
        {
            "recipe": "maf-style",
            "dropped_discrete": [names[j] for j in discrete],
            "dropped_correlated": [names[j] for j in cont if j not in kept],
            "jittered": [names[kept[j]] for j in jittered],
            "affine": affine,
            "split_index": {"train": tr, "val": va, "test": te},
        },
    )


def dkef(x: np.ndarray, names: list[str], seed: int, *, dequantise: bool, clean: bool) -> Prepared:
    """The DKEF recipe of the FD-SM / sliced-score-matching code (``load_and_whiten``).

    ``clean``: drop correlated columns (the Parkinsons rule, |corr| > 0.98 with the code's
    sign quirk); ``dequantise``: U(−δ, δ) noise per column (the wine rule). Then shuffle with
    ``np.random.RandomState(2019 + seed)`` (seed 0 is the paper's fixed shuffle), PCA-whiten with
    the mean and SVD of the first 10⁴ shuffled rows of the *whole* data set
    (W = V·diag(1/s)·√m, as in the DKEF paper, zero epsilon), split test = last min(1000, N//10)
    rows, validation = the min(1000, (N − test)//10) rows before them, train = the rest, and add
    N(0, 0.05²) noise once to every split. log-det = log|det W|.
    """
    x = np.asarray(x, dtype=np.float64)
    kept = drop_correlated(x, mode="dkef") if clean else np.arange(x.shape[1])
    x = x[:, kept]
    rng = np.random.default_rng([seed, 2019])
    if dequantise:
        x = dequantise_dkef(x, rng)
    perm = np.random.RandomState(2019 + seed).permutation(len(x))
    x = x[perm]
    mean = x.mean(axis=0)
    head = (x - mean)[: 10**4]
    _, s, vt = np.linalg.svd(head, full_matrices=False)
    W = vt.T / s * np.sqrt(head.shape[0])
    logdet = float(np.sum(-np.log(s)) + 0.5 * x.shape[1] * np.log(head.shape[0]))
    n = len(x)
    n_test = min(1000, n // 10)
    n_val = min(1000, (n - n_test) // 10)
    test = x[n - n_test :]
    val = x[n - n_test - n_val : n - n_test]
    train = x[: n - n_test - n_val]
    splits = [(a - mean) @ W for a in (train, val, test)]
    splits = [a + 0.05 * rng.standard_normal(a.shape) for a in splits]
    idx = {
        "train": perm[: len(train)],
        "val": perm[len(train) : len(train) + n_val],
        "test": perm[n - n_test :],
    }
    return Prepared(
        *splits,
        logdet,
        [names[j] for j in kept],
        {
            "recipe": "dkef",
            "dropped_correlated": [names[j] for j in range(len(names)) if j not in set(kept)],
            "dequantised": bool(dequantise),
            "noise_std": 0.05,
            "affine": affine_meta(mean, W),
            "split_index": idx,
        },
    )

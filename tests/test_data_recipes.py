"""The tabular pre-processing recipes on small synthetic tables: the column rules, the jitter, the
splits, and that each reported log-det is log|det| of the affine map actually applied."""

from __future__ import annotations

import numpy as np
import pytest

from jacfree.data import recipes


def table(n: int = 500, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)) @ np.array(
        [[2.0, 0.3, 0, 0], [0, 1.0, 0.2, 0], [0, 0, 0.5, 0.1], [0, 0, 0, 3.0]]
    )
    return x + np.array([10.0, -5.0, 0.0, 100.0])


def test_drop_correlated_rules() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal(300), rng.standard_normal(300)
    neg = -a + 1e-3 * rng.standard_normal(300)
    x = np.column_stack([a, b, neg])
    assert recipes.drop_correlated(x, mode="abs").tolist() == [1, 2]  # first of the pair goes
    assert recipes.drop_correlated(x, mode="signed").tolist() == [0, 1, 2]  # anti-correlation kept
    assert recipes.drop_correlated(x, mode="dkef").tolist() == [1, 2]  # |corr| in the first pass
    twin = a * 3 + 1e-4 * rng.standard_normal(300)
    # DKEF code: the second pass compares the signed correlation, so a second negative pair stays
    y = np.column_stack([a, twin, b, -b + 1e-3 * rng.standard_normal(300)])
    assert recipes.drop_correlated(y, mode="dkef").tolist() == [1, 2, 3]
    assert recipes.drop_correlated(y, mode="abs").tolist() == [1, 3]
    with pytest.raises(ValueError, match="mode"):
        recipes.drop_correlated(y, mode="nope")


def test_median_gap_dequantisation() -> None:
    rng = np.random.default_rng(2)
    x = np.column_stack([rng.integers(0, 50, 400) * 0.1, rng.integers(0, 5, 400) * 2.0])
    np.testing.assert_allclose(recipes.median_gaps(x), [0.1, 2.0])
    d = recipes.dequantise_dkef(x, np.random.default_rng(0))
    assert np.all(np.abs(d - x) <= [0.1, 2.0]) and np.abs(d - x)[:, 1].max() > 1.0
    j, done = recipes.jitter_repeats(np.column_stack([x, rng.standard_normal(400)]), rng)
    assert done == [0, 1]  # the continuous column has no repeats and is left alone
    assert np.all(np.abs(j[:, :2] - x) <= [0.05, 1.0])
    assert len(np.unique(j[:, 0])) == 400


def test_maf_style_split_and_standardisation() -> None:
    x = table()
    x = np.column_stack([x, x[:, 0] * 2 + 1e-6, np.arange(500) % 3])  # near-duplicate, discrete
    names = ["a", "b", "c", "d", "a2", "k"]
    p = recipes.maf_style(x, names, seed=4)
    assert p.columns == ["b", "c", "d", "a2"]
    assert p.meta["dropped_discrete"] == ["k"] and p.meta["dropped_correlated"] == ["a"]
    idx = p.meta["split_index"]
    assert [len(idx[s]) for s in ("train", "val", "test")] == [400, 50, 50]
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(500))
    np.testing.assert_allclose(p.train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(p.train.std(0), 1, atol=1e-12)
    shift = np.array(p.meta["affine"]["shift"])
    matrix = np.array(p.meta["affine"]["matrix"])
    assert p.logdet == pytest.approx(np.linalg.slogdet(matrix)[1])
    kept = [1, 2, 3, 4]
    np.testing.assert_allclose(p.test @ np.linalg.inv(matrix) + shift, x[idx["test"]][:, kept])
    again = recipes.maf_style(x, names, seed=4)
    assert np.array_equal(again.val, p.val)
    assert not np.array_equal(recipes.maf_style(x, names, seed=5).val, p.val)


@pytest.mark.parametrize(("n", "sizes"), [(1599, (1296, 144, 159)), (20000, (18000, 1000, 1000))])
def test_dkef_split_sizes(n: int, sizes: tuple[int, int, int]) -> None:
    x = np.random.default_rng(3).standard_normal((n, 3))
    p = recipes.dkef(x, ["a", "b", "c"], 0, dequantise=False, clean=False)
    assert (len(p.train), len(p.val), len(p.test)) == sizes
    idx = p.meta["split_index"]
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(n))
    # the paper's fixed shuffle: np.random.seed(2019); np.random.shuffle(data)
    assert np.array_equal(idx["test"], np.random.RandomState(2019).permutation(n)[n - sizes[2] :])


def test_dkef_whitening_and_logdet() -> None:
    x = table(3000)
    p = recipes.dkef(x, list("abcd"), 0, dequantise=False, clean=False)
    shift = np.array(p.meta["affine"]["shift"])
    W = np.array(p.meta["affine"]["matrix"])
    np.testing.assert_allclose(shift, x.mean(0))
    white = (x - shift) @ W
    np.testing.assert_allclose(np.cov(white.T, bias=True), np.eye(4), atol=1e-10)
    assert p.logdet == pytest.approx(np.linalg.slogdet(W)[1], rel=1e-12)
    # the served rows are the whitened rows plus N(0, 0.05^2) noise
    idx = p.meta["split_index"]
    noise = p.train - white[idx["train"]]
    assert abs(noise.std() - 0.05) < 0.003 and abs(noise.mean()) < 0.003


def test_standardise_rejects_constant_column() -> None:
    with pytest.raises(ValueError, match="constant"):
        recipes.standardise(np.ones((5, 2)))

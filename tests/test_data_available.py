"""Every dataset that can be had on this machine: sizes, dtype, value ranges, split disjointness,
determinism, seeds and the cache round trip. A dataset whose package is not installed is
skipped with the command that installs it (CI installs them all, so none is skipped there)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch

import jacfree as jf
import jacfree.data as jd
from jacfree.data import formats

# name: (train, val, test), shape, levels
EXPECTED: dict[str, tuple[tuple[int, int, int], tuple[int, ...], int | None]] = {
    "digits": ((1258, 180, 359), (1, 8, 8), 17),
    "fashion-mnist": ((50000, 10000, 10000), (1, 28, 28), 256),
    "mnist-5k": ((4000, 500, 500), (1, 28, 28), 256),
    "wine-red": ((1296, 144, 159), (11,), None),
    "wine-white": ((3969, 440, 489), (11,), None),
    "casp": ((36584, 4573, 4573), (9,), None),
    "ccpp": ((7654, 957, 957), (5,), None),
    "breast-cancer": ((455, 57, 57), (27,), None),
    "old-faithful": ((218, 27, 27), (2,), None),
    **dict.fromkeys(
        ("moons", "8gaussians", "checkerboard", "2spirals", "rings", "pinwheel"),
        ((20000, 5000, 5000), (2,), None),
    ),
}
IMAGES = ["digits", "fashion-mnist", "mnist-5k"]
DKEF = ["wine-red", "wine-white"]
MAF_STYLE = ["casp", "ccpp", "breast-cancer", "old-faithful"]
FIXED_SPLIT = ["fashion-mnist"]  # seed is ignored


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jd.CACHE_DIR_ENV, str(tmp_path / "default-cache"))


def require(name: str) -> None:
    st = jd.status(name)
    if not st:
        pytest.skip(f"{name} is not available here: {st.cause}; fix: {st.fix}")


@functools.cache
def fresh(name: str, seed: int = 0) -> jd.Dataset:
    """One uncached load per (name, seed) for the whole module."""
    return jd.load(name, seed=seed, cache=False)


def rows(t: torch.Tensor) -> np.ndarray:
    return t.reshape(len(t), -1).numpy()


def multiset_equal(a: np.ndarray, b: np.ndarray) -> bool:
    """Same rows with the same multiplicities, in any order."""
    a32, b32 = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    return a.shape == b.shape and sorted(map(bytes, a32)) == sorted(map(bytes, b32))


def test_every_registered_dataset_is_covered_here_or_by_fixtures() -> None:
    user = {n for n in jd.names() if jd.spec(n).group == "user"}
    assert user == {
        "mnist",
        "cifar10",
        "power",
        "gas",
        "hepmass",
        "miniboone",
        "bsds300",
        "parkinsons",
    }
    assert set(jd.names()) == set(EXPECTED) | user


@pytest.mark.parametrize("name", list(EXPECTED))
def test_sizes_dtype_and_values(name: str) -> None:
    require(name)
    sizes, shape, levels = EXPECTED[name]
    ds = fresh(name)
    assert (len(ds.train), len(ds.val), len(ds.test)) == sizes
    assert ds.shape == shape and ds.dim == int(np.prod(shape)) and ds.levels == levels
    assert ds.is_image == (len(shape) == 3) and ds.bits_per_dim_applies == (levels is not None)
    assert ds.name == name and ds.description
    for split in ("train", "val", "test"):
        t = ds.split(split)
        assert t.dtype == torch.float32 and t.shape[1:] == shape and t.is_contiguous()
        assert torch.isfinite(t).all()
        if split in ds.labels:
            assert ds.labels[split].dtype == torch.int64 and len(ds.labels[split]) == len(t)
    if levels is not None:  # images on the original integer scale
        every = torch.cat([ds.train, ds.val, ds.test])
        assert torch.equal(every, every.round())
        assert every.min() == 0 and every.max() == levels - 1
        assert ds.logdet == 0.0
    elif name in MAF_STYLE:  # standardised with training statistics
        train = ds.train.double()
        np.testing.assert_allclose(train.mean(0).numpy(), 0, atol=1e-5)
        np.testing.assert_allclose(train.std(0, correction=0).numpy(), 1, atol=1e-5)
    elif name in DKEF:  # whitened on the whole set, plus N(0, 0.05^2) noise
        whole = torch.cat([ds.train, ds.val, ds.test]).double()
        cov = torch.cov(whole.T).numpy()
        np.testing.assert_allclose(cov, np.eye(ds.dim) * (1 + 0.05**2), atol=0.01)
    else:  # 2-D toys
        assert ds.train.abs().max() < 6 and ds.logdet == 0.0


@pytest.mark.parametrize("name", DKEF + MAF_STYLE)
def test_tabular_logdet_is_the_affine_map(name: str) -> None:
    require(name)
    ds = fresh(name)
    matrix = np.array(ds.meta["affine"]["matrix"])
    assert matrix.shape == (ds.dim, ds.dim)
    assert ds.logdet == pytest.approx(np.linalg.slogdet(matrix)[1], rel=1e-9, abs=1e-9)
    back = ds.to_original(ds.train).double()
    again = (back - torch.tensor(ds.meta["affine"]["shift"])) @ torch.tensor(matrix)
    np.testing.assert_allclose(again.numpy(), ds.train.double().numpy(), atol=1e-3)


def test_to_original_recovers_the_source_scale() -> None:
    require("old-faithful")
    ds = fresh("old-faithful")
    path = jd.spec("old-faithful").locate(None)["csv"]
    _, source = formats.read_table("old-faithful", path, ",", "")
    back = torch.cat([ds.to_original(ds.split(s)) for s in ("train", "val", "test")]).numpy()
    # jitter is at most half the recording resolution (1 s of duration, 1 min of waiting)
    np.testing.assert_allclose(np.sort(back[:, 1]), np.sort(source[:, 1]), atol=0.5 + 1e-3)
    np.testing.assert_allclose(back.mean(0), source.mean(0), rtol=1e-3)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_splits_are_disjoint(name: str) -> None:
    require(name)
    ds = fresh(name)
    if name == "fashion-mnist":  # fixed split: first 50k / last 10k of the official training set
        files = jd.spec(name).locate(None)
        source = formats.read_idx(name, files["train_images"], "")
        assert np.array_equal(rows(ds.train), source[:50000].reshape(50000, -1))
        assert np.array_equal(rows(ds.val), source[50000:].reshape(10000, -1))
        test_source = formats.read_idx(name, files["test_images"], "")
        assert np.array_equal(rows(ds.test), test_source.reshape(10000, -1))
    elif name in ("digits", "mnist-5k"):  # a partition of the source rows (which repeat a few)
        every = np.concatenate([rows(ds.train), rows(ds.val), rows(ds.test)])
        labels = torch.cat([ds.labels[s] for s in ("train", "val", "test")])
        if name == "mnist-5k":
            assert torch.bincount(labels).tolist() == [500] * 10
            path = jd.spec(name).locate(None)["csv"]
            source = np.loadtxt(path, delimiter=",", dtype=np.float32)[:, :784]
        else:
            with np.load(Path(jd.__file__).parent / "digits.npz") as z:
                source = z["images"].reshape(len(z["images"]), -1).astype(float)
        assert multiset_equal(every, source.astype(np.float32))
    else:  # continuous rows: no row may appear in two splits
        every = np.concatenate([rows(ds.train), rows(ds.val), rows(ds.test)])
        assert len(np.unique(every, axis=0)) == len(every)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_deterministic_and_seeded(name: str) -> None:
    require(name)
    a, b = fresh(name), jd.load(name, cache=False)
    for split in ("train", "val", "test"):
        assert torch.equal(a.split(split), b.split(split))
    assert a.logdet == b.logdet
    if name in ("casp", "fashion-mnist"):
        return  # the slowest two: the seed behaviour is the same code as for the others
    other = jd.load(name, seed=1, cache=False)
    assert len(other.train) == len(a.train)
    assert torch.equal(other.train, a.train) == (name in FIXED_SPLIT)


@pytest.mark.parametrize("name", list(EXPECTED))
def test_cache_round_trip(name: str, tmp_path: Path) -> None:
    require(name)
    cached = jd.spec(name).cached
    first = jd.load(name, cache_dir=tmp_path)
    entries = list(tmp_path.glob(f"{name}-s0-*"))
    assert len(entries) == (1 if cached else 0)
    second = jd.load(name, cache_dir=tmp_path)
    if not cached:
        return
    assert second.meta.pop("cache_path") == str(entries[0])
    for split in ("train", "val", "test"):
        assert torch.equal(first.split(split), second.split(split))
        assert second.split(split).dtype == torch.float32
    assert set(first.labels) == set(second.labels)
    for split, lab in first.labels.items():
        assert torch.equal(lab, second.labels[split])
    assert (second.shape, second.levels, second.logdet) == (first.shape, first.levels, first.logdet)
    assert second.meta == first.meta and second.description == first.description
    # and it is the same data as an uncached load
    assert torch.equal(first.test, fresh(name).test)


def test_cache_stores_images_compactly(tmp_path: Path) -> None:
    require("mnist-5k")
    jd.load("mnist-5k", cache_dir=tmp_path)
    (entry,) = tmp_path.glob("mnist-5k-*")
    assert np.load(entry / "train.npy").dtype == np.uint8
    assert sum(f.stat().st_size for f in entry.iterdir()) < 5000 * 784 * 1.1


@pytest.mark.parametrize("name", ["digits", "mnist-5k"])
def test_images_fit_the_models_preprocessing(name: str) -> None:
    """Dequantise + logit (α = 1e-6) on the served scale is finite and inverts exactly."""
    require(name)
    ds = fresh(name)
    x = ds.train[:64].double()
    deq, logit = jf.Dequantize(ds.levels), jf.LogitTransform(ds.levels, alpha=1e-6)
    u, ld0 = deq(x)
    y, ld1 = logit(u)
    assert torch.isfinite(y).all() and torch.isfinite(ld1).all() and (ld0 == 0).all()
    assert torch.equal(deq.inverse(logit.inverse(y)), x)

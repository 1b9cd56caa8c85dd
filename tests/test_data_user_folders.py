"""Loaders for user-supplied copies (MNIST, CIFAR-10, POWER, GAS, HEPMASS, MINIBOONE, BSDS300,
Parkinsons), each run on FORMAT FIXTURES that these tests write themselves: the real file names,
headers, dtypes and per-sample shapes, but a few hundred random rows. They check the parsing, the
papers' pre-processing and the error messages; they are NOT benchmarks and say nothing about the
real data.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

import jacfree.data as jd
from jacfree.data.registry import DatasetUnavailableError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty user-data folder and a private cache for every test."""
    monkeypatch.setenv(jd.DATA_DIR_ENV, str(tmp_path / "userdata"))
    monkeypatch.setenv(jd.CACHE_DIR_ENV, str(tmp_path / "cache"))


def needs(module: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(module) is None,
        reason=f"needs {module}: `pip install {module}` (or `pip install 'jacfree[data]'`)",
    )


def unavailable(name: str, **kwargs: object) -> DatasetUnavailableError:
    with pytest.raises(DatasetUnavailableError) as info:
        jd.load(name, cache=False, **kwargs)
    assert info.value.dataset == name
    assert f"dataset {name!r} is unavailable" in str(info.value)
    assert info.value.fix
    return info.value


# ---------------------------------------------------------------------------------------------
# format fixture writers


def write_idx(path: Path, array: np.ndarray, *, gz: bool = True) -> None:
    """IDX: bytes 0, 0, type 0x08 (uint8), ndim; big-endian uint32 sizes; the values."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    blob = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_mnist(folder: Path, n_train: int = 60, n_test: int = 12, gz: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, a in arrays.items():
        write_idx(folder / (name + (".gz" if gz else "")), a, gz=gz)
    return arrays


def write_cifar(folder: Path, per_batch: int = 4, bytes_keys: bool = True) -> dict:
    """Python-2-style CIFAR-10 batches: pickle protocol 2, dict with data (n, 3072) uint8,
    labels (list of ints), batch_label and filenames; NumPy referenced as numpy.core."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    batches = {}
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            "batch_label": f"fixture {name}",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{i}.png" for i in range(per_batch)],
        }
        if bytes_keys:
            batch = {k.encode(): v for k, v in batch.items()}
        blob = pickle.dumps(batch, protocol=2)
        blob = blob.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
        (folder / name).write_bytes(blob)
        batches[name] = (data, labels)
    return batches


def write_power(folder: Path, n: int = 200) -> np.ndarray:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    data = np.round(rng.random((n, 8)) * [3, 0.5, 240, 10, 40, 40, 20, 1440], 3)
    np.save(folder / "data.npy", data)
    return data


def write_gas(folder: Path, n: int = 300) -> None:
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(4)
    base = rng.standard_normal((n, 8)) @ rng.standard_normal((8, 8))
    twins = base[:, :8] * 1.5 + 0.001 * rng.standard_normal((n, 8))  # corr > 0.98 with base
    sensors = np.concatenate([twins, base], axis=1)  # the first copy of each pair is dropped
    cols = {"Time": np.arange(n) * 0.01, "Meth": rng.random(n), "Eth": rng.random(n)}
    cols.update({f"sensor{j + 1}": sensors[:, j] for j in range(16)})
    pd.DataFrame(cols).to_pickle(folder / "ethylene_CO.pickle")


HEPMASS_HEADER = ["# label", *(f"f{j}" for j in range(27)), "mass"]


def write_hepmass(folder: Path, n_train: int = 300, n_test: int = 120) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    for name, n in (("1000_train.csv", n_train), ("1000_test.csv", n_test)):
        x = rng.standard_normal((n, 27))
        for j in (5, 9, 13, 17, 21, 25):  # discrete features, as the b-tags of the real data
            x[:, j] = rng.choice([-1.0, 0.0, 1.5], n)
        label = (rng.random(n) < 0.5).astype(float)
        mass = np.where(label == 1, 0.9, rng.standard_normal(n))  # one mass for the signal
        rows = np.column_stack([label, x, mass])
        lines = [",".join(HEPMASS_HEADER)]
        lines += [",".join(f"{v:.6g}" for v in row) for row in rows]
        (folder / name).write_text("\n".join(lines) + "\n")


def write_bsds(folder: Path) -> None:
    import h5py

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(6)
    with h5py.File(folder / "BSDS300.hdf5", "w") as f:
        for name, n in (("train", 100), ("validation", 20), ("test", 30)):
            f.create_dataset(name, data=rng.standard_normal((n, 63)) * 0.1)


PARKINSONS_HEADER = (
    "subject#,age,sex,test_time,motor_UPDRS,total_UPDRS,Jitter(%),Jitter(Abs),Jitter:RAP,"
    "Jitter:PPQ5,Jitter:DDP,Shimmer,Shimmer(dB),Shimmer:APQ3,Shimmer:APQ5,Shimmer:APQ11,"
    "Shimmer:DDA,NHR,HNR,RPDE,DFA,PPE"
)


def write_parkinsons(folder: Path, n: int = 200) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((n, 19)) @ np.diag(rng.random(19) + 0.5)
    for dup, src in ((5, 2), (7, 4), (10, 9), (13, 11)):  # near-duplicate columns, as DDP = 3 RAP
        x[:, dup] = 3 * x[:, src] + 1e-4 * rng.standard_normal(n)
    head = np.column_stack([rng.integers(1, 43, n), rng.integers(36, 86, n), rng.integers(0, 2, n)])
    rows = np.column_stack([head, x])
    lines = [PARKINSONS_HEADER] + [",".join(f"{v:.6g}" for v in r) for r in rows]
    (folder / "parkinsons_updrs.data").write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx_fixture(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path / "m", gz=gz)
    ds = jd.load("mnist", root=tmp_path / "m", cache=False)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 10, 12)
    assert ds.shape == (1, 28, 28) and ds.levels == 256 and ds.logdet == 0.0
    assert ds.train.dtype == torch.float32 and ds.bits_per_dim_applies and ds.is_image
    train = arrays["train-images-idx3-ubyte"]
    assert np.array_equal(ds.train[:, 0].numpy(), train[:50])
    assert np.array_equal(ds.val[:, 0].numpy(), train[50:])  # validation = last sixth
    assert np.array_equal(ds.test[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert np.array_equal(ds.labels["val"].numpy(), arrays["train-labels-idx1-ubyte"][50:])


def test_mnist_default_folder_and_parent_root(tmp_path: Path) -> None:
    assert not jd.status("mnist")
    write_mnist(tmp_path / "userdata" / "mnist")
    assert jd.status("mnist")
    assert len(jd.load("mnist", cache=False).train) == 50
    assert len(jd.load("mnist", root=tmp_path / "userdata", cache=False).test) == 12


def test_mnist_missing_folder_says_which_files_go_where(tmp_path: Path) -> None:
    err = unavailable("mnist")
    folder = str(tmp_path / "userdata" / "mnist")
    assert folder in err.cause and "does not exist" in err.cause
    for name in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert name in err.cause and name in err.fix
    assert f"mkdir -p {folder}" in err.fix
    st = jd.status("mnist")
    assert not st and st.cause == err.cause


def test_mnist_missing_one_file(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    err = unavailable("mnist", root=tmp_path / "m")
    assert "t10k-labels-idx1-ubyte" in err.cause and "train-images" not in err.cause


def test_mnist_truncated_and_bad_magic(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m", gz=False)
    path = tmp_path / "m" / "train-images-idx3-ubyte"
    good = path.read_bytes()
    path.write_bytes(good[:-100])
    err = unavailable("mnist", root=tmp_path / "m")
    assert str(path) in err.cause and "truncated or corrupt" in err.cause
    assert "intact copy" in err.fix
    path.write_bytes(b"\x12\x34" + good[2:])
    assert "bad magic number" in unavailable("mnist", root=tmp_path / "m").cause


def test_mnist_wrong_shape_and_label_count(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "t10k-images-idx3-ubyte.gz", np.zeros((12, 32, 32), np.uint8))
    assert "(12, 32, 32)" in unavailable("mnist", root=tmp_path / "m").cause
    write_mnist(tmp_path / "m")
    write_idx(tmp_path / "m" / "t10k-labels-idx1-ubyte.gz", np.zeros(11, np.uint8))
    assert "for 12 images" in unavailable("mnist", root=tmp_path / "m").cause


def test_mnist_corrupt_gzip(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not gzip")
    assert "cannot be read" in unavailable("mnist", root=tmp_path / "m").cause


# ---------------------------------------------------------------------------------------------
# CIFAR-10


@pytest.mark.parametrize("bytes_keys", [True, False])
def test_cifar_pickle_fixture(tmp_path: Path, bytes_keys: bool) -> None:
    batches = write_cifar(tmp_path / "cifar-10-batches-py", bytes_keys=bytes_keys)
    ds = jd.load("cifar10", root=tmp_path, cache=False)  # finds the cifar-10-batches-py folder
    assert (len(ds.train), len(ds.val), len(ds.test)) == (18, 2, 4)
    assert ds.shape == (3, 32, 32) and ds.levels == 256
    first = batches["data_batch_1"][0]
    # channel-major rows: the first 1024 values are the red plane, row-major 32x32
    assert np.array_equal(ds.train[0, 0].numpy(), first[0, :1024].reshape(32, 32))
    assert np.array_equal(ds.train[1, 2].numpy(), first[1, 2048:].reshape(32, 32))
    assert np.array_equal(ds.val.numpy().reshape(2, -1), batches["data_batch_5"][0][2:])
    assert ds.labels["test"].tolist() == batches["test_batch"][1]


def test_cifar_missing_and_malicious_files(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "test_batch").unlink()
    err = unavailable("cifar10", root=tmp_path / "c")
    assert "test_batch" in err.cause and "data_batch_1" not in err.cause
    assert "cifar-10-python.tar.gz" in err.fix

    class Evil:
        def __reduce__(self) -> tuple:
            return (os.system, ("echo pwned",))

    (tmp_path / "c" / "test_batch").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    err = unavailable("cifar10", root=tmp_path / "c")
    assert "refusing to unpickle" in err.cause and "test_batch" in err.cause


def test_cifar_wrong_width(tmp_path: Path) -> None:
    write_cifar(tmp_path / "c")
    blob = pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}, protocol=2)
    (tmp_path / "c" / "data_batch_3").write_bytes(blob)
    err = unavailable("cifar10", root=tmp_path / "c")
    assert "data_batch_3" in err.cause and "not 3072" in err.cause


# ---------------------------------------------------------------------------------------------
# POWER


def maf_power_reference(data: np.ndarray) -> tuple[np.ndarray, ...]:
    """MAF's datasets/power.py, transcribed step by step."""
    rng = np.random.RandomState(42)
    data = data.copy()
    rng.shuffle(data)
    n = data.shape[0]
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack((gap_noise, voltage_noise, sm_noise, time_noise))
    n_test = int(0.1 * data.shape[0])
    test, data = data[-n_test:], data[0:-n_test]
    n_val = int(0.1 * data.shape[0])
    val, train = data[-n_val:], data[0:-n_val]
    both = np.vstack((train, val))
    mu, s = both.mean(axis=0), both.std(axis=0)
    return (train - mu) / s, (val - mu) / s, (test - mu) / s, s


def test_power_fixture_matches_maf_code(tmp_path: Path) -> None:
    raw = write_power(tmp_path / "power")
    ds = jd.load("power", root=tmp_path / "power", cache=False)
    train, val, test, s = maf_power_reference(raw)
    assert ds.shape == (6,) and ds.levels is None and not ds.bits_per_dim_applies
    assert (len(ds.train), len(ds.val), len(ds.test)) == (162, 18, 20)
    for got, want in ((ds.train, train), (ds.val, val), (ds.test, test)):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    assert ds.logdet == pytest.approx(-np.log(s).sum())
    np.testing.assert_allclose(
        np.linalg.slogdet(np.array(ds.meta["affine"]["matrix"]))[1], ds.logdet, rtol=1e-12
    )


def test_power_malformed(tmp_path: Path) -> None:
    (tmp_path / "power").mkdir()
    np.save(tmp_path / "power" / "data.npy", np.zeros((200, 7)))
    err = unavailable("power", root=tmp_path / "power")
    assert "(200, 7)" in err.cause and "(2049280, 8)" in err.fix
    np.save(tmp_path / "power" / "data.npy", np.array([{"a": 1}], dtype=object))
    assert "cannot be read as a .npy array" in unavailable("power", root=tmp_path / "power").cause
    (tmp_path / "power" / "data.npy").write_text("not numpy")
    assert "data.npy" in unavailable("power", root=tmp_path / "power").cause


def test_power_missing_names_archive_layout(tmp_path: Path) -> None:
    err = unavailable("power")
    assert "data.npy" in err.cause
    assert "data/power/" in err.fix and "10.5281/zenodo.1161203" in err.fix
    assert "JACFREE_DATA_DIR" in err.fix


# ---------------------------------------------------------------------------------------------
# GAS


@needs("pandas")
def test_gas_fixture(tmp_path: Path) -> None:
    write_gas(tmp_path / "gas")
    ds = jd.load("gas", root=tmp_path, cache=False)  # root = the archive's data/ folder
    assert ds.shape == (8,)
    assert ds.meta["columns"] == [f"sensor{j}" for j in range(9, 17)]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (243, 27, 30)
    # standardised over all rows (ddof 1), split in file order
    full = torch.cat([ds.train, ds.val, ds.test]).double()
    np.testing.assert_allclose(full.mean(0).numpy(), 0, atol=1e-6)
    np.testing.assert_allclose(full.std(0).numpy(), 1, atol=1e-5)


@needs("pandas")
def test_gas_malformed(tmp_path: Path) -> None:
    (tmp_path / "gas").mkdir()
    with (tmp_path / "gas" / "ethylene_CO.pickle").open("wb") as f:
        pickle.dump({"not": "a frame"}, f)
    err = unavailable("gas", root=tmp_path / "gas")
    assert "not a DataFrame with Time, Meth, Eth" in err.cause
    (tmp_path / "gas" / "ethylene_CO.pickle").write_bytes(b"garbage")
    err = unavailable("gas", root=tmp_path / "gas")
    assert "cannot be unpickled" in err.cause and "to_pickle" in err.fix


# ---------------------------------------------------------------------------------------------
# HEPMASS


def maf_hepmass_reference(folder: Path) -> tuple[np.ndarray, ...]:
    """MAF's datasets/hepmass.py with pandas (as_matrix -> to_numpy, iteritems -> items)."""
    import pandas as pd

    data_train = pd.read_csv(folder / "1000_train.csv", index_col=False)
    data_test = pd.read_csv(folder / "1000_test.csv", index_col=False)
    data_train = data_train[data_train[data_train.columns[0]] == 1]
    data_train = data_train.drop(data_train.columns[0], axis=1)
    data_test = data_test[data_test[data_test.columns[0]] == 1]
    data_test = data_test.drop(data_test.columns[0], axis=1)
    data_test = data_test.drop(data_test.columns[-1], axis=1)
    mu, s = data_train.mean(), data_train.std()
    data_train = ((data_train - mu) / s).to_numpy()
    data_test = ((data_test - mu) / s)[list(data_test.columns)].to_numpy()
    features_to_remove = []
    for i, feature in enumerate(data_train.T):
        c = Counter(feature)
        max_count = np.array([v for k, v in sorted(c.items())])[0]
        if max_count > 5:
            features_to_remove.append(i)
    keep = [i for i in range(data_train.shape[1]) if i not in features_to_remove]
    data_train = data_train[:, keep]
    data_test = data_test[:, [i for i in range(data_test.shape[1]) if i not in features_to_remove]]
    n_val = int(data_train.shape[0] * 0.1)
    return data_train[0:-n_val], data_train[-n_val:], data_test


def test_hepmass_fixture_matches_maf_code(tmp_path: Path) -> None:
    write_hepmass(tmp_path / "hepmass")
    ds = jd.load("hepmass", root=tmp_path / "hepmass", cache=False)
    assert ds.shape == (21,)
    assert "mass" in ds.meta["dropped"] and len(ds.meta["dropped"]) == 7
    if importlib.util.find_spec("pandas") is not None:
        for got, want in zip(
            (ds.train, ds.val, ds.test), maf_hepmass_reference(tmp_path / "hepmass"), strict=True
        ):
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)


def test_hepmass_malformed(tmp_path: Path) -> None:
    write_hepmass(tmp_path / "hepmass")
    path = tmp_path / "hepmass" / "1000_test.csv"
    path.write_text("f0,f1\n1,2\n")
    err = unavailable("hepmass", root=tmp_path / "hepmass")
    assert "1000_test.csv" in err.cause and "# label" in err.fix + err.cause
    path.write_text("# label,f0,f1\n1,abc,2\n")
    assert "cannot be parsed" in unavailable("hepmass", root=tmp_path / "hepmass").cause


# ---------------------------------------------------------------------------------------------
# MINIBOONE


def test_miniboone_fixture(tmp_path: Path) -> None:
    folder = tmp_path / "miniboone"
    folder.mkdir()
    raw = np.random.default_rng(8).standard_normal((200, 43)) * 3 + 1
    np.save(folder / "data.npy", raw)
    ds = jd.load("miniboone", root=folder, cache=False)
    assert ds.shape == (43,) and (len(ds.train), len(ds.val), len(ds.test)) == (162, 18, 20)
    both = raw[:180]
    mu, s = both.mean(0), both.std(0)
    np.testing.assert_allclose(ds.test.numpy(), (raw[180:] - mu) / s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.to_original(ds.test).numpy(), raw[180:], rtol=1e-5, atol=1e-5)
    np.save(folder / "data.npy", raw[:, :40])
    assert "(200, 40)" in unavailable("miniboone", root=folder).cause


# ---------------------------------------------------------------------------------------------
# BSDS300


@needs("h5py")
def test_bsds300_fixture(tmp_path: Path) -> None:
    write_bsds(tmp_path / "BSDS300")
    ds = jd.load("bsds300", root=tmp_path, cache=False)
    assert ds.shape == (63,) and (len(ds.train), len(ds.val), len(ds.test)) == (100, 20, 30)
    assert ds.logdet == 0.0


@needs("h5py")
def test_bsds300_malformed(tmp_path: Path) -> None:
    import h5py

    folder = tmp_path / "BSDS300"
    folder.mkdir()
    with h5py.File(folder / "BSDS300.hdf5", "w") as f:
        f.create_dataset("train", data=np.zeros((10, 63)))
    assert "['validation', 'test']" in unavailable("bsds300", root=folder).cause
    (folder / "BSDS300.hdf5").write_bytes(b"not hdf5")
    assert "cannot be read as HDF5" in unavailable("bsds300", root=folder).cause


# ---------------------------------------------------------------------------------------------
# Parkinsons (DKEF recipe)


def test_parkinsons_fixture(tmp_path: Path) -> None:
    write_parkinsons(tmp_path / "parkinsons")
    ds = jd.load("parkinsons", root=tmp_path / "parkinsons", cache=False)
    assert ds.shape == (15,)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (162, 18, 20)
    assert ds.meta["dropped_correlated"] == [
        "total_UPDRS",
        "Jitter(Abs)",
        "Shimmer(dB)",
        "Shimmer:APQ5",  # first of each pair
    ]
    whole = torch.cat([ds.train, ds.val, ds.test]).double()
    cov = torch.cov(whole.T).numpy()  # whitened (identity) plus the N(0, 0.05^2) noise
    np.testing.assert_allclose(cov, np.eye(15) * (1 + 0.05**2), atol=0.03)
    matrix = np.array(ds.meta["affine"]["matrix"])
    assert ds.logdet == pytest.approx(np.linalg.slogdet(matrix)[1], rel=1e-10)


def test_parkinsons_malformed(tmp_path: Path) -> None:
    folder = tmp_path / "parkinsons"
    folder.mkdir()
    (folder / "parkinsons_updrs.data").write_text("a,b,c\n1,2,3\n")
    err = unavailable("parkinsons", root=folder)
    assert "3 header names" in err.cause and "expected 22" in err.cause
    err = unavailable("parkinsons", root=tmp_path / "nowhere")
    assert "parkinsons_updrs.data" in err.cause + err.fix and "does not exist" in err.cause


# ---------------------------------------------------------------------------------------------
# cache with user folders


def test_user_folder_cache_round_trip_and_invalidation(tmp_path: Path) -> None:
    write_mnist(tmp_path / "m")
    cache = tmp_path / "c"
    first = jd.load("mnist", root=tmp_path / "m", cache_dir=cache)
    files = list(cache.glob("mnist-s0-*"))
    assert len(files) == 1 and "cache_path" not in first.meta
    second = jd.load("mnist", root=tmp_path / "m", cache_dir=cache)
    assert second.meta["cache_path"] == str(files[0])
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(first, split), getattr(second, split))
        assert torch.equal(first.labels[split], second.labels[split])
    # a changed source file makes a new entry and is re-read
    write_mnist(tmp_path / "m", n_train=66)
    third = jd.load("mnist", root=tmp_path / "m", cache_dir=cache)
    assert len(third.train) == 55 and "cache_path" not in third.meta
    assert len(list(cache.glob("mnist-s0-*"))) == 2

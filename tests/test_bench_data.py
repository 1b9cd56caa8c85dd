"""``jacfree bench data``: sizes, licences and load timings of the available datasets."""

from __future__ import annotations

import csv

from jacfree.bench import data_loading
from jacfree.cli import main


def test_measure_reports_sizes_and_both_load_times() -> None:
    row = data_loading.measure("digits", repeats=2)
    assert (row["train"], row["val"], row["test"]) == (1258, 180, 359)
    assert row["shape"] == "1x8x8"
    assert row["first_load_s"] > 0 and row["cached_load_s"] > 0
    assert "BSD-3" in row["licence"] and row["source"]


def test_cli_lists_every_dataset_and_writes_the_csv(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(data_loading.registry, "names", lambda: ["moons", "power"])
    assert main(["bench", "data", "--repeats", "1", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "moons" in out and "power          not available here: not found: data.npy" in out
    rows = list(csv.DictReader((tmp_path / "data_loading.csv").open()))
    assert [r["name"] for r in rows] == ["moons"]
    assert float(rows[0]["cached_load_s"]) >= 0

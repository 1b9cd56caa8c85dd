"""``jacfree bench snf`` end to end on tiny sizes: tables, CSVs, plots, environment, targets.

No timing assertions: the figures depend on the machine and its load.
"""

from __future__ import annotations

import csv
import json

import pytest
import torch

from jacfree.bench import snf
from jacfree.cli import main

TINY_CASES = ["dense-16", "conv-1x8x8", "fc2l-16", "cnn9l-1x8x8", "glow-1x8x4"]


def _rows(path):  # type: ignore[no-untyped-def]
    with path.open() as f:
        return list(csv.DictReader(f))


def test_bench_snf_end_to_end(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "jacfree[plot]"')
    out = tmp_path / "bench"
    argv = ["bench", "snf", "--cases", *TINY_CASES, "--dims", "8", "16"]
    argv += ["--repeats", "2", "--warmup", "1", "--batch", "8", "--sample-batch", "4"]
    threads = torch.get_num_threads()
    try:
        assert main([*argv, "--out", str(out), "--quiet", "--clock", "process"]) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    for case in TINY_CASES:
        assert case in text
    assert "sampling through R vs exact inverse, conv-1x8x8" in text
    assert "log-log slope" in text

    rows = _rows(out / snf.CSV_NAME)
    assert list(rows[0]) == list(snf.CSV_COLUMNS)
    # every case: two training-step rows and three sampling rows
    assert len(rows) == 5 * len(TINY_CASES)
    for case in TINY_CASES:
        mine = {(r["measure"], r["variant"]) for r in rows if r["case"] == case}
        assert mine == {("step", v) for v in snf.STEP_VARIANTS} | {
            ("sample", v) for v in snf.SAMPLE_VARIANTS
        }
    for r in rows:
        assert float(r["median_ms"]) > 0 and int(r["repeats"]) == 2
        assert r["threads"] == "1" and r["clock"] == "process"
    step = {r["case"]: r for r in rows if r["measure"] == "step" and r["variant"] == "selfnorm"}
    assert int(step["dense-16"]["params"]) == 2 * 16 * 16 + 16  # W, R and b
    scaling = _rows(out / snf.SCALING_CSV_NAME)
    assert sorted({int(r["dim"]) for r in scaling}) == [8, 16]
    assert {r["variant"] for r in scaling} == set(snf.STEP_VARIANTS)
    assert list(scaling[0]) == list(snf.CSV_COLUMNS)
    # the dense sweep is bench scaling's sweep of FCFlow(D, layers=1): one SquareAffine(D)
    params = {(r["dim"], r["variant"]): int(r["params"]) for r in scaling}
    assert params[("8", "selfnorm")] == 2 * 8 * 8 + 8 and params[("8", "exact")] == 8 * 8 + 8
    assert {r["case"] for r in scaling} == {"dense-8", "dense-16"}

    env = json.loads((out / snf.ENV_NAME).read_text())
    assert env["environment"]["torch_threads"] == 1
    assert env["config"]["cases"] == TINY_CASES
    assert {t["case"] for t in env["targets"]} == set(TINY_CASES)  # the sampling targets
    for name in (snf.PLOT_NAME, snf.SCALING_PLOT_NAME):
        assert (out / name).stat().st_size > 0


def test_targets_are_checked_from_the_rows() -> None:
    rows = [
        {"case": "fc2l-784", "measure": "step", "variant": "selfnorm", "speedup": 1.5},
        {"case": "fc2l-3072", "measure": "step", "variant": "selfnorm", "speedup": 2.0},
        {"case": "fc2l-3072", "measure": "sample", "variant": "learned-inverse", "speedup": 0.9},
    ]
    got = {(t["case"], t["minimum"]): t["met"] for t in snf.check_targets(rows)}
    assert got == {("fc2l-784", 1.3): True, ("fc2l-3072", 3.0): False, ("fc2l-3072", 1.0): False}


def test_cases_parse_and_bad_ones_are_explained() -> None:
    case = snf.parse_case("conv-4x14x14")
    assert (case.kind, case.shape, case.dim) == ("conv", (4, 14, 14), 784)
    assert snf.parse_case("fc2l-3072").dim == 3072
    for name in snf.DEFAULT_CASES:
        snf.parse_case(name)
    with pytest.raises(ValueError, match="unknown benchmark case 'dense-3x3'"):
        snf.parse_case("dense-3x3")
    with pytest.raises(ValueError, match="divisible by 4"):
        snf.parse_case("cnn9l-1x6x6")
    with pytest.raises(ValueError, match="variants"):
        snf.snf_benchmark(["dense-4"], (), variants=("relative",))

"""The benchmark framework: the one runner (``run_variants``) and the one output writer.

No timing assertions: the figures depend on the machine and its load.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

import jacfree as jf
from jacfree.bench.common import (
    PROFILE_COLUMNS,
    STAT_COLUMNS,
    text_table,
    write_csv,
    write_results,
)
from jacfree.bench.runner import check_run, check_variants, run_variants
from jacfree.bench.step import TrainingStep
from jacfree.bench.timing import TimingOptions

FAST = TimingOptions(repeats=2, warmup=1, progress=False)


def _steps(loss_scale: float = 1.0) -> dict[str, TrainingStep]:
    torch.manual_seed(0)
    batches = [torch.randn(8, 5)]
    flows = {v: jf.FCFlow(5, layers=2) for v in ("exact", "floor")}
    steps = {v: TrainingStep(f, v, batches, lr=1e-3) for v, f in flows.items()}
    if loss_scale != 1.0:
        loss = steps["floor"].loss_fn
        steps["floor"].loss_fn = lambda x: loss(x) * loss_scale
    return steps


def test_run_variants_gives_one_row_per_variant_with_the_summary_and_profile_columns() -> None:
    rows = run_variants(_steps(), FAST, torch.device("cpu"), what="D=5")
    assert list(rows) == ["exact", "floor"]
    for row in rows.values():
        assert set(STAT_COLUMNS) | set(PROFILE_COLUMNS) | {"optimizer", "threads", "clock"} == set(
            row
        )
        assert row["repeats"] == 2
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
        assert math.isclose(row["iqr_ms"], row["q3_ms"] - row["q1_ms"], abs_tol=1e-9)
        assert row["compile"] == "eager" and row["clock"] == "wall"
        assert row["ops_per_step"] > 0  # the profiled step dispatched aten operations
        assert row["optimizer"].startswith("adam-")


def test_run_variants_refuses_a_step_whose_loss_is_not_finite() -> None:
    steps = _steps(loss_scale=math.nan)
    with pytest.raises(FloatingPointError, match=r"the floor step of D=5 .*non-finite loss"):
        run_variants(steps, FAST, torch.device("cpu"), what="D=5", hint="Try float64.")


def test_timing_options_are_checked_and_built_from_keyword_arguments() -> None:
    assert TimingOptions.of(None, {"repeats": 3}, budget=5.0) == TimingOptions(3, budget=5.0)
    assert TimingOptions.of(FAST, {}, budget=5.0) is FAST
    with pytest.raises(TypeError, match="not both"):
        TimingOptions.of(FAST, {"repeats": 3}, budget=5.0)
    with pytest.raises(TypeError, match="unexpected keyword argument"):
        TimingOptions.of(None, {"repeat": 3}, budget=5.0)
    for kwargs, message in (
        ({"repeats": 0}, "repeats"),
        ({"warmup": -1}, "warmup"),
        ({"budget": 0}, "budget"),
        ({"clock": "cpu"}, "unknown clock"),
    ):
        with pytest.raises(ValueError, match=message):
            TimingOptions(**kwargs)


def test_run_checks_name_the_problem() -> None:
    assert check_run("cpu", torch.float64, batch=3) == torch.device("cpu")
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        check_run("cpu", torch.float32, batch=0)
    with pytest.raises(ValueError, match="float16"):
        check_run("cpu", torch.float16)
    assert check_variants(["b", "a"], ("a", "b")) == ("b", "a")
    for bad in (["a", "a"], [], ["c"]):
        with pytest.raises(ValueError, match="variants"):
            check_variants(bad, ("a", "b"))


def test_csv_header_is_the_row_keys_and_cells_are_formatted(tmp_path) -> None:
    rows = [{"dim": 8, "median_ms": 1.234567, "note": None}, {"dim": 16, "extra": "x"}]
    with write_csv(rows, tmp_path / "a.csv").open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["dim", "median_ms", "note", "extra"]
        table = list(reader)
    assert table[0] == {"dim": "8", "median_ms": "1.2346", "note": "", "extra": ""}
    with write_csv(rows, tmp_path / "b.csv", ["median_ms", "dim"], float_format=None).open() as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == ["median_ms", "dim"]  # given columns: in order, extras dropped
        assert next(reader)["median_ms"] == "1.234567"


def test_write_results_writes_every_csv_the_environment_and_the_plots(tmp_path) -> None:
    rows = [{"a": 1.0, "b": 2}]
    drawn = []

    def draw(path):  # type: ignore[no-untyped-def]
        drawn.append(path)
        path.write_bytes(b"png")
        return path

    paths = write_results(
        tmp_path,
        {"csv": ("x.csv", rows, ["b", "a"])},
        {"config": {"k": 1}},
        plots={"plot": ("x.png", draw)},
    )
    assert list(paths) == ["csv", "environment", "plot"]
    assert paths["csv"].read_text().splitlines() == ["b,a", "2,1.0000"]
    env = json.loads(paths["environment"].read_text())
    assert list(env) == ["environment", "config"]
    assert env["environment"]["torch"] == torch.__version__ and env["config"] == {"k": 1}
    assert drawn == [tmp_path / "x.png"]
    assert "plot" not in write_results(tmp_path / "no", {}, {}, plots=None)


def test_text_table_aligns_columns() -> None:
    lines = text_table(["name", "ms"], [["a", "1.00"], ["long", "10.00"]], left=1)
    assert lines == ["name     ms", "a      1.00", "long  10.00"]
    assert text_table(["x"], []) == ["x"]

"""``jacfree train --conditional``: label-conditional image flows, a table column as context,
conditional test NLL, class-conditional sample grids, and the error paths."""

from __future__ import annotations

import json
import re

import pytest
import torch

import jacfree as jf
from jacfree.cli import main
from jacfree.data import load
from jacfree.kinds import build_model

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "jacfree[plot]"')

TINY = ["--epochs", "2", "--no-progress", "--batch-size", "200", "--threads", "1"]


def _nll(text: str) -> float:
    return float(re.search(r"test NLL given \S+ (-?[\d.]+) ± [\d.]+ nats", text).group(1))


def _run_model(run):
    payload = torch.load(run / "best.pt", weights_only=False)
    model = build_model(payload["spec"])
    model.load_state_dict(payload["model_state"])
    return model.eval(), payload["spec"]


@pytest.mark.parametrize(
    ("model", "options"),
    [("fc", []), ("cnn", ["--gradient", "selfnorm", "--layers", "2", "--set", "blocks=2"])],
)
def test_label_conditional_train_eval_sample(tmp_path, capsys, model, options):
    run = tmp_path / "run"
    argv = ["train", "--data", "digits", "--model", model, "--conditional", "label", *options]
    assert main([*argv, *TINY, "--out", str(run)]) == 0
    out = capsys.readouterr().out
    nll = _nll(out)
    results = json.loads((run / "results.json").read_text())
    assert results["spec"]["context_classes"] == 10
    assert results["test"]["nll_nats"] == pytest.approx(nll, abs=1e-3)
    assert (run / "samples.png").stat().st_size > 0  # the class-conditional grid

    # eval reports the same conditional NLL: -log p(x | label) averaged over the test split
    assert main(["eval", str(run)]) == 0
    assert _nll(capsys.readouterr().out) == pytest.approx(nll, abs=1e-3)
    flow, _ = _run_model(run)
    ds = load("digits")
    x = ds.test.reshape(len(ds.test), *flow.event_shape)
    want = jf.evaluate_nll(flow, (x, ds.labels["test"])).mean
    assert nll == pytest.approx(want, abs=1e-3)
    # ... which differs from the NLL under another labelling (the label is used)
    shuffled = jf.evaluate_nll(flow, (x, ds.labels["test"].roll(1))).mean
    assert shuffled != pytest.approx(want, abs=1e-3)

    grid = tmp_path / "grid.png"
    assert main(["sample", str(run), "-n", "3", "--out", str(grid)]) == 0
    assert "3 per class for 10 classes" in capsys.readouterr().out
    assert grid.stat().st_size > 0


def test_column_conditional_on_a_table(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", "ccpp", "--conditional", "column:-1", *TINY, "--out", str(run)]
    assert main(argv) == 0
    nll = _nll(capsys.readouterr().out)
    flow, spec = _run_model(run)
    assert spec["context_column"] == 4 and spec["data_shape"] == [4]
    ds = load("ccpp")
    want = jf.evaluate_nll(flow, (ds.test[:, :4], ds.test[:, 4:])).mean
    assert nll == pytest.approx(want, abs=1e-3)
    assert main(["sample", str(run), "-n", "5", "--out", str(tmp_path / "s.csv")]) == 0
    rows = [line.split(",") for line in (tmp_path / "s.csv").read_text().split()]
    assert len(rows) == 5 and all(len(r) == 5 for r in rows)
    # the context column is the test rows' own value
    torch.testing.assert_close(
        torch.tensor([float(r[4]) for r in rows]), ds.test[:5, 4].float(), rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "moons", "--conditional", "label"], "has none"),
        (["--data", "ccpp", "--conditional", "column:9"], "column 9"),
        (["--data", "ccpp", "--conditional", "colour"], "'label' or 'column:K'"),
    ],
)
def test_conditional_errors(tmp_path, capsys, argv, message):
    assert main(["train", *argv, *TINY, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err

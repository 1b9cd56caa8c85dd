"""The ``jacfree`` command line: a tiny end-to-end run, eval, sample, resume and error paths."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch

import jacfree as jf
from jacfree.cli import main
from jacfree.data import load
from jacfree.kinds import build_model
from jacfree.train import load_checkpoint

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "jacfree[plot]"')

TINY = ["--epochs", "2", "--no-progress", "--batch-size", "200"]


def _nll(text: str) -> float:
    return float(re.search(r"test NLL (-?[\d.]+) ± ([\d.]+) nats", text).group(1))


def test_train_eval_sample_on_digits(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "runs" / "digits-fc-relative"
    for name in (
        "checkpoint.pt",
        "best.pt",
        "metrics.jsonl",
        "results.json",
        "loss.png",
        "samples.png",
    ):
        assert (run / name).is_file(), name
    assert re.search(r"test NLL [\d.]+ ± [\d.]+ nats \(n=359\) = [\d.]+ ± [\d.]+ bits/dim", out)
    results = json.loads((run / "results.json").read_text())
    assert results["test"]["nll_nats"] == pytest.approx(_nll(out), abs=1e-3)
    assert results["test"]["bits_per_dim"] == pytest.approx(
        results["test"]["nll_nats"] / (64 * 0.6931471805599453)
    )

    assert main(["eval", str(run)]) == 0  # same seed, same noise: the same number
    assert _nll(capsys.readouterr().out) == pytest.approx(_nll(out), abs=1e-3)

    assert main(["sample", str(run), "-n", "9", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0

    # a second default run never overwrites the first one
    assert main(["train", *TINY, "--no-plots"]) == 0
    assert (tmp_path / "runs" / "digits-fc-relative-2" / "best.pt").is_file()


def test_train_on_a_toy_writes_a_density_plot(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--data", "moons", "--layers", "3", "--gradient", "exact", *TINY]) == 0
    run = tmp_path / "runs" / "moons-fc-exact"
    assert (run / "density.png").is_file()
    assert "bits/dim" not in capsys.readouterr().out  # continuous data: nats only
    assert main(["sample", str(run), "-n", "5"]) == 0
    rows = (run / "sampled-best-n5-seed0.csv").read_text().splitlines()
    assert len(rows) == 5
    assert all(len(r.split(",")) == 2 for r in rows)


def test_resume_and_refusal_to_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--no-plots", "--out", str(out)]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    assert main(["train", *TINY, "--no-plots", "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == before
    args = ["train", "--epochs", "3", "--no-progress", "--batch-size", "200", "--no-plots"]
    assert main([*args, "--out", str(out), "--resume"]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2, 3]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["eval", "nowhere"], "no checkpoint at nowhere;"),
        (["train", "--data", "no-such-set", *TINY], "unknown dataset 'no-such-set'"),
        (["train", "--epochs", "0", "--no-progress"], "argument --epochs: must be > 0, got 0"),
    ],
)
def test_errors_are_reported_without_a_traceback(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(("jacfree: error:", "usage: jacfree"))
    assert message in err
    assert "Traceback" not in err


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"garbage")
    assert main(["eval", str(tmp_path)]) == 2
    assert "damaged or truncated" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("jacfree") or shutil.which("jacfree", path=str(sys.prefix) + "/bin")
    assert exe, "the jacfree console script is not on PATH; reinstall with pip install -e ."
    done = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    assert done.stdout.startswith("jacfree ")


def test_selfnorm_run_samples_through_both_inverses(tmp_path, capsys):
    out = tmp_path / "snf"
    argv = ["train", *TINY, "--gradient", "selfnorm", "--out", str(out), "--geco-target", "0.1"]
    assert main(argv) == 0
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_recon"] >= 0 and "recon_weight" in r for r in rows)
    assert (out / "samples.png").is_file()
    capsys.readouterr()
    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    text = capsys.readouterr().out
    assert "through the exact inverse" in text and "through the learned inverse R" in text
    assert "mean |exact − learned|" in text


def test_learned_inverse_and_geco_need_a_selfnorm_model(tmp_path, capsys):
    out = tmp_path / "rel"
    assert main(["train", *TINY, "--no-plots", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--inverse", "learned"]) == 2
    assert "needs a model trained with --gradient selfnorm" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path / "g"), "--geco-target", "1"]) == 2
    assert "--geco-target needs" in capsys.readouterr().err


def test_checkpoint_that_does_not_fit_its_spec_is_reported(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--no-plots", "--out", str(out)]) == 0
    payload = torch.load(out / "best.pt", weights_only=True)
    payload["spec"]["layers"] = 3
    torch.save(payload, out / "best.pt")
    capsys.readouterr()
    assert main(["eval", str(out)]) == 2
    assert "does not fit the model its spec describes" in capsys.readouterr().err


def test_tabular_nll_is_reported_on_both_scales(tmp_path, capsys):
    out = tmp_path / "bc"
    assert main(["train", "--data", "breast-cancer", *TINY, "--no-plots", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    m = re.search(
        r"test NLL (-?[\d.]+) ± [\d.]+ nats \(n=57\); (-?[\d.]+) on the pre-processed", text
    )
    assert m, text
    results = json.loads((out / "results.json").read_text())["test"]
    logdet = load("breast-cancer").logdet
    assert logdet != 0
    assert results["nll_nats"] == pytest.approx(results["nll_nats_preprocessed"] - logdet)
    assert float(m.group(1)) == pytest.approx(results["nll_nats"], abs=1e-3)


def test_python_evaluate_gives_the_number_the_cli_prints(tmp_path, capsys):
    """A Python user evaluating a run trained on a standardised table with ``jf.evaluate`` gets
    the NLL on the original scale that ``jacfree train`` and ``jacfree eval`` print."""
    out = tmp_path / "bc"
    assert main(["train", "--data", "breast-cancer", *TINY, "--no-plots", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    printed = _nll(capsys.readouterr().out)
    state = load_checkpoint(out / "best.pt")
    spec = state["spec"]
    model = build_model(spec)
    model.load_state_dict(state["model_state"])
    ds = load("breast-cancer")
    result = jf.evaluate(model, ds, spec=spec)
    assert result.nll is not None and result.nll.n == len(ds.test) == 57
    assert result.nll.mean == pytest.approx(printed, abs=1e-3)
    recorded = json.loads((out / "results.json").read_text())["test"]
    assert result.as_dict() == pytest.approx(recorded)
    # the original scale: the loaded-scale NLL minus the standardisation's log-det
    loaded = jf.evaluate_nll(model, ds.test)
    assert ds.logdet != 0
    assert result.nll.mean == pytest.approx(loaded.mean - ds.logdet)
    assert result.nll_preprocessed == pytest.approx(loaded.mean)
    assert result.bits_per_dim is None  # a continuous table: no bits/dim

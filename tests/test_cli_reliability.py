"""The command line refuses what it would otherwise ignore or get wrong, and says why.

Each case: the command, the clear message (naming the problem and the fix), exit status 2, and
nothing written or overwritten. Then the first-use conveniences: help with defaults, the model
list, full settings in results.json, the metrics and plots of a run.
"""

from __future__ import annotations

import json

import pytest
import torch

from jacfree.cli import main

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "jacfree[plot]"')

TINY = ["--epochs", "2", "--no-progress", "--batch-size", "200", "--threads", "1"]
TOY = ["--epochs", "1", "--no-progress", "--batch-size", "500", "--threads", "1", "--no-plots"]


def _refused(argv: list[str], capsys: pytest.CaptureFixture, *messages: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for message in messages:
        assert message in err, err
    return err


@pytest.mark.parametrize(
    ("options", "messages"),
    [
        (["--objective", "fd_ssm"], ["--objective does not apply to model kind 'fc'", "layers"]),
        (["--set", "foo=1"], ["--set foo=... does not apply", "paper_bias_rule", "recon_weight"]),
        (["--set", "paper_bias_rule=maybe"], ["option paper_bias_rule must be bool, got 'maybe'"]),
        (["--set", "layers=2.5"], ["option layers must be int, got '2.5'"]),
        (["--eps", "0.1"], ["--eps does not apply to model kind 'fc'"]),
        (["--clip", "-1"], ["argument --clip: must be > 0, got -1"]),
        (["--lr", "0"], ["argument --lr: must be > 0, got 0"]),
        (["--allow-changes"], ["--allow-changes only applies with --resume"]),
        (["--resume"], ["--resume needs the run folder"]),
    ],
)
def test_options_that_would_be_ignored_or_harmful_are_refused(
    tmp_path, monkeypatch, capsys, options, messages
):
    monkeypatch.chdir(tmp_path)
    _refused(["train", *TINY, *options], capsys, *messages)
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_options_of_another_model_kind_are_refused_for_energies(tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["train", "--data", "8gaussians", "--model", "energy-mlp", *TOY, "--out", str(out)]
    _refused([*argv, "--gradient", "selfnorm"], capsys, "--gradient does not apply", "objective")
    _refused([*argv, "--logit-alpha", "0.01"], capsys, "--logit-alpha does not apply")
    assert not out.exists()
    assert main(argv) == 0
    spec = json.loads((out / "results.json").read_text())["spec"]
    assert "gradient" not in spec and "logit_alpha" not in spec
    assert spec["objective"] == "fd_ssm"


def test_set_values_are_typed_by_their_option(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--no-plots", "--out", str(out), "--set", "paper_bias_rule=no"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["paper_bias_rule"] is False
    assert results["spec"]["gradient"] == "relative"  # the kind's default, recorded
    settings = results["settings"]
    assert settings["lr"] == 1e-3 and settings["batch_size"] == 200 and settings["seed"] == 0
    assert settings["epochs"] == 2 and settings["data"] == "digits"


def test_divergence_at_a_large_learning_rate_is_an_error(tmp_path, capsys):
    out = tmp_path / "run"
    _refused(
        # plain Adam: the default RelativeAdam's trust region keeps this run finite
        ["train", *TINY, "--lr", "10", "--optimizer", "adam", "--out", str(out)],
        capsys,
        "training diverged: the gradient norm reached",
        f"nothing was saved in {out}",
        "Lower the learning rate",
    )
    assert not (out / "checkpoint.pt").exists() and not (out / "results.json").exists()
    argv = ["train", "--data", "8gaussians", "--model", "energy-mlp", *TOY, "--lr", "10"]
    _refused([*argv, "--out", str(tmp_path / "e")], capsys, "training diverged")


def test_resume_refuses_other_data_model_or_settings(tmp_path, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", "8gaussians", *TOY, "--out", str(out)]
    assert main(base) == 0
    before = (out / "checkpoint.pt").read_bytes()
    other_data = ["train", "--data", "checkerboard", *TOY[2:], "--epochs", "2"]
    _refused([*other_data, "--out", str(out), "--resume"], capsys,
             "data: saved '8gaussians', now 'checkerboard'")  # fmt: skip
    _refused([*base, "--model", "energy-mlp", "--epochs", "2", "--resume"], capsys,
             "model: saved 'fc', now 'energy-mlp'")  # fmt: skip
    _refused([*base, "--layers", "3", "--epochs", "2", "--resume"], capsys,
             "spec.layers: saved None, now 3")  # fmt: skip
    _refused([*base, "--lr", "0.01", "--epochs", "2", "--resume"], capsys,
             "--lr: saved 0.001, now 0.01", "--allow-changes")  # fmt: skip
    assert (out / "checkpoint.pt").read_bytes() == before
    assert main([*base, "--epochs", "2", "--patience", "5", "--resume"]) == 0  # may change
    assert main([*base, "--lr", "0.01", "--epochs", "3", "--resume", "--allow-changes"]) == 0
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [1e-3, 1e-3, 1e-2]


def test_overwrite_removes_the_previous_runs_files_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    assert (out / "loss.png").is_file() and (out / "samples.png").is_file()
    assert main(["train", *TINY, "--no-plots", "--out", str(out), "--overwrite"]) == 0
    assert not list(out.glob("*.png"))
    assert (out / "best.pt").is_file()


def test_sample_keeps_the_training_samples_and_says_how_it_sampled(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    before = (run / "samples.png").read_bytes()
    assert main(["sample", str(run), "-n", "4"]) == 0
    assert "through the exact inverse" in capsys.readouterr().out
    assert (run / "samples.png").read_bytes() == before
    assert (run / "sampled-best-n4-seed0.png").is_file()
    energy = tmp_path / "energy"
    argv = ["train", "--data", "8gaussians", "--model", "energy-mlp", *TOY, "--out", str(energy)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["sample", str(energy), "-n", "3", "--seed", "1"]) == 0
    text = capsys.readouterr().out
    assert "by Langevin dynamics" in text and "inverse" not in text


def test_eval_on_data_of_another_shape_is_an_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--no-plots", "--out", str(run)]) == 0
    shapes = "per-sample shape (1, 8, 8) (digits), but moons has shape (2,)"
    _refused(["eval", str(run), "--data", "moons"], capsys, shapes, "--data digits")


def test_an_unwritable_out_folder_fails_before_training(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    _refused(["train", *TINY, "--out", str(blocker / "run")], capsys,
             "cannot write to the run folder", "--out")  # fmt: skip


def test_ctrl_c_says_where_the_checkpoint_is_and_how_to_resume(tmp_path, capsys, monkeypatch):
    import jacfree.cli as cli

    class Interrupt:
        def __init__(self) -> None:
            self.steps = 0

        def on_step(self, model, loss, diagnostics) -> None:
            self.steps += 1
            if self.steps == 12:  # in epoch 2 (9 steps per epoch)
                raise KeyboardInterrupt

        def on_epoch_end(self, model, row) -> None:
            pass

        def state_dict(self) -> dict:
            return {}

        def load_state_dict(self, state: dict) -> None:
            pass

    real_fit = cli.fit

    def fit_interrupted(*args, **kwargs):
        return real_fit(*args, **{**kwargs, "callbacks": [*kwargs["callbacks"], Interrupt()]})

    monkeypatch.setattr(cli, "fit", fit_interrupted)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert f"the last checkpoint (epoch 1) is in {run}" in err and "--resume" in err
    assert "Traceback" not in err


def test_help_models_and_metrics_for_first_use(tmp_path, capsys):
    assert main(["train", "--help"]) == 0
    assert "(default: 0.001)" in capsys.readouterr().out
    assert main(["models"]) == 0
    text = capsys.readouterr().out
    for kind in ("fc:", "cnn:", "glow:", "energy-mlp:", "nice:", "dkef:", "ncsn:"):
        assert kind in text
    assert "paper_bias_rule (bool)" in text and "by Langevin dynamics" in text
    run = tmp_path / "run"
    assert main(["train", *TINY, "--no-plots", "--out", str(run)]) == 0
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    # the exact NLL of training rows each epoch, comparable with val_nll (the relative-gradient
    # training loss is not the NLL): that of the final (best) model on the same rows
    from jacfree.cli import _load_run
    from jacfree.data import load
    from jacfree.kinds import model_input
    from jacfree.train import TrainNLL, evaluate_nll

    model, _, _ = _load_run(run, "best", torch.device("cpu"))
    rows_used = TrainNLL(model_input(load("digits").train, model)).data
    assert len(rows_used) == 1000
    assert rows[-1]["train_nll"] == pytest.approx(evaluate_nll(model, rows_used).mean, rel=1e-6)
    assert rows[-1]["train_nll"] != pytest.approx(rows[-1]["train_loss"], rel=1e-2)


def test_score_matching_metrics_are_a_table(tmp_path, capsys):
    run = tmp_path / "e"
    argv = ["train", "--data", "8gaussians", "--model", "energy-mlp", *TOY, "--out", str(run)]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("test metric"))
    assert lines[head].split() == ["test", "metric", "value", "stderr", "n"]
    assert lines[head + 1].split()[0] == "exact_sm" and "±" in lines[head + 1]


def test_nice_width_follows_the_data_dimension():
    from jacfree.kinds import build_model

    small = build_model({"kind": "nice", "data_shape": [2], "levels": None})
    assert sum(p.numel() for p in small.parameters()) < 100_000  # 12 M with width 1000
    big = build_model({"kind": "nice", "data_shape": [1, 28, 28], "levels": None})
    first = next(m for m in big.modules() if isinstance(m, torch.nn.Linear))
    assert first.out_features == 1000  # the paper's width for MNIST


@pytest.mark.slow
def test_compiled_training_from_the_command_line_is_recorded(tmp_path, capsys):
    run, eager = tmp_path / "compiled", tmp_path / "eager"
    argv = ["train", "--epochs", "1", "--batch-size", "200", "--no-progress", "--no-plots"]
    assert main([*argv, "--threads", "1", "--out", str(eager)]) == 0
    assert main([*argv, "--threads", "1", "--compile", "--out", str(run)]) == 0
    assert json.loads((run / "results.json").read_text())["settings"]["compile"] == "default"
    a, b = (json.loads((r / "metrics.jsonl").read_text()) for r in (eager, run))
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)


def test_eval_and_sample_take_threads_and_refuse_non_positive_counts(tmp_path, capsys):
    out = tmp_path / "e"
    argv = ["train", "--data", "8gaussians", "--model", "energy-mlp", *TOY, "--out", str(out)]
    assert main(argv) == 0
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["eval", str(out), "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    for args, message in (
        (["sample", str(out), "-n", "0"], "argument -n/--n: must be > 0, got 0"),
        (["eval", str(out), "--threads", "0"], "argument --threads: must be > 0, got 0"),
        (["eval", str(out), "--ood-n", "-5"], "argument --ood-n: must be > 0, got -5"),
    ):
        _refused(args, capsys, message)

"""The training loop: exact resume, best-checkpoint early stopping, failure safety, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

import jacfree as jf
from jacfree.train import CheckpointError, fit, load_checkpoint, save_checkpoint


def _digits_like(n: int = 300, d: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 5, (n, d), generator=g).float()


def _model() -> jf.FCFlow:
    torch.manual_seed(1)
    return jf.FCFlow(16, layers=2, preprocess=[jf.Dequantize(5), jf.LogitTransform(5)])


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    x, v = _digits_like(), _digits_like(80, seed=1)
    straight = _model()
    full = fit(
        straight, x, v, epochs=6, batch_size=32, lr=3e-3, progress=False, out_dir=tmp_path / "a"
    )
    interrupted = _model()
    fit(
        interrupted,
        x,
        v,
        epochs=3,
        batch_size=32,
        lr=3e-3,
        progress=False,
        out_dir=tmp_path / "b",
        restore_best=False,
    )
    resumed = _model()  # a fresh process would rebuild the model from scratch
    res = fit(
        resumed,
        x,
        v,
        epochs=6,
        batch_size=32,
        lr=3e-3,
        progress=False,
        out_dir=tmp_path / "b",
        resume=True,
    )
    assert len(res.history) == 6
    for a, b in zip(full.history, res.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-6)
        assert a["val_nll"] == pytest.approx(b["val_nll"], rel=1e-6, abs=1e-6)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3, 4, 5, 6]


def test_early_stopping_keeps_the_best_parameters(tmp_path):
    scores = iter([5.0, 3.0, 4.0, 6.0, 7.0, 8.0])
    snapshots = []

    def metric(model, _val):
        snapshots.append({k: t.clone() for k, t in model.state_dict().items()})
        return next(scores)

    model = _model()
    x = _digits_like()
    res = fit(
        model,
        x,
        x[:10],
        epochs=6,
        batch_size=64,
        patience=2,
        val_metric=metric,
        val_name="score",
        progress=False,
        out_dir=tmp_path,
    )
    assert res.best_epoch == 2 and res.best_val == 3.0
    assert res.stopped_early and len(res.history) == 4
    for k, t in model.state_dict().items():  # restored in memory ...
        torch.testing.assert_close(t, snapshots[1][k], rtol=0, atol=0)
    best = load_checkpoint(tmp_path / "best.pt")  # ... and on disk
    assert best["epoch"] == 2
    for k, t in best["model_state"].items():
        torch.testing.assert_close(t, snapshots[1][k], rtol=0, atol=0)
    last = load_checkpoint(tmp_path / "checkpoint.pt")
    assert last["epoch"] == 4 and last["best_epoch"] == 2


def test_nan_loss_raises_and_keeps_the_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def objective(model, x):
        calls["n"] += 1
        loss = model.loss(x)
        return loss * float("nan") if calls["n"] > 5 else loss

    model = _model()
    x = _digits_like(100)
    with pytest.raises(FloatingPointError, match=r"epoch 2.*last good checkpoint.*learning rate"):
        fit(
            model,
            x,
            x[:20],
            epochs=5,
            batch_size=20,
            objective=objective,
            progress=False,
            out_dir=tmp_path,
        )
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    assert good["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in good["model_state"].values())


def test_existing_run_is_never_overwritten(tmp_path):
    x = _digits_like(64)
    fit(_model(), x, epochs=1, progress=False, out_dir=tmp_path)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(FileExistsError, match=r"--resume.*--overwrite"):
        fit(_model(), x, epochs=1, progress=False, out_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_with_different_batch_size_is_refused(tmp_path):
    x = _digits_like(64)
    fit(_model(), x, epochs=1, batch_size=16, progress=False, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="batch_size: saved 16, now 32"):
        fit(_model(), x, epochs=2, batch_size=32, progress=False, out_dir=tmp_path, resume=True)


def test_checkpoint_errors_name_problem_and_fix(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*jacfree train"):
        load_checkpoint(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(garbage)
    good = save_checkpoint({"model_state": _model().state_dict()}, tmp_path / "good.pt")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="damaged or truncated"):
        load_checkpoint(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a jacfree checkpoint"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


def test_fit_reports_bad_training_data():
    model = _model()
    with pytest.raises(ValueError, match="has 3 features but the model expects 16"):
        fit(model, torch.zeros(10, 3), epochs=1, progress=False)
    with pytest.raises(TypeError, match="integer"):
        fit(model, torch.zeros(10, 16, dtype=torch.long), epochs=1, progress=False)
    bad = _digits_like(20)
    bad[3, 2] = math.nan
    with pytest.raises(ValueError, match="NaN/Inf"):
        fit(model, bad, epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        fit(model, _digits_like(20), epochs=0, progress=False)


def test_fit_lowers_the_exact_nll_and_writes_metrics(tmp_path):
    model = _model()
    x, v = _digits_like(400), _digits_like(100, seed=3)
    before = jf.train.evaluate_nll(model, v).mean
    res = fit(model, x, v, epochs=8, batch_size=50, lr=5e-3, progress=False, out_dir=tmp_path)
    after = jf.train.evaluate_nll(model, v).mean
    assert after < before - 1.0
    assert after == pytest.approx(res.best_val)
    rows = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {"epoch", "train_loss", "val_nll", "samples_per_s", "epoch_time_s"} <= rows[0].keys()
    assert all(r["samples_per_s"] > 0 for r in rows)


class _LearningRates:
    """Records the learning rate of every optimiser step (through the optimiser it is given)."""

    def __init__(self, opt: torch.optim.Optimizer) -> None:
        self.opt, self.lrs = opt, []

    def on_step(self, model, loss, diagnostics) -> None:
        self.lrs.append(self.opt.param_groups[0]["lr"])

    def on_epoch_end(self, model, row) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_warmup_raises_the_learning_rate_linearly_per_batch():
    x = _digits_like(96)  # 3 batches of 32 per epoch
    model = _model()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    record = _LearningRates(opt)
    fit(
        model, x, epochs=3, batch_size=32, optimizer=opt, warmup_epochs=1.5, progress=False,
        callbacks=[record],
    )  # fmt: skip
    expected = [0.01 * min(1.0, s / 4.5) for s in range(1, 10)]
    assert record.lrs == pytest.approx(expected, rel=1e-12)
    assert opt.param_groups[0]["initial_lr"] == 0.01


def test_resume_in_the_middle_of_the_warmup_is_exact(tmp_path):
    x = _digits_like(96)
    kwargs = {"batch_size": 32, "lr": 3e-3, "warmup_epochs": 3, "progress": False}
    straight = _model()
    full = fit(straight, x, epochs=4, out_dir=tmp_path / "a", **kwargs)
    fit(_model(), x, epochs=2, out_dir=tmp_path / "b", restore_best=False, **kwargs)
    resumed = _model()
    res = fit(resumed, x, epochs=4, out_dir=tmp_path / "b", resume=True, **kwargs)
    assert [r["lr"] for r in res.history] == pytest.approx([1e-3, 2e-3, 3e-3, 3e-3])
    for a, b in zip(full.history, res.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6, abs=1e-6)
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="warmup_epochs: saved 3, now 0"):
        fit(_model(), x, epochs=5, out_dir=tmp_path / "b", resume=True, batch_size=32)


@pytest.mark.parametrize("bad", [-1, float("nan"), "2"])
def test_warmup_epochs_must_be_a_finite_non_negative_number(bad):
    with pytest.raises(ValueError, match="warmup_epochs must be a finite number >= 0"):
        fit(_model(), _digits_like(32), epochs=1, warmup_epochs=bad, progress=False)

"""The training loop: exact resume, best-checkpoint early stopping, failure safety, metrics."""

from __future__ import annotations

import json
import math

import pytest
import torch

import jacfree as jf
from jacfree.train import CheckpointError, fit, load_checkpoint, save_checkpoint
from jacfree.train.optim import make_adam


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


# -- no host read per step; divergence; resume checks; files ------------------------------------


class _Quadratic(torch.nn.Module):
    """A model whose loss reads no tensor value on the host: mean squared distance to a centre."""

    def __init__(self, d: int = 4) -> None:
        super().__init__()
        self.centre = torch.nn.Parameter(torch.zeros(d))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.centre).square().sum(1).mean()


def _host_reads(n_rows: int) -> int:
    model = _Quadratic()
    x = torch.randn(n_rows, 4, generator=torch.Generator().manual_seed(0))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        # SGD: Adam reads its step counter on the host on the CPU (on CUDA it stays there)
        sgd = torch.optim.SGD(model.parameters(), lr=0.1)
        fit(model, x, epochs=1, batch_size=10, log_every=1000, optimizer=sgd, progress=False)
    names = ("aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal")
    return sum(e.count for e in prof.key_averages() if e.key in names)


def test_a_training_step_reads_no_tensor_value_on_the_host():
    # 5 steps or 20 steps in the epoch: the same number of host reads (those of the epoch end)
    assert _host_reads(50) == _host_reads(200)


def test_callbacks_get_the_loss_as_a_tensor():
    seen = []

    class Spy(_LearningRates):
        def on_step(self, model, loss, diagnostics) -> None:
            seen.append(loss)

    fit(_Quadratic(), torch.randn(30, 4), epochs=1, batch_size=10, progress=False,
        callbacks=[Spy(None)])  # fmt: skip
    assert len(seen) == 3 and all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in seen)
    assert not any(t.requires_grad for t in seen)


def test_nan_in_the_middle_of_an_epoch_stops_within_one_logging_interval(tmp_path):
    calls = {"n": 0}

    def objective(model, x):
        calls["n"] += 1
        loss = model.loss(x)
        return loss * float("nan") if calls["n"] == 12 else loss  # epoch 2 (10 steps/epoch)

    model = _model()
    x = _digits_like(200)
    with pytest.raises(FloatingPointError, match=r"loss became nan at epoch 2.*epoch 1.*kept"):
        fit(model, x, x[:40], epochs=5, batch_size=20, objective=objective, log_every=3,
            progress=False, out_dir=tmp_path)  # fmt: skip
    assert calls["n"] == 13  # NaN at step 2 of epoch 2; its interval ends with step 3
    good = load_checkpoint(tmp_path / "checkpoint.pt")
    assert good["epoch"] == 1
    best = load_checkpoint(tmp_path / "best.pt")
    for name, value in good["model_state"].items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(model.state_dict()[name], value)  # restored in memory too
        torch.testing.assert_close(best["model_state"][name], value)


def test_divergence_in_the_first_epoch_says_nothing_was_saved(tmp_path):
    model = _model()  # plain Adam: the default RelativeAdam's trust region keeps lr 10 finite
    with pytest.raises(FloatingPointError, match=r"first epoch, so nothing was saved in"):
        fit(model, _digits_like(200), epochs=3, batch_size=20, progress=False, out_dir=tmp_path,
            optimizer=make_adam(model.parameters(), 10.0))  # fmt: skip
    assert not (tmp_path / "checkpoint.pt").exists() and not (tmp_path / "best.pt").exists()


def test_an_exploding_flow_is_stopped_by_its_gradient_norm():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"diverged: the gradient norm reached .* first"):
        fit(model, _digits_like(300), epochs=5, batch_size=50, progress=False,
            optimizer=make_adam(model.parameters(), 10.0))  # fmt: skip
    for name, value in model.state_dict().items():  # back to the last good (initial) state
        torch.testing.assert_close(value, before[name])


def test_an_exploding_energy_is_stopped_by_its_gradient_norm():
    torch.manual_seed(0)
    energy = jf.MLPEnergy((2,), hidden=(32, 32))
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(0))
    with pytest.raises(FloatingPointError, match=r"diverged: the gradient norm"):
        fit(energy, x, epochs=3, batch_size=100, lr=10.0, progress=False,
            objective=lambda m, b: jf.sm.fd_ssm(m, b))  # fmt: skip
    res = fit(energy, x, epochs=2, batch_size=100, lr=1e-3, progress=False,
              objective=lambda m, b: jf.sm.fd_ssm(m, b))  # fmt: skip
    assert len(res.history) == 2  # a sane learning rate trains on


def test_a_validation_metric_that_blows_up_stops_training(tmp_path):
    scores = iter([5.0, 4.0, 400.0, 3.0])
    with pytest.raises(FloatingPointError, match=r"val_nll rose to 400 from its best 4.*epoch 2"):
        fit(_model(), _digits_like(40), _digits_like(10), epochs=4, batch_size=20,
            progress=False, val_metric=lambda m, v: next(scores), out_dir=tmp_path)  # fmt: skip
    assert load_checkpoint(tmp_path / "best.pt")["epoch"] == 2


def test_resume_refuses_other_data_of_the_same_size(tmp_path):
    x = _digits_like(64)
    fit(_model(), x, epochs=1, progress=False, out_dir=tmp_path)
    other = _digits_like(64, seed=5)
    with pytest.raises(CheckpointError, match=r"trained on other data.*same training data"):
        fit(_model(), other, epochs=2, progress=False, out_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match=r"other data"):  # even when changes are allowed
        fit(_model(), other, epochs=2, progress=False, out_dir=tmp_path, resume=True,
            allow_changes=True)  # fmt: skip


def test_resume_names_changed_settings_and_allows_them_on_request(tmp_path):
    x = _digits_like(64)
    fit(_model(), x, epochs=1, lr=1e-3, progress=False, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"lr: saved 0.001, now 0.01.*allow_changes=True"):
        fit(_model(), x, epochs=2, lr=1e-2, progress=False, out_dir=tmp_path, resume=True)
    res = fit(_model(), x, epochs=3, lr=1e-2, patience=5, progress=False, out_dir=tmp_path,
              resume=True, allow_changes=True)  # fmt: skip
    assert [r["lr"] for r in res.history] == [1e-3, 1e-2, 1e-2]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, r"lr must be a finite number > 0 \(the learning rate; 0 would train"),
        ({"clip_grad_norm": -1.0}, "clip_grad_norm must be a finite number > 0"),
        ({"compile": "fast"}, "unknown compile mode 'fast'"),
    ],
)
def test_settings_that_would_train_nothing_or_ascend_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit(_model(), _digits_like(20), epochs=1, progress=False, out_dir=tmp_path, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_data_of_another_dtype_is_refused_where_it_enters():
    with pytest.raises(TypeError, match=r"train has dtype torch.float64 but the model's.*float32"):
        fit(_model(), _digits_like(20).double(), epochs=1, progress=False)
    bad = _digits_like(20)
    bad[1, 1] = math.inf
    with pytest.raises(ValueError, match=r"val contains 1 NaN/Inf"):
        fit(_model(), _digits_like(20), bad, epochs=1, progress=False)


def test_an_unwritable_run_folder_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    calls = {"n": 0}

    def objective(model, x):
        calls["n"] += 1
        return model.loss(x)

    with pytest.raises(PermissionError, match=r"cannot write to the run folder .*--out"):
        fit(_model(), _digits_like(20), epochs=1, progress=False, objective=objective,
            out_dir=blocker / "run")  # fmt: skip
    assert calls["n"] == 0


def test_checkpoints_and_metrics_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        fit(_model(), _digits_like(40), _digits_like(10), epochs=1, progress=False,
            out_dir=tmp_path)  # fmt: skip
    finally:
        os.umask(old)
    for name in ("checkpoint.pt", "best.pt", "metrics.jsonl"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


def test_ctrl_c_says_where_the_last_checkpoint_is(tmp_path):
    calls = {"n": 0}

    def objective(model, x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return model.loss(x)

    with pytest.raises(KeyboardInterrupt, match=r"last checkpoint \(epoch 1\) is in .*resume"):
        fit(_model(), _digits_like(60), epochs=3, batch_size=20, objective=objective,
            progress=False, out_dir=tmp_path)  # fmt: skip


def test_progress_degrades_to_lines_when_not_a_terminal(capsys):
    fit(_model(), _digits_like(40), _digits_like(10), epochs=2, batch_size=20)
    err = capsys.readouterr().err
    assert "epoch 1/2: loss" in err and "epoch 2/2: loss" in err and "\r" not in err


def test_compiled_objective_trains_like_the_eager_one():
    pytest.importorskip("torch._inductor")
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    eager, compiled = _Quadratic(), _Quadratic()
    a = fit(eager, x, epochs=1, batch_size=20, lr=0.1, progress=False)
    b = fit(compiled, x, epochs=1, batch_size=20, lr=0.1, progress=False, compile="default")
    assert b.history[0]["train_loss"] == pytest.approx(a.history[0]["train_loss"], rel=1e-5)
    torch.testing.assert_close(compiled.centre, eager.centre, rtol=1e-5, atol=1e-6)

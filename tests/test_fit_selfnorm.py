"""``fit`` with self-normalizing flows: reconstruction metrics, GECO, the drift warning, resume."""

from __future__ import annotations

import warnings

import pytest
import torch

import jacfree as jf
from jacfree.train import GECO, CheckpointError, ReconstructionWatch, fit


def _data(n: int = 240, d: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g)
    return torch.randn(n, d, generator=g) @ mix + 2.0


def _flow(gradient: str = "selfnorm") -> jf.FCFlow:
    torch.manual_seed(3)
    return jf.FCFlow(6, layers=2, gradient=gradient)


def test_metrics_report_the_reconstruction_error_of_selfnorm_models_only() -> None:
    x = _data()
    res = fit(_flow(), x, _data(60, seed=1), epochs=2, batch_size=60, progress=False)
    row = res.history[-1]
    assert row["train_recon"] > 0 and 0 < row["train_recon_rel"] < 1
    res = fit(_flow("relative"), x, epochs=1, batch_size=60, progress=False)
    assert "train_recon" not in res.history[-1]


def test_epoch_recon_is_the_batch_weighted_mean_of_the_step_values() -> None:
    x = _data(250)
    seen: list[tuple[float, int]] = []

    class Record:
        def on_step(self, model, loss, diagnostics):  # type: ignore[no-untyped-def]
            seen.append((float(diagnostics["recon"]), 0))

        def on_epoch_end(self, model, row):  # type: ignore[no-untyped-def]
            pass

        def state_dict(self):  # type: ignore[no-untyped-def]
            return {}

        def load_state_dict(self, state):  # type: ignore[no-untyped-def]
            pass

    res = fit(_flow(), x, epochs=1, batch_size=100, progress=False, callbacks=[Record()])
    sizes = [100, 100, 50]
    expected = sum(r * n for (r, _), n in zip(seen, sizes, strict=True)) / 250
    assert res.history[0]["train_recon"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("target", "direction"), [(1e6, -1), (0.0, +1)])
def test_geco_lowers_lambda_below_the_target_and_raises_it_above(target, direction) -> None:
    flow = _flow()
    flow.set_recon_weight(1.0)
    geco = GECO(target, lr=1e-2)
    res = fit(flow, _data(), epochs=2, batch_size=40, progress=False, callbacks=[geco])
    lam = flow.recon_weight
    assert (lam - 1.0) * direction > 0
    assert res.history[-1]["recon_weight"] == pytest.approx(lam)


def test_geco_follows_its_update_rule_and_bounds() -> None:
    flow = _flow()
    flow.set_recon_weight(2.0)
    geco = GECO(target=0.5, lr=0.1, ema=0.5, min_weight=1.0, max_weight=3.0)
    geco.on_step(flow, torch.tensor(0.0), {"recon": torch.tensor(1.5)})
    assert geco.average == pytest.approx(1.5)
    assert flow.recon_weight == pytest.approx(2.0 * torch.tensor(0.1).exp().item(), rel=1e-6)
    geco.on_step(flow, torch.tensor(0.0), {"recon": torch.tensor(0.5)})  # average 1.0
    assert geco.average == pytest.approx(1.0)
    geco.on_step(flow, torch.tensor(0.0), {"recon": torch.tensor(1e6)})
    assert flow.recon_weight == pytest.approx(3.0)  # clipped
    with pytest.raises(ValueError, match="needs a flow with layers in the selfnorm"):
        geco.on_step(flow, torch.tensor(0.0), {})
    with pytest.raises(ValueError, match=r"target \(κ\) must be >= 0"):
        GECO(-1.0)


def test_watch_warns_once_per_excursion() -> None:
    watch = ReconstructionWatch(0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for rel in (0.05, 0.2, 0.3, 0.05, 0.4):
            watch.on_epoch_end(None, {"epoch": 1, "train_recon_rel": rel})
    assert len(caught) == 2
    assert "drifting from W⁻¹" in str(caught[0].message)
    with pytest.raises(ValueError, match="threshold must be a finite number > 0"):
        ReconstructionWatch(0.0)


def test_resume_with_geco_continues_exactly(tmp_path) -> None:
    x, v = _data(), _data(60, seed=1)
    kw = {"batch_size": 48, "lr": 3e-3, "progress": False}
    straight = _flow()
    full = fit(straight, x, v, epochs=4, out_dir=tmp_path / "a", callbacks=[GECO(0.0)], **kw)
    fit(_flow(), x, v, epochs=2, out_dir=tmp_path / "b", callbacks=[GECO(0.0)], **kw)
    resumed = _flow()
    res = fit(
        resumed, x, v, epochs=4, out_dir=tmp_path / "b", resume=True, callbacks=[GECO(0.0)], **kw
    )
    for a, b in zip(full.history, res.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["recon_weight"] == pytest.approx(b["recon_weight"], rel=1e-6)
    assert resumed.recon_weight == pytest.approx(straight.recon_weight, rel=1e-6)
    with pytest.raises(CheckpointError, match=r"saved with 1 callback\(s\), this run has 0"):
        fit(_flow(), x, v, epochs=5, out_dir=tmp_path / "b", resume=True, **kw)

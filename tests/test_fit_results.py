"""What ``fit`` records in its run folder besides checkpoints: ``results.json`` with every
setting of the call, ``metrics.jsonl`` with the history (both written atomically)."""

from __future__ import annotations

import json

import torch

import jacfree as jf
from jacfree.train import GECO, fit


def _objective(model, x):
    return model.loss(x)


def test_results_json_records_every_fit_setting(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(120, 3)
    flow = jf.FCFlow(3, layers=1, gradient="selfnorm")
    result = fit(
        flow,
        x[:90],
        x[90:],
        epochs=3,
        batch_size=30,
        lr=2e-3,
        patience=5,
        objective=_objective,
        clip_grad_norm=10.0,
        warmup_epochs=1,
        seed=4,
        progress=False,
        out_dir=tmp_path,
        callbacks=[GECO(1.0)],
    )
    recorded = json.loads((tmp_path / "results.json").read_text())
    assert recorded == json.loads(json.dumps(result.summary()))
    settings = recorded["fit"]
    assert settings == result.settings
    expected = {
        "epochs": 3,
        "batch_size": 30,
        "lr": 2e-3,
        "optimizer": "Adam",
        "patience": 5,
        "objective": "_objective",
        "val_metric": "exact NLL",
        "val_name": "nll",
        "clip_grad_norm": 10.0,
        "warmup_epochs": 1,
        "seed": 4,
        "callbacks": ["GECO"],
        "world_size": 1,
        "n_train": 90,
        "n_val": 30,
    }
    assert {k: settings[k] for k in expected} == expected
    assert recorded["epochs_run"] == len(result.history) == 3
    assert recorded["best_epoch"] == result.best_epoch
    assert recorded["best_val"] == result.best_val
    assert recorded["val_metric"] == "val_nll"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == json.loads(json.dumps(result.history))
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_fit_without_a_folder_still_reports_its_settings():
    torch.manual_seed(0)
    flow = jf.FCFlow(2, layers=1)
    optimizer = torch.optim.SGD(flow.parameters(), lr=1e-2)
    result = fit(flow, torch.randn(40, 2), epochs=1, optimizer=optimizer, progress=False)
    assert result.settings["optimizer"] == "SGD" and result.settings["lr"] is None
    assert result.settings["objective"] == "model.loss" and result.settings["val_metric"] is None
    assert result.summary()["best_epoch"] is None

"""Data-parallel training over torch.distributed (DDP, Gloo on the CPU), launched with torchrun.

The reference is single-process training on the same global batches: the per-rank gradients of
the exact, relative and self-normalizing modes, averaged by DDP, must give the same parameters
(float64) — with an uneven split of every batch between the two ranks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import jacfree as jf
from jacfree.train import fit

MODES = ("exact", "relative", "selfnorm")
SETTINGS = {"epochs": 3, "batch_size": 50, "lr": 1e-2, "progress": False}
N, D = 231, 5  # 4 batches of 50 and one of 31: every batch splits unevenly (26/25, 16/15)

WORKER = """
import sys, torch, torch.distributed as dist
from jacfree.train import fit

sys.path.insert(0, {tests!r})
from {module} import MODES, SETTINGS, data, model

dist.init_process_group("gloo")
results = {{}}
for mode in MODES:
    flow = model(mode)
    x, v = data()
    res = fit(flow, x, v, **SETTINGS)
    results[mode] = {{"state": flow.state_dict(), "history": res.history}}
if dist.get_rank() == 0:
    torch.save(results, {out!r})
dist.destroy_process_group()
"""


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    mix = torch.randn(D, D, generator=g, dtype=torch.float64)
    x = torch.randn(N, D, generator=g, dtype=torch.float64) @ mix + 1.0
    v = torch.randn(40, D, generator=g, dtype=torch.float64) @ mix + 1.0
    return x, v


def model(mode: str) -> jf.FCFlow:
    torch.manual_seed(0)
    return jf.FCFlow(D, layers=3, gradient=mode).double()


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    done = subprocess.run(
        [*cmd, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def assert_ddp_equals_one_process(module: str, tmp_path: Path) -> None:
    """Train ``module``'s ``model(mode)`` on ``data()`` with ``SETTINGS`` for every mode in its
    ``MODES``, under torchrun on two ranks and in this process, and compare parameters and
    history (float64)."""
    test_module = sys.modules[module]
    out = tmp_path / "ddp.pt"
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(WORKER.format(tests=tests, module=module, out=str(out))))
    torchrun(str(script), cwd=tmp_path)
    ddp = torch.load(out, weights_only=True)
    for mode in test_module.MODES:
        flow = test_module.model(mode)
        x, v = test_module.data()
        ref = fit(flow, x, v, **test_module.SETTINGS)
        for name, value in flow.state_dict().items():
            torch.testing.assert_close(
                ddp[mode]["state"][name], value, rtol=1e-9, atol=1e-10, msg=f"{mode}: {name}"
            )
        for a, b in zip(ref.history, ddp[mode]["history"], strict=True):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
            assert b["val_nll"] == pytest.approx(a["val_nll"], rel=1e-10)
            if mode == "selfnorm":
                assert b["train_recon"] == pytest.approx(a["train_recon"], rel=1e-9)


@pytest.mark.slow
def test_ddp_training_equals_single_process_training_in_every_mode(tmp_path: Path) -> None:
    assert_ddp_equals_one_process(__name__, tmp_path)


@pytest.mark.slow
def test_cli_under_torchrun_trains_writes_once_and_resumes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    base = ["-m", "jacfree", "train", "--no-progress", "--no-plots", "--out", str(run)]
    done = torchrun(*base, "--epochs", "2", "--batch-size", "64", cwd=tmp_path)
    assert "2 processes (DDP)" in done.stdout
    assert done.stdout.count("test NLL") == 1  # only rank 0 reports
    torchrun(*base, "--epochs", "3", "--batch-size", "64", "--resume", cwd=tmp_path)
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    results = json.loads((run / "results.json").read_text())
    assert results["epochs_run"] == 3 and results["test"]["n"] == 359
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["config"]["world_size"] == 2 and len(saved["rng"]["ranks"]) == 2
    # resuming with another number of processes is refused with a clear message
    from jacfree.cli import main

    capsys.readouterr()
    assert main(["train", *base[3:], "--epochs", "4", "--batch-size", "64", "--resume"]) == 2
    assert "world_size: saved 2, now 1" in capsys.readouterr().err


# -- dequantised data: the noise is a function of the sample, not of the process -----------------

QUANTISED_CASES = (
    *(("fc", mode) for mode in MODES),
    ("cnn", "exact"),
    ("cnn", "selfnorm"),
    ("glow", "relative"),
    ("glow", "selfnorm"),
)
QUANTISED_SETTINGS = {"epochs": 2, "batch_size": 20, "lr": 1e-2, "progress": False}

QUANTISED_WORKER = """
import sys, torch, torch.distributed as dist
from jacfree.train import fit

sys.path.insert(0, {tests!r})
from test_distributed import QUANTISED_CASES, QUANTISED_SETTINGS, quantised_case

dist.init_process_group("gloo")
results = {{}}
for kind, mode in QUANTISED_CASES:
    flow, x, v = quantised_case(kind, mode)
    res = fit(flow, x, v, **QUANTISED_SETTINGS)
    results[f"{{kind}}-{{mode}}"] = {{"state": flow.state_dict(), "history": res.history}}
if dist.get_rank() == 0:
    torch.save(results, {out!r})
dist.destroy_process_group()
"""


def quantised_case(kind: str, mode: str) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A flow with uniform dequantisation in front, and integer-valued data for it: digits-like
    vectors (5 levels) for ``fc``, tiny 1x4x4 images (4 levels) for ``cnn`` and ``glow``.
    59 training rows in batches of 20, 20 and 19: the last splits unevenly between two processes."""
    from jacfree.kinds import build_model

    g = torch.Generator().manual_seed(11)
    if kind == "fc":
        shape, levels, options = [6], 5, {"layers": 2}
    else:
        shape, levels = [1, 4, 4], 4
        options = {"layers": 2, "blocks": 2, **({"hidden": 8} if kind == "glow" else {})}
    x = torch.randint(0, levels, (59, *shape), generator=g).double()
    v = torch.randint(0, levels, (30, *shape), generator=g).double()
    torch.manual_seed(0)
    spec = {"kind": kind, "data_shape": shape, "levels": levels, "gradient": mode, **options}
    flow = build_model(spec).double()
    return flow, x, v  # glow: fit initialises ActNorm on the first global batch, on every rank


@pytest.mark.slow
def test_ddp_equals_one_process_on_dequantised_data_in_every_mode(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(QUANTISED_WORKER.format(tests=tests, out=str(out))))
    torchrun(str(script), cwd=tmp_path)
    ddp = torch.load(out, weights_only=True)
    for kind, mode in QUANTISED_CASES:
        name = f"{kind}-{mode}"
        flow, x, v = quantised_case(kind, mode)
        ref = fit(flow, x, v, **QUANTISED_SETTINGS)
        for a, b in zip(ref.history, ddp[name]["history"], strict=True):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9), name
            assert b["val_nll"] == pytest.approx(a["val_nll"], rel=1e-9), name
        for key, value in flow.state_dict().items():
            torch.testing.assert_close(
                ddp[name]["state"][key], value, rtol=1e-8, atol=1e-10, msg=f"{name}: {key}"
            )

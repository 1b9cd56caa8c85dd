"""DDP on (x, context) pairs equals one process: a conditional FCFlow trained with torchrun on
two ranks (uneven batch splits) ends with the parameters and history of single-process training
(float64)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

import jacfree as jf
from jacfree.train import fit
from test_distributed import torchrun

MODES = ("relative", "selfnorm")
SETTINGS = {"epochs": 2, "batch_size": 50, "lr": 1e-2, "progress": False}
N, D, F = 131, 3, 2  # batches of 50, 50, 31: every one splits unevenly between the ranks

WORKER = """
import sys, torch, torch.distributed as dist
from jacfree.train import fit

sys.path.insert(0, {tests!r})
from test_distributed_conditional import SETTINGS, data, model

dist.init_process_group("gloo")
results = {{}}
for mode in {modes!r}:
    flow = model(mode)
    train, val = data()
    res = fit(flow, train, val, **SETTINGS)
    results[mode] = {{"state": flow.state_dict(), "history": res.history}}
if dist.get_rank() == 0:
    torch.save(results, {out!r})
dist.destroy_process_group()
"""


def data() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    c = torch.randn(N + 30, F, generator=g, dtype=torch.float64)
    x = torch.randn(N + 30, D, generator=g, dtype=torch.float64) + c @ torch.ones(F, D).double()
    return (x[:N], c[:N]), (x[N:], c[N:])


def model(mode: str) -> jf.FCFlow:
    torch.manual_seed(0)
    return jf.FCFlow(D, layers=2, gradient=mode, context_features=F, context_hidden=8).double()


@pytest.mark.slow
def test_ddp_on_context_pairs_equals_single_process(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    script = tmp_path / "worker.py"
    tests = str(Path(__file__).parent)
    script.write_text(textwrap.dedent(WORKER.format(tests=tests, modes=MODES, out=str(out))))
    torchrun(str(script), cwd=tmp_path)
    ddp = torch.load(out, weights_only=True)
    for mode in MODES:
        flow = model(mode)
        train, val = data()
        ref = fit(flow, train, val, **SETTINGS)
        for name, value in flow.state_dict().items():
            torch.testing.assert_close(
                ddp[mode]["state"][name], value, rtol=1e-9, atol=1e-10, msg=f"{mode}: {name}"
            )
        for a, b in zip(ref.history, ddp[mode]["history"], strict=True):
            assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-10)
            assert b["val_nll"] == pytest.approx(a["val_nll"], rel=1e-10)

"""DDP on (x, context) pairs equals one process: a conditional FCFlow trained with torchrun on
two ranks (uneven batch splits) ends with the parameters and history of single-process training
(float64)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import jacfree as jf
from test_distributed import assert_ddp_equals_one_process

MODES = ("relative", "selfnorm")
SETTINGS = {"epochs": 2, "batch_size": 50, "lr": 1e-2, "progress": False}
N, D, F = 131, 3, 2  # batches of 50, 50, 31: every one splits unevenly between the ranks


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
    assert_ddp_equals_one_process(__name__, tmp_path)

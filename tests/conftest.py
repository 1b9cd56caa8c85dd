"""Shared test configuration.

Tests compare gradients in float64. ``--device cuda`` runs the device-following tests on a GPU
when one is present; the default is the CPU.
"""

from __future__ import annotations

import pytest
import torch


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", help="torch device for device-following tests")


@pytest.fixture
def device(request: pytest.FixtureRequest) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("CUDA requested with --device but not available")
        # the tolerances are float32's: no TF32 in convolutions and matrix products
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return dev


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (thread-count-dependent round-off stays out of
    comparisons; fair on a shared machine), restoring the count afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)

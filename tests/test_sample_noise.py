"""Per-sample random numbers: a function of seed, epoch, sample index and position only."""

from __future__ import annotations

import pytest
import torch

from jacfree import sample_noise as sn


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_row_depends_on_its_sample_not_on_the_rest_of_the_batch(dtype):
    index = torch.arange(40) * 7 + 3
    x = torch.zeros(40, 2, 3, dtype=dtype)
    with sn.indexed(sn.row_keys(index, seed=5, epoch=2)):
        whole = sn.rand_like(x)
    shard = [1, 4, 9, 38]
    with sn.indexed(sn.row_keys(index[shard], seed=5, epoch=2)):
        part = sn.rand_like(x[shard])
    assert whole.dtype == dtype and whole.shape == x.shape
    torch.testing.assert_close(part, whole[shard], rtol=0, atol=0)


def test_seed_epoch_and_successive_draws_give_new_numbers():
    index = torch.arange(100)
    x = torch.zeros(100, 8)

    def draw(seed: int, epoch: int, n: int = 1) -> list[torch.Tensor]:
        with sn.indexed(sn.row_keys(index, seed, epoch)):
            return [sn.rand_like(x) for _ in range(n)]

    base, second = draw(0, 1, 2)
    for other in (draw(1, 1)[0], draw(0, 2)[0], second):
        assert (other != base).float().mean() > 0.99
    torch.testing.assert_close(draw(0, 1)[0], base, rtol=0, atol=0)  # reproducible


def test_the_numbers_are_uniform_and_normal():
    index = torch.arange(50_000)
    x = torch.zeros(50_000, 4, dtype=torch.float64)
    with sn.indexed(sn.row_keys(index, seed=0, epoch=1)):
        u, z = sn.rand_like(x), sn.randn_like(x)
    assert float(u.min()) >= 0 and float(u.max()) < 1
    assert float(u.mean()) == pytest.approx(0.5, abs=0.003)  # s.e. 0.0006
    assert float(u.var()) == pytest.approx(1 / 12, rel=0.01)
    assert float(z.mean()) == pytest.approx(0.0, abs=0.01)  # s.e. 0.0022
    assert float(z.std()) == pytest.approx(1.0, rel=0.01)
    corr = torch.corrcoef(torch.stack([u[:, 0], u[:, 1], z[:, 0]]))
    assert corr.sub(torch.eye(3)).abs().max() < 0.02  # neighbours and streams uncorrelated


def test_outside_the_context_it_is_torchs_generator():
    x = torch.zeros(5, 3)
    torch.manual_seed(3)
    expected = torch.rand_like(x)
    torch.manual_seed(3)
    torch.testing.assert_close(sn.rand_like(x), expected)
    with sn.indexed(sn.row_keys(torch.arange(4), 0, 1)):  # another batch size: torch's too
        torch.manual_seed(3)
        torch.testing.assert_close(sn.rand_like(x), expected)


def test_it_traces_whole_under_torch_compile():
    keys = sn.row_keys(torch.arange(6), 0, 1)
    x = torch.zeros(6, 3)
    with sn.indexed(keys):
        eager = sn.rand_like(x)
    compiled = torch.compile(lambda t: sn.rand_like(t), fullgraph=True, backend="eager")
    with sn.indexed(keys):
        torch.testing.assert_close(compiled(x), eager, rtol=0, atol=0)

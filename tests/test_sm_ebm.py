"""ResEBM, the reference annealed Langevin sampler, and the `ebm` model kind end to end."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from jacfree.cli import main
from jacfree.scorematching import losses
from jacfree.scorematching.ebm import ResEBM, annealed_langevin_energy, temperature_schedule

pytestmark = pytest.mark.usefixtures("one_thread")


def test_resebm_shapes_padding_and_no_batch_coupling():
    torch.manual_seed(0)
    m = ResEBM((1, 28, 28), width=2, depth=1)
    x = torch.rand(5, 1, 28, 28)
    e = m(x)
    assert e.shape == (5,)
    torch.testing.assert_close(m(x.flatten(1)), e)  # flattened input accepted
    torch.testing.assert_close(m(x[:2]), e[:2])  # rows are independent (no batch statistics)
    assert not any(isinstance(k, nn.modules.batchnorm._BatchNorm) for k in m.modules())
    assert m.pad_h == 4 and m.pad_w == 4  # 28 -> 32, divisible by 2^3


def test_resebm_head_is_quadratic_in_the_features():
    torch.manual_seed(1)
    m = ResEBM((1, 8, 8), width=2, depth=0)
    feats = {}
    m.blocks.register_forward_hook(lambda mod, i, o: feats.setdefault("h", o.flatten(1)))
    x = torch.rand(3, 1, 8, 8)
    e = m(x)
    h = feats["h"]
    want = (m.ln1(h) * m.ln2(h) + m.lq(h * h)).squeeze(-1)
    torch.testing.assert_close(e, want)


def test_resebm_and_fd_mdsm_trace_without_graph_breaks():
    torch.manual_seed(0)
    m = ResEBM((1, 8, 8), width=2, depth=1)
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(torch.compile(m, fullgraph=True, backend="eager")(x), m(x))
    n, u = torch.randn(x.shape), torch.nn.functional.normalize(torch.randn(4, 64), dim=1)
    u = u.reshape(x.shape)

    def step(y: torch.Tensor) -> torch.Tensor:
        return losses.fd_mdsm(m, y, noise=n, directions=u)

    torch.testing.assert_close(torch.compile(step, fullgraph=True, backend="eager")(x), step(x))


def test_temperature_schedule_matches_the_reference_shape():
    t = temperature_schedule(100, 1, n_hold=5, n_anneal=11, n_tail=4)
    assert len(t) == 20
    assert t[:5].tolist() == [100.0] * 5
    assert t[5] == 100 and t[15] == 1
    assert t[16:].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    e = temperature_schedule(100, 1, n_hold=0, n_anneal=10, n_tail=0, kind="exp")
    assert e[0] == 100 and bool((e.diff() < 0).all())


def test_langevin_stationary_variance_and_denoising_step():
    """E = ½x²/τ²: ULA with step h = α² and temperature T is stationary at
    N(0, Tτ²/(1 − h/(4τ²))); the final denoising step is x − σ0²∇E = x(1 − σ0²/τ²)."""
    tau, alpha = 1.0, 0.3
    energy = lambda x: 0.5 * (x * x).sum(-1) / tau**2  # noqa: E731
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(4000, 1, dtype=torch.float64)
    temps = torch.full((300,), 2.0, dtype=torch.float64)
    x = annealed_langevin_energy(
        energy, x0, temps, step_size=alpha, denoise_sigma=None, generator=g
    )
    want = 2.0 * tau**2 / (1 - alpha**2 / (4 * tau**2))
    se = want * math.sqrt(2 / len(x))
    assert abs(float(x.var()) - want) < 4 * se
    y = annealed_langevin_energy(
        energy, x, torch.zeros(0, dtype=torch.float64), step_size=alpha, denoise_sigma=0.5
    )
    torch.testing.assert_close(y, x * (1 - 0.25 / tau**2))


QUIET = ["--epochs", "1", "--no-progress", "--threads", "1", "--data", "digits"]
SMALL = ["--hidden", "2", "--layers", "0", "--batch-size", "400", "--set", "exact_sm_n=8"]
SAMPLER = ["--set", "sample_hold=2", "--set", "sample_anneal=3", "--set", "sample_tail=2"]


@pytest.mark.parametrize("objective", ["fd_mdsm", "mdsm", "fd_ssm", "ssm"])
def test_tiny_ebm_run_through_the_cli(objective, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / objective
    plots = [*SAMPLER, "--set", "n_samples=4"] if objective == "fd_mdsm" else ["--no-plots"]
    argv = ["train", "--model", "ebm", "--objective", objective, *QUIET, *SMALL, *plots]
    assert main([*argv, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"mdsm", "mdsm_stderr", "exact_sm", "exact_sm_stderr"} <= set(results["test"])
    assert all(math.isfinite(v) for v in results["test"].values())
    assert results["spec"]["objective"] == objective
    if objective == "fd_mdsm":
        assert results["spec"]["eps"] == 0.05  # the paper's deep-EBM FD step by default
        assert (out / "samples.png").stat().st_size > 0
        assert main(["eval", str(out), "--ood", "noise-uniform", "--ood-n", "50"]) == 0
        text = capsys.readouterr().out
        assert "vs noise-uniform (n=50): AUROC" in text
        assert (out / "ood.png").stat().st_size > 0
    capsys.readouterr()


def test_ebm_refuses_vectors_and_ood_refuses_another_format(tmp_path, capsys):
    assert main(["train", "--model", "ebm", "--data", "moons", *QUIET[:-2]]) == 2
    assert "ebm models images" in capsys.readouterr().err
    out = tmp_path / "r"
    argv = ["train", "--model", "ebm", "--objective", "fd_mdsm", *QUIET, *SMALL, "--no-plots"]
    assert main([*argv, "--out", str(out)]) == 0
    assert main(["eval", str(out), "--ood", "mnist-5k", "--ood-n", "10"]) == 2
    assert "same image format" in capsys.readouterr().err

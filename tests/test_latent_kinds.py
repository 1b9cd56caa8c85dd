"""The implicit-encoder VAE/WAE: surrogate gradients, and both kinds end to end through the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch

from jacfree.cli import main
from jacfree.latent import ImplicitLatentModel, binarize

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--hidden", "16", "--layers", "1", "--epochs", "1", "--batch-size", "500",
        "--no-progress"]  # fmt: skip
TINY_SET = ["z_dim=3", "ais_n=8", "ais_chains=2", "ais_steps=5", "ais_leapfrog=2", "val_n=8",
            "val_ais_steps=3"]  # fmt: skip


@pytest.mark.parametrize("mode", ["vae", "wae"])
@pytest.mark.parametrize("objective", ["fd_ssm_vr", "ssm_vr"])
def test_loss_gradients_split_between_autoencoder_and_score_net(mode, objective):
    """θ gets the surrogate's gradient (score net output detached), φ the score-matching loss's
    gradient (z detached): compare with the two losses differentiated separately."""
    torch.manual_seed(0)
    model = ImplicitLatentModel(6, 2, mode=mode, objective=objective, hidden=8, layers=1).double()
    x = (torch.rand(5, 6, dtype=torch.float64) < 0.5).double()
    noise = torch.randn(5, 2, dtype=torch.float64)
    enc = model.encoder
    model.encoder.forward = lambda xx, noise_=noise: enc.net(torch.cat([xx, noise_], -1))  # type: ignore[method-assign]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model.zero_grad()
        model.loss(x).backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    diag = model.training_diagnostics()
    assert (
        set(diag) >= {"score_loss", "recon", "score_step_ms"} and float(diag["score_step_ms"]) > 0
    )
    # reference: the score-matching loss with the same directions, and the surrogate
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model.zero_grad()
        z = enc(x)
        model.score_loss(z, x).backward()
    cond = x if mode == "vae" else None
    z = enc(x)
    s = model.score(z.detach(), cond).detach()
    weight = 1.0 if mode == "vae" else 10.0
    surrogate = -model.decoder.log_likelihood(x, z) + weight * (
        0.5 * (z * z).sum(-1) + (s * z).sum(-1)
    )
    surrogate.mean().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(got[n], p.grad, rtol=1e-9, atol=1e-9, msg=n)
    assert any(p.grad.abs().sum() > 0 for p in model.score.parameters())


def test_binarize_is_bernoulli_of_the_intensity():
    x = torch.full((20000, 1), 63.75)  # 0.25 of 255
    gen = torch.Generator().manual_seed(0)
    b = binarize(x, 256, generator=gen)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    assert abs(float(b.mean()) - 0.25) < 0.01


def test_sample_is_on_the_data_scale():
    model = ImplicitLatentModel(16, 2, hidden=8, layers=1, data_shape=(1, 4, 4), levels=256)
    x = model.sample(5, torch.Generator().manual_seed(0))
    assert x.shape == (5, 1, 4, 4) and float(x.min()) >= 0 and float(x.max()) <= 255


@pytest.mark.parametrize(
    ("model", "objective"),
    [
        ("vae-implicit", "fd_ssm_vr"),
        ("vae-implicit", "ssm_vr"),
        ("wae-implicit", "fd_ssm_vr"),
    ],
)
def test_kind_trains_evaluates_and_samples_through_the_cli(tmp_path, capsys, model, objective):
    out = tmp_path / "run"
    sets = [a for s in TINY_SET for a in ("--set", s)]
    argv = ["train", "--model", model, "--data", "mnist-5k", "--objective", objective]
    assert main([*argv, *TINY, *sets, "--no-plots", "--out", str(out)]) == 0
    result = json.loads((out / "results.json").read_text())
    test = result["test"]
    assert result["spec"]["objective"] == objective
    assert math.isfinite(test["ais_nll"]) and test["ais_nll"] > 0 and test["ais_nll_n"] == 8
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["train_score_step_ms"] > 0 and "val_ais_nll" in rows[0]
    capsys.readouterr()
    assert main(["eval", str(out)]) == 0
    assert "ais_nll" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["sample", str(out), "-n", "4", "--out", str(grid)]) == 0
    assert grid.stat().st_size > 0


def test_kind_refuses_unknown_objectives_and_non_images(tmp_path):
    argv = ["train", "--model", "vae-implicit", "--no-progress", "--out", str(tmp_path / "r")]
    assert main([*argv, "--data", "mnist-5k", "--objective", "dsm"]) == 2
    assert main([*argv, "--data", "moons"]) == 2

"""The SNF image models CNNFlow and GlowFlow: exact densities, the SNF objective at R = W⁻¹,
switching gradient modes on a live model, sizes, and tiny ``jacfree train`` runs (float64 where
values or gradients are compared)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import Tensor
from torch.func import jacrev, vmap

import jacfree as jf
from jacfree.cli import main
from jacfree.flows import initialize_actnorm

SHAPE = (1, 4, 4)
D = 16
LEVELS = 8


def _cnn(mode: str, **kw: object) -> jf.CNNFlow:
    kw.setdefault("preprocess", [jf.LogitTransform(LEVELS, alpha=0.05)])
    return jf.CNNFlow(SHAPE, blocks=2, layers_per_block=2, gradient=mode, **kw)


def _glow(mode: str, **kw: object) -> jf.GlowFlow:
    kw.setdefault("preprocess", [jf.LogitTransform(LEVELS, alpha=0.05)])
    return jf.GlowFlow(SHAPE, blocks=2, steps=2, hidden=8, gradient=mode, **kw)


def _data(n: int = 6, seed: int = 3) -> Tensor:
    """Values in (0, LEVELS): the scale of the logit transform in front of the models."""
    gen = torch.Generator().manual_seed(seed)
    return LEVELS * (0.02 + 0.96 * torch.rand(n, *SHAPE, generator=gen, dtype=torch.float64))


def _perturb(flow: jf.Flow, seed: int = 0) -> jf.Flow:
    """float64; ActNorm initialised; every parameter moved off its initialisation, the
    convolutions kept centre-tap (so T(w)⁻¹ is a convolution) and every learned inverse set to
    the exact inverse: R = W⁻¹ in every SNF layer."""
    gen = torch.Generator().manual_seed(seed)
    flow.double()
    initialize_actnorm(flow, _data(16, seed=11))
    with torch.no_grad():
        convs = [m for m in flow.modules() if isinstance(m, jf.SelfNormConv2d)]
        for m in convs:  # a new centre tap, nothing else: T(w)⁻¹ stays a convolution
            c = m.padding
            eye = torch.eye(m.channels, dtype=torch.float64)
            m.weight.zero_()
            m.weight[:, :, c, c] = eye + 0.3 * torch.randn(eye.shape, generator=gen).double()
        skip = {id(m.weight) for m in convs}
        for name, p in flow.named_parameters():
            if not name.endswith("inverse_weight") and id(p) not in skip:
                p.add_(0.2 * torch.randn(p.shape, generator=gen).double())
        for m in flow.modules():
            if isinstance(m, jf.SplitPrior):
                m.prior.weight.mul_(0.1)
            if isinstance(m, jf.SelfNormConv2d) and m.inverse_weight is not None:
                m.reset_inverse()  # exact for a centre-tap kernel
            if isinstance(m, jf.Conv1x1) and m.inverse_weight is not None:
                m.inverse_weight.copy_(torch.linalg.inv(m.weight))
    return flow


def _snf_layers(flow: jf.Flow) -> list[torch.nn.Module]:
    return [m for m in flow.modules() if isinstance(m, (jf.SelfNormConv2d, jf.Conv1x1))]


BUILDERS = {
    "cnn": _cnn,
    "cnn-slr": lambda mode: _cnn(mode, activation="slr"),
    "glow": _glow,
    "glow-3x3": lambda mode: _glow(mode, conv_kernel=3),
}


@pytest.mark.parametrize("mode", ["exact", "selfnorm"])
@pytest.mark.parametrize("name", list(BUILDERS))
def test_log_prob_is_the_brute_force_change_of_variables(name: str, mode: str) -> None:
    """log_prob in eval mode == log N(z) + slogdet of the torch.func Jacobian of the whole model
    (pre-processing included), per sample, float64."""
    flow = _perturb(BUILDERS[name](mode))
    x = _data()
    flow.eval()
    with torch.no_grad():
        lp = flow.log_prob(x)  # the cached path: float64 LU of every T(w)

    def latent(x1: Tensor) -> Tensor:
        return flow(x1.unsqueeze(0))[0].flatten()

    J = vmap(jacrev(latent))(x).reshape(len(x), D, D)
    sign, logabsdet = torch.linalg.slogdet(J)
    assert (sign != 0).all()
    z = flow(x)[0].detach().flatten(1)
    ref = -0.5 * z.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + logabsdet
    torch.testing.assert_close(lp, ref, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_snf_objective_at_exact_inverses(name: str) -> None:
    """With every R = W⁻¹: the SNF loss − Σ log|det W| − λ·E (E = 0 here) is the exact NLL, the
    weight gradients of the invertible convolutions are half the exact ones, and every other
    parameter (biases, splines, ActNorm, couplings, priors) gets the exact gradient."""
    snf = _perturb(BUILDERS[name]("selfnorm"))
    exact = copy.deepcopy(snf)
    exact.set_gradient("exact")
    x = _data()
    loss_snf = snf.loss(x)
    loss_exact = exact.loss(x)
    logdets = sum(m.logabsdet().detach() for m in _snf_layers(snf))
    recon = sum(float(m.recon_weight) * m.last_reconstruction for m in _snf_layers(snf))
    assert float(recon) < 1e-20
    torch.testing.assert_close(loss_snf - logdets - recon, -exact.log_prob(x).mean())
    torch.testing.assert_close(loss_exact, -exact.log_prob(x).mean())
    loss_snf.backward()
    loss_exact.backward()
    halved = {id(m.weight) for m in _snf_layers(snf)}
    grads_exact = dict(exact.named_parameters())
    checked = 0
    for pname, p in snf.named_parameters():
        if pname.endswith("inverse_weight"):
            continue
        ref = grads_exact[pname].grad
        assert p.grad is not None and ref is not None, pname
        want = 0.5 * ref if id(p) in halved else ref
        scale = float(want.abs().max())  # the exact path differentiates a D×D slogdet
        torch.testing.assert_close(p.grad, want, rtol=1e-7, atol=1e-9 * scale, msg=pname)
        checked += 1
    assert checked > len(halved)


def test_switching_modes_on_a_live_model() -> None:
    torch.manual_seed(0)
    flow = _cnn("selfnorm").double()
    x = _data(32)
    opt = torch.optim.Adam(flow.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    inverses = [m.inverse_weight for m in flow.conv_layers]
    lp = flow.log_prob(x).detach()

    flow.set_gradient("exact")
    assert flow.gradient == "exact"
    torch.testing.assert_close(flow.log_prob(x).detach(), lp)  # same parameters, same density
    loss = flow.loss(x)
    torch.testing.assert_close(loss.detach(), -lp.mean())  # now the exact NLL
    flow.zero_grad(set_to_none=True)
    loss.backward()
    assert all(m.inverse_weight.grad is None for m in flow.conv_layers)  # R is idle in exact mode
    assert all(m.weight.grad is not None for m in flow.conv_layers)

    flow.set_gradient("selfnorm")  # back: the learned inverses are kept, not reset
    assert [m.inverse_weight for m in flow.conv_layers] == inverses
    flow.loss(x).backward()
    assert all(m.inverse_weight.grad is not None for m in flow.conv_layers)

    # an exact model trained off the centre tap, switched to selfnorm: R is the best K×K
    # inverse, close to T(w)⁻¹, and sampling through it matches the exact inverse closely
    torch.manual_seed(0)
    other = _cnn("exact").double()
    opt = torch.optim.Adam(other.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        other.loss(x).backward()
        opt.step()
    assert all(m.inverse_weight is None for m in other.conv_layers)
    other.set_gradient("selfnorm")
    assert other.gradient == "selfnorm"
    other.loss(x)
    rel = other.training_diagnostics()["recon_rel"]
    assert 0 < float(rel) < 1e-3
    z = torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        a, b = other.inverse(z), other.inverse(z, approximate=True)
    assert float((a - b).abs().max()) < 0.05 * float(a.abs().max())


def test_glow_samples_through_R_equal_exact_samples_at_R_equal_W_inverse() -> None:
    flow = _perturb(_glow("selfnorm"))
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(5, *SHAPE, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(flow.inverse(z, approximate=True), flow.inverse(z))


def test_default_sizes_and_structure() -> None:
    cnn = jf.CNNFlow()  # the paper's 9-layer CNN on (1, 28, 28)
    convs = cnn.conv_layers
    assert len(convs) == 9 and [m.channels for m in convs] == [1] * 3 + [4] * 3 + [16] * 3
    assert sum(isinstance(m, jf.RQSplineActivation) for m in cnn.layers) == 8
    assert sum(p.numel() for p in cnn.parameters()) == 102_613
    cnn.set_gradient("exact")
    assert sum(p.numel() for p in cnn.parameters() if p.grad is None) >= 95_242
    z = cnn(torch.randn(2, 1, 28, 28))[0]
    assert z.shape == (2, 1, 28, 28)

    glow = jf.GlowFlow()
    assert len(glow.conv_layers) == 16
    assert all(isinstance(m, jf.Conv1x1) for m in glow.conv_layers)
    assert sum(isinstance(m, jf.SplitPrior) for m in glow.modules()) == 1
    assert glow.gradient == "selfnorm" and glow.recon_weight == 100.0
    assert jf.GlowFlow(split=False, blocks=2, steps=1).event_shape == (1, 28, 28)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: jf.CNNFlow((1, 6, 6)), "divisible by 4"),
        (lambda: jf.CNNFlow((28, 28)), "(channels, height, width)"),
        (lambda: jf.CNNFlow(gradient="relative"), "unknown gradient mode 'relative'"),
        (lambda: jf.CNNFlow(activation="relu"), "unknown activation 'relu'"),
        (lambda: jf.GlowFlow((1, 6, 6), blocks=2), "divisible by 4"),
        (lambda: jf.GlowFlow(conv_kernel=3, gradient="relative"), "conv_kernel=1"),
    ],
)
def test_bad_arguments_are_explained(build, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


# -- jacfree train ----------------------------------------------------------------------------

pytest.importorskip("matplotlib", reason='plots need matplotlib: pip install "jacfree[plot]"')

TINY = ["--data", "digits", "--epochs", "1", "--no-progress", "--batch-size", "200"]


@pytest.mark.parametrize(
    ("model", "options"),
    [
        ("cnn", ["--layers", "3", "--set", "blocks=3"]),
        ("glow", ["--layers", "1", "--hidden", "8"]),
    ],
)
@pytest.mark.slow
def test_train_selfnorm_cli_writes_bits_per_dim_and_both_sample_grids(
    tmp_path, capsys, model, options
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / model
    argv = ["train", *TINY, "--model", model, "--gradient", "selfnorm", *options, "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "bits/dim" in text
    results = json.loads((out / "results.json").read_text())
    assert results["spec"]["kind"] == model and results["spec"]["gradient"] == "selfnorm"
    bpd = results["test"]["bits_per_dim"]
    assert math.isfinite(bpd) and bpd > 0
    assert bpd == pytest.approx(results["test"]["nll_nats"] / (64 * math.log(2)))
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["train_recon_rel"] >= 0 for r in rows)
    assert (out / "samples.png").stat().st_size > 0

    assert main(["sample", str(out), "-n", "4", "--out", str(tmp_path / "s.png")]) == 0
    text = capsys.readouterr().out
    assert "exact inverse" in text and "learned inverse R" in text
    assert "mean |exact − learned|" in text
    assert (tmp_path / "s.png").stat().st_size > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "cnn", "--gradient", "relative"], "supports --gradient exact / selfnorm"),
        (["--model", "cnn", "--gradient", "exact", "--layers", "4"], "multiple of the number"),
        (["--model", "glow", "--data", "moons", "--gradient", "exact"], "needs image data"),
    ],
)
def test_train_errors(tmp_path, capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    base = ["train", "--data", "digits", "--epochs", "1", "--no-progress", "--out"]
    assert main([*base, str(tmp_path / "r"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_learned_inverses_are_row_major_like_their_weights() -> None:
    """R laid out like W: a column-major R (what torch.linalg.inv returns) made every dense SNF
    step copy transposed D×D gradients (FCFlow-2L at D = 3072: 0.67 → 0.42 s per step)."""
    layers = [jf.SquareAffine(6, "selfnorm"), jf.Conv1x1(4, "selfnorm")]
    dense = jf.SquareAffine(6, "exact")
    dense.set_gradient("selfnorm")  # entering the mode later
    for m in [*layers, dense, jf.SelfNormConv2d(3, 3, "selfnorm")]:
        assert m.inverse_weight.is_contiguous() and m.weight.is_contiguous()

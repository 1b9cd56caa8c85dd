"""Glow-like layers: what the contract test cannot see.

ActNorm's data-dependent initialisation (when it runs, what it gives, persistence), couplings and
split priors at initialisation, the split-prior packing and its composite entry points, squeeze
index maps, and the error messages for bad shapes.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

import jacfree as jf
from jacfree.flows import initialize_actnorm

F64 = torch.float64


def perturb(module: nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def log_normal(z: Tensor) -> Tensor:
    return -0.5 * (z.flatten(1).square().sum(1) + z[0].numel() * math.log(2 * math.pi))


# -- ActNorm ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(3, 5, 4), (6,)])
def test_actnorm_initialises_on_the_first_training_batch(shape: tuple[int, ...]) -> None:
    layer = jf.ActNorm(shape[0]).double()
    assert not layer.is_initialized
    x = 3 * torch.randn(32, *shape, dtype=F64) + torch.arange(shape[0], dtype=F64).view(
        -1, *[1] * (len(shape) - 1)
    )
    z, logdet = layer(x)  # train mode, gradients on: the first training batch
    assert layer.is_initialized and bool(layer.initialized)
    dims = [d for d in range(z.dim()) if d != 1]
    torch.testing.assert_close(z.mean(dims), torch.zeros(shape[0], dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        z.var(dims, correction=0), torch.ones(shape[0], dtype=F64), atol=1e-10, rtol=0
    )
    positions = math.prod(shape[1:])
    torch.testing.assert_close(logdet, (positions * layer.log_scale.sum()).expand(32))
    # afterwards: ordinary parameters, a second training batch changes nothing
    loc = layer.loc.detach().clone()
    layer(5 * x + 7)
    assert torch.equal(layer.loc.detach(), loc)


def test_actnorm_deeper_layers_initialise_on_their_own_inputs() -> None:
    coupling = jf.AffineCoupling(2, hidden=8)
    perturb(coupling)
    flow = jf.Flow([jf.ActNorm(2), coupling, jf.ActNorm(2)], (2, 4, 4)).double()
    x = 2 * torch.randn(64, 2, 4, 4, dtype=F64) + 1
    flow.eval()  # explicit initialisation works in any mode
    assert initialize_actnorm(flow, x) == 2
    assert not flow.training
    h, _ = flow.layers[1](flow.layers[0](x)[0])
    z, _ = flow.layers[2](h)
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(
        z.var((0, 2, 3), correction=0), torch.ones(2, dtype=F64), atol=1e-10, rtol=0
    )
    assert initialize_actnorm(flow, x) == 0  # already done
    assert initialize_actnorm(flow, 3 * x, reinit=True) == 2


def test_actnorm_never_initialises_in_evaluation_and_warns() -> None:
    x = torch.randn(8, 2, 3, 3) + 4
    layer = jf.ActNorm(2)
    layer.eval()
    with pytest.warns(UserWarning, match="initialize_actnorm"):
        z, logdet = layer(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(8))
    assert not layer.is_initialized
    layer.train()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(x)  # warned once per layer already: silent now, still not initialised
    assert not layer.is_initialized
    # no_grad in train mode (e.g. a validation pass without .eval()) does not initialise either
    other = jf.ActNorm(2)
    with torch.no_grad(), pytest.warns(UserWarning, match="before its data-dependent"):
        other(x)
    assert not other.is_initialized
    with pytest.warns(UserWarning, match="before its data-dependent"):
        jf.ActNorm(2).inverse(x)


def test_actnorm_refuses_to_initialise_inside_torch_func() -> None:
    layer = jf.ActNorm(3)
    x = torch.randn(4, 3)
    with pytest.raises(RuntimeError, match=r"torch.func.*initialize_actnorm"):
        vmap(jacrev(lambda x1: layer(x1.unsqueeze(0))[0].flatten()))(x)
    assert not layer.is_initialized
    initialize_actnorm(layer, x)
    J = vmap(jacrev(lambda x1: layer(x1.unsqueeze(0))[0].flatten()))(x)
    torch.testing.assert_close(J[0], torch.diag(layer.log_scale.exp()).detach())


def test_actnorm_flag_is_saved_and_restored(tmp_path: Path) -> None:
    layer = jf.ActNorm(3)
    layer(torch.randn(16, 3, 2, 2) * 4 + 1)
    state = layer.state_dict()
    assert set(state) == {"loc", "log_scale", "initialized"}
    fresh = jf.ActNorm(3)
    fresh.load_state_dict(state)
    assert fresh.is_initialized
    torch.testing.assert_close(fresh.loc, layer.loc)
    # a training batch after loading does not re-initialise
    fresh(torch.randn(16, 3, 2, 2))
    torch.testing.assert_close(fresh.loc, layer.loc)
    # whole-module pickling keeps it too
    torch.save(layer, tmp_path / "layer.pt")
    assert torch.load(tmp_path / "layer.pt", weights_only=False).is_initialized
    # loading an uninitialised state re-arms the initialisation
    layer.load_state_dict(jf.ActNorm(3).state_dict())
    assert not layer.is_initialized
    layer(torch.randn(16, 3, 2, 2) * 4 + 1)
    assert layer.is_initialized


ACTNORM_WORKER = """
import torch, torch.distributed as dist
import jacfree as jf

dist.init_process_group("gloo")
rank = dist.get_rank()
x = torch.load({data!r})
shard = x[:7] if rank == 0 else x[7:]  # uneven shards
layer = jf.ActNorm(3).double()
layer(shard)
torch.save(layer.state_dict(), {out!r} + str(rank))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_actnorm_initialisation_is_shared_across_processes(tmp_path: Path) -> None:
    """Under torch.distributed every replica initialises on the statistics of the global batch."""
    x = 3 * torch.randn(20, 3, 2, 2, dtype=F64) + 1e3
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "worker.py"
    out = str(tmp_path / "state")
    script.write_text(textwrap.dedent(ACTNORM_WORKER.format(data=str(tmp_path / "x.pt"), out=out)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*cmd, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = jf.ActNorm(3).double()
    reference(x)
    for rank in (0, 1):
        state = torch.load(out + str(rank), weights_only=True)
        assert bool(state["initialized"])
        torch.testing.assert_close(state["loc"], reference.loc.detach(), rtol=1e-13, atol=0)
        torch.testing.assert_close(state["log_scale"], reference.log_scale.detach())


def test_actnorm_edge_cases() -> None:
    layer = jf.ActNorm(2).double()
    x = torch.randn(10, 2, dtype=F64)
    x[:, 1] = 3.0  # a constant channel keeps scale 1
    layer(x)
    assert layer.log_scale[1] == 0 and layer.loc[1] == 3.0
    # a mean far larger than the spread (two-pass statistics: no cancellation)
    layer = jf.ActNorm(2).double()
    z, _ = layer(1e8 + torch.randn(50, 2, 3, 3, dtype=F64))
    torch.testing.assert_close(z.var((0, 2, 3), correction=0), torch.ones(2, dtype=F64))
    with pytest.raises(ValueError, match=r"at least 2 values per channel.*larger batch"):
        jf.ActNorm(2)(torch.randn(1, 2))
    with pytest.raises(ValueError, match=r"expects input of shape \(batch, 2, \.\.\.\).*channels="):
        jf.ActNorm(2)(torch.randn(4, 3, 2, 2))


# -- AffineCoupling ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "shape"),
    [
        ({}, (4, 3, 3)),
        ({"affine": False, "swap": True}, (5, 2, 2)),
        ({"kernel_size": 1}, (7,)),
    ],
)
def test_coupling_is_the_identity_at_initialisation(kwargs: dict, shape: tuple[int, ...]) -> None:
    layer = jf.AffineCoupling(shape[0], hidden=16, **kwargs)
    x = torch.randn(5, *shape)
    z, logdet = layer(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(5))
    assert torch.equal(layer.inverse(x), x)


def test_coupling_keeps_the_conditioning_half_and_bounds_the_scale() -> None:
    for swap in (False, True):
        layer = jf.AffineCoupling(5, hidden=16, swap=swap, scale_bound=1.5).double()
        perturb(layer, scale=3.0)  # large weights: the raw log-scales are far beyond ±1.5
        x = 4 * torch.randn(6, 5, 3, 3, dtype=F64)
        z, logdet = layer(x)
        kept = slice(3, 5) if swap else slice(0, 2)
        assert torch.equal(z[:, kept], x[:, kept])
        n_moved = 3 * 9
        assert (logdet.abs() < 1.5 * n_moved).all()
        torch.testing.assert_close(layer.inverse(z), x, rtol=1e-9, atol=1e-9)


def test_coupling_with_a_custom_net() -> None:
    net = nn.Conv2d(2, 4, 1)  # channels 0::2 log-scale, 1::2 shift of the 2 moved channels
    layer = jf.AffineCoupling(4, net=net).double()
    x = torch.randn(3, 4, 2, 2, dtype=F64)
    z, logdet = layer(x)
    h = net(x[:, :2])
    log_s = 2 * torch.tanh(h[:, 0::2] / 2)
    torch.testing.assert_close(z[:, 2:], x[:, 2:] * log_s.exp() + h[:, 1::2])
    torch.testing.assert_close(logdet, log_s.flatten(1).sum(1))


def test_coupling_errors_name_the_problem_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"at least 2 channels.*Squeeze"):
        jf.AffineCoupling(1)
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        jf.AffineCoupling(4, kernel_size=2)
    with pytest.raises(ValueError, match="kernel_size=1 for vectors"):
        jf.AffineCoupling(4)(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\(batch, 4, H, W\).*channels=x.shape\[1\]"):
        jf.AffineCoupling(4)(torch.randn(3, 6, 2, 2))
    bad = jf.AffineCoupling(4, net=nn.Conv2d(2, 3, 1))
    with pytest.raises(ValueError, match=r"conditioner returned shape \(3, 3, 2, 2\)"):
        bad(torch.randn(3, 4, 2, 2))


# -- Squeeze ----------------------------------------------------------------------------------


@pytest.mark.parametrize("f", [2, 3])
def test_squeeze_index_map(f: int) -> None:
    x = torch.randn(2, 3, 2 * f, 3 * f)
    z, logdet = jf.Squeeze(f)(x)
    assert z.shape == (2, 3 * f * f, 2, 3) and torch.equal(logdet, torch.zeros(2))
    for c in range(3):
        for i in range(f):
            for j in range(f):
                assert torch.equal(z[:, c * f * f + i * f + j], x[:, c, i::f, j::f])
    assert torch.equal(jf.Squeeze(f).inverse(z), x)
    assert torch.equal(jf.Unsqueeze(f)(z)[0], x)
    assert torch.equal(jf.Unsqueeze(f).inverse(x), z)
    assert jf.Squeeze(f).output_shape((3, 2 * f, 3 * f)) == (3 * f * f, 2, 3)
    assert jf.Unsqueeze(f).output_shape((3 * f * f, 2, 3)) == (3, 2 * f, 3 * f)


def test_squeeze_errors_name_the_problem_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"divisible by 2, got 7×7.*crop or pad"):
        jf.Squeeze()(torch.randn(2, 1, 7, 7))
    with pytest.raises(ValueError, match=r"\(batch, C, H, W\).*reshape"):
        jf.Squeeze()(torch.randn(2, 16))
    with pytest.raises(ValueError, match="channel count divisible by 4"):
        jf.Unsqueeze()(torch.randn(2, 6, 2, 2))
    with pytest.raises(ValueError, match="factor"):
        jf.Squeeze(1)


# -- SplitPrior -------------------------------------------------------------------------------


def test_split_prior_is_standard_at_initialisation() -> None:
    flow = jf.Flow([jf.SplitPrior(4)], (4, 2, 2))
    x = torch.randn(5, 4, 2, 2)
    z, logdet = flow(x)
    assert torch.equal(z, x) and torch.equal(logdet, torch.zeros(5))
    torch.testing.assert_close(flow.log_prob(x), log_normal(x))


def test_split_prior_packing_and_density() -> None:
    """z = [inner(h₁) reshaped to h₁'s shape, ε]; log p = log N(u) + log N(h₂; μ, σ²) + inner."""
    inner = [jf.Squeeze(), jf.AffineCoupling(8, hidden=8)]
    split = jf.SplitPrior(5, inner=inner).double()
    perturb(split)
    x = torch.randn(4, 5, 4, 4, dtype=F64)
    z, logdet = split(x)
    h1, h2 = x[:, :2], x[:, 2:]
    u, inner_logdet = inner[1](inner[0](h1)[0])
    assert u.shape == (4, 8, 2, 2)
    assert torch.equal(z[:, :2], u.reshape(4, 2, 4, 4))
    h = split.prior(h1)
    mu, log_sigma = h[:, 0::2], h[:, 1::2]
    torch.testing.assert_close(z[:, 2:], (h2 - mu) * torch.exp(-log_sigma))
    torch.testing.assert_close(logdet, inner_logdet - log_sigma.flatten(1).sum(1))
    # the whole flow's log-density is the multi-scale likelihood
    flow = jf.Flow([split], (5, 4, 4))
    gauss = torch.distributions.Normal(mu, log_sigma.exp())
    ref = log_normal(u) + gauss.log_prob(h2).flatten(1).sum(1) + inner_logdet
    torch.testing.assert_close(flow.log_prob(x), ref, rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(split.inverse(z), x, rtol=1e-12, atol=1e-12)
    assert split.output_shape((5, 4, 4)) == (5, 4, 4)


class Spy(jf.FlowLayer):
    """A shape-preserving layer that records which entry points were called."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append("forward")
        return 2 * x, x.new_full((x.shape[0],), math.log(2) * x[0].numel())

    def training_forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.calls.append("training_forward")
        return 2 * x, x.new_full((x.shape[0],), 123.0)

    def inverse(self, z: Tensor) -> Tensor:
        self.calls.append("inverse")
        return z / 2

    def approximate_inverse(self, z: Tensor) -> Tensor:
        self.calls.append("approximate_inverse")
        return z / 2


def test_split_prior_forwards_every_entry_point_to_its_inner_layers() -> None:
    spy = Spy()
    flow = jf.Flow([jf.SplitPrior(4, inner=[spy], kernel_size=1)], (4,))
    x = torch.randn(3, 4)
    flow(x)
    flow.log_prob(x)
    assert spy.calls == ["forward", "forward"]
    spy.calls.clear()
    loss = flow.loss(x)
    assert spy.calls == ["training_forward"]
    # the training term of the inner layer (123 per sample) is what the loss sees
    z, _ = flow(x)
    torch.testing.assert_close(loss, -(log_normal(z) + 123.0).mean())
    spy.calls.clear()
    flow.inverse(z)
    flow.sample(2, approximate=True)
    assert spy.calls == ["inverse", "approximate_inverse"]


def test_split_prior_with_self_normalizing_inner_layers() -> None:
    snf = jf.SquareAffine(2, "selfnorm")
    flow = jf.Flow([jf.SplitPrior(4, inner=[snf, jf.SmoothLeakyReLU()], kernel_size=1)], (4,))
    with torch.no_grad():
        snf.inverse_weight.add_(0.1)  # R ≠ W⁻¹: approximate and exact inverses differ
    assert flow.gradient == "selfnorm"
    flow.set_recon_weight(3.0)
    assert snf.recon_weight == 3.0
    x = torch.randn(8, 4)
    flow.loss(x).backward()
    assert "recon" in flow.training_diagnostics()
    assert snf.inverse_weight.grad is not None
    z, _ = flow(x)
    exact = flow.inverse(z)
    approx = flow.inverse(z, approximate=True)
    torch.testing.assert_close(exact, x, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(approx[:, :2], exact[:, :2])  # the inner half went through R
    assert torch.equal(approx[:, 2:], exact[:, 2:])  # the prior is still standard: h₂ = ε


class Flatten(jf.FlowLayer):
    """Changes the shape without declaring output_shape (to test the error)."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x.flatten(1), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:  # pragma: no cover - never reached
        raise NotImplementedError


def test_split_prior_errors_name_the_problem_and_the_fix() -> None:
    with pytest.raises(ValueError, match=r"at least 2 channels.*Squeeze"):
        jf.SplitPrior(1)
    with pytest.raises(TypeError, match="FlowLayers"):
        jf.SplitPrior(4, inner=[nn.Identity()])  # type: ignore[list-item]
    with pytest.raises(RuntimeError, match="must define output_shape"):
        jf.SplitPrior(4, inner=[Flatten()])(torch.randn(2, 4, 2, 2))
    with pytest.raises(ValueError, match="kernel_size=1 for vectors"):
        jf.SplitPrior(4)(torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"\(batch, 4, H, W\)"):
        jf.SplitPrior(4)(torch.randn(2, 3, 2, 2))


# -- a Glow-like flow -------------------------------------------------------------------------


def glow_like(c: int = 1, hw: int = 8, hidden: int = 8) -> jf.Flow:
    def step(ch: int, swap: bool) -> list[jf.FlowLayer]:
        return [jf.ActNorm(ch), jf.AffineCoupling(ch, hidden=hidden, swap=swap)]

    level2 = [jf.Squeeze(), *step(8 * c, False), *step(8 * c, True)]
    layers = [
        jf.Squeeze(),
        *step(4 * c, False),
        *step(4 * c, True),
        jf.RQSplineActivation(4 * c),
        jf.SplitPrior(4 * c, inner=level2),
        jf.Unsqueeze(),
    ]
    return jf.Flow(layers, (c, hw, hw))


def test_glow_like_flow_trains_samples_and_round_trips() -> None:
    torch.manual_seed(0)
    flow = glow_like().double()
    x = torch.randn(32, 1, 8, 8, dtype=F64) * torch.linspace(0.5, 2, 8, dtype=F64) + 1
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    first = None
    for _ in range(15):
        opt.zero_grad()
        loss = flow.loss(x)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert all(m.is_initialized for m in flow.modules() if isinstance(m, jf.ActNorm))
    assert float(flow.loss(x).detach()) < first
    flow.eval()
    s = flow.sample(4)
    assert s.shape == (4, 1, 8, 8) and torch.isfinite(s).all()
    assert flow.sample(4, approximate=True).shape == s.shape
    z, _ = flow(x)
    torch.testing.assert_close(flow.inverse(z), x, rtol=1e-10, atol=1e-10)

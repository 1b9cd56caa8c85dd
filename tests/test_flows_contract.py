"""One contract test, run over every layer and every flow (the zuko pattern).

Each layer is wrapped in a one-layer :class:`jacfree.Flow`, so layers and flows are held to the
same contract: shapes, round trip, log-det against the autograd Jacobian, gradients for every
parameter, train/eval/no-grad agreement, persistence, device/dtype following, ``.double()`` and the
per-parameter-state cache of the exact log-det.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.func import jacrev, vmap

import jacfree as jf

D = 4  # features
B = 6  # batch
LEVELS = 8  # levels of the quantised cases
SEED = 1234  # reseeded before every call that may draw dequantisation noise


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], jf.Flow]
    data: str  # "real" (R^D), "bounded" ([0, LEVELS]^D), "integer" ({0..LEVELS-1}^D)

    def __str__(self) -> str:
        return self.name


def _single(factory: Callable[[], jf.FlowLayer]) -> Callable[[], jf.Flow]:
    return lambda: jf.Flow([factory()], (D,))


def _preprocessed_fcflow() -> jf.Flow:
    prep = [jf.Dequantize(LEVELS), jf.LogitTransform(LEVELS, alpha=0.05)]
    return jf.FCFlow(D, layers=2, preprocess=prep)


CASES = [
    Case("SquareAffine-exact", _single(lambda: jf.SquareAffine(D, "exact")), "real"),
    Case("SquareAffine-relative", _single(lambda: jf.SquareAffine(D, "relative")), "real"),
    Case("SmoothLeakyReLU", _single(lambda: jf.SmoothLeakyReLU(0.3)), "real"),
    Case("LogitTransform", _single(lambda: jf.LogitTransform(LEVELS, alpha=0.05)), "bounded"),
    Case("Dequantize", _single(lambda: jf.Dequantize(LEVELS)), "integer"),
    *[
        Case(f"FCFlow-{mode}-L{n}", partial(jf.FCFlow, D, layers=n, gradient=mode), "real")
        for mode in ("exact", "relative")
        for n in (1, 2, 3)
    ],
    Case("FCFlow-dequantize-logit", _preprocessed_fcflow, "integer"),
]


# -- helpers ------------------------------------------------------------------------------------


def make(case: Case, seed: int, dtype: torch.dtype, device: torch.device) -> jf.Flow:
    """Build the case with non-orthogonal weights (orthogonal + 0.3·randn) and non-zero biases."""
    torch.manual_seed(seed)
    flow = case.build()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in flow.modules():
            if isinstance(m, jf.SquareAffine):
                m.weight.add_(0.3 * torch.randn(D, D, generator=gen))
                m.bias.copy_(0.5 * torch.randn(D, generator=gen))
    return flow.to(device=device, dtype=dtype)


def make_data(case: Case, dtype: torch.dtype, device: torch.device, n: int = B) -> Tensor:
    gen = torch.Generator().manual_seed(99)
    if case.data == "real":
        x = 1.5 * torch.randn(n, D, generator=gen, dtype=torch.float64) + 0.3
    elif case.data == "bounded":
        x = LEVELS * (0.01 + 0.98 * torch.rand(n, D, generator=gen, dtype=torch.float64))
    else:
        x = torch.randint(0, LEVELS, (n, D), generator=gen).double()
        x[0, 0], x[0, 1] = 0, LEVELS - 1  # both ends of the range
    return x.to(device=device, dtype=dtype)


def forward(flow: jf.Flow, x: Tensor) -> tuple[Tensor, Tensor]:
    torch.manual_seed(SEED)
    return flow(x)


def log_prob(flow: jf.Flow, x: Tensor, *, grad: bool = False) -> Tensor:
    """``grad=False`` takes the cached path (no gradient recorded); ``grad=True`` recomputes."""
    torch.manual_seed(SEED)
    with torch.set_grad_enabled(grad):
        out = flow.log_prob(x)
    return out.detach()


def tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}


def affine_layers(flow: jf.Flow) -> list[jf.SquareAffine]:
    return [m for m in flow.modules() if isinstance(m, jf.SquareAffine)]


def assert_follows(t: Tensor, dtype: torch.dtype, device: torch.device) -> None:
    assert t.dtype == dtype
    assert t.device.type == device.type


# -- the contract -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case", CASES, ids=str)
def test_flow_contract(
    case: Case,
    dtype: torch.dtype,
    device: torch.device,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flow = make(case, seed=0, dtype=dtype, device=device)
    x = make_data(case, dtype, device)
    params = list(flow.parameters())
    n_affine = len(affine_layers(flow))

    # shapes, dtype and device of every output follow the input
    z, logdet = forward(flow, x)
    assert z.shape == (B, D)
    assert logdet.shape == (B,)
    lp = log_prob(flow, x, grad=True)
    assert lp.shape == (B,)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all() and torch.isfinite(lp).all()
    loss = flow.loss(x)
    assert loss.shape == ()
    assert torch.isfinite(loss)
    samples = flow.sample(5)
    assert samples.shape == (5, D)
    assert torch.isfinite(samples).all()
    for t in (z, logdet, lp, loss, samples, flow.inverse(z)):
        assert_follows(t, dtype, device)
    if case.data == "integer":  # the samples are on the data's own (discrete) scale
        assert torch.equal(samples, samples.floor())
        assert samples.min() >= 0 and samples.max() <= LEVELS - 1

    # round trip data -> latent -> data (Dequantize's inverse is floor: exact on integers)
    x_back = flow.inverse(z)
    if case.data == "integer":
        assert torch.equal(x_back, x)
    else:
        torch.testing.assert_close(x_back, x, **tol(dtype))
    if case.data == "real":  # and latent -> data -> latent
        s = torch.randn(B, D, dtype=dtype, device=device)
        torch.testing.assert_close(forward(flow, flow.inverse(s))[0], s, **tol(dtype))

    # log-det == slogdet of the full Jacobian (torch.func), per sample, from the same forward
    # call; and log_prob == log N(z; 0, I) + log|det J| computed independently
    def one(x1: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        z1, ld1 = flow(x1.unsqueeze(0))
        return z1.squeeze(0), (z1.squeeze(0), ld1.squeeze(0))

    torch.manual_seed(SEED)
    J, (zj, ldj) = vmap(jacrev(one, has_aux=True), randomness="different")(x)
    assert J.shape == (B, D, D)
    sign, logabsdet = torch.linalg.slogdet(J)
    assert (sign != 0).all()
    torch.testing.assert_close(ldj, logabsdet, **tol(dtype))
    ref_lp = -0.5 * zj.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + logabsdet
    torch.testing.assert_close(log_prob(flow, x, grad=True), ref_lp.detach(), **tol(dtype))
    if case.data != "integer":  # deterministic forward: the vmapped call is the batched one
        torch.testing.assert_close(zj, z, **tol(dtype))
        torch.testing.assert_close(ldj, logdet, **tol(dtype))

    # the training loss: its value is the batch-mean NLL, minus Σ log|det W| in relative mode
    exact_nll = -log_prob(flow, x, grad=True).mean()
    omitted = sum(
        (
            torch.linalg.slogdet(m.weight.detach().double()).logabsdet
            for m in affine_layers(flow)
            if m.gradient == "relative"
        ),
        start=torch.zeros((), dtype=torch.float64, device=device),
    )
    torch.manual_seed(SEED)
    torch.testing.assert_close(
        flow.loss(x).detach().double(), (exact_nll.double() + omitted), **tol(dtype)
    )

    # every parameter gets a finite non-zero gradient, from loss and from log_prob
    for objective in (flow.loss, lambda x: -flow.log_prob(x).mean()) if params else ():
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(SEED)
        objective(x).backward()
        for name, p in flow.named_parameters():
            assert p.grad is not None, name
            assert torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    flow.zero_grad(set_to_none=True)
    # and the data gets one too (log_prob is differentiable in x)
    xr = x.clone().requires_grad_(True)
    log_prob_x = flow.log_prob(xr).sum()
    (gx,) = torch.autograd.grad(log_prob_x, xr)
    assert torch.isfinite(gx).all() and gx.abs().sum() > 0

    # eval mode and no-grad (cached path) give what train mode gives
    flow.train()
    z_train, ld_train = forward(flow, x)
    flow.eval()
    z_eval, ld_eval = forward(flow, x)
    with torch.no_grad():
        z_nograd, ld_nograd = forward(flow, x)
    flow.train()
    assert torch.equal(z_eval, z_train) and torch.equal(ld_eval, ld_train)
    torch.testing.assert_close(z_nograd, z_train.detach(), rtol=0, atol=0)
    torch.testing.assert_close(ld_nograd, ld_train.detach(), **tol(dtype))

    # state_dict round trip through a file, into a fresh (differently initialised) model
    torch.save(flow.state_dict(), tmp_path / "state.pt")
    fresh = make(case, seed=1, dtype=dtype, device=device)
    before = log_prob(fresh, x)  # warms fresh's caches with its own parameters
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    torch.testing.assert_close(log_prob(fresh, x), lp, **tol(dtype))
    if params:
        assert not torch.allclose(before, lp)

    # the whole module through torch.save / torch.load
    torch.save(flow, tmp_path / "flow.pt")
    loaded = torch.load(tmp_path / "flow.pt", weights_only=False)
    assert type(loaded) is type(flow)
    assert loaded.gradient == flow.gradient
    torch.testing.assert_close(log_prob(loaded, x), lp, **tol(dtype))
    torch.testing.assert_close(loaded.inverse(z.detach()), flow.inverse(z.detach()))

    # the log_prob cache: reused while nothing changes, invalidated by every kind of update
    lu_calls: list[int] = []
    real_lu_factor = torch.linalg.lu_factor

    def counting_lu_factor(*args: object, **kwargs: object) -> object:
        lu_calls.append(1)
        return real_lu_factor(*args, **kwargs)

    monkeypatch.setattr(torch.linalg, "lu_factor", counting_lu_factor)
    lp0 = log_prob(flow, x)
    warm = len(lu_calls)
    flow.zero_grad()
    flow.eval()
    flow.train()
    lp1 = log_prob(flow, x)  # after no-ops
    assert torch.equal(lp1, lp0)
    assert len(lu_calls) == warm, "the cached factorisation was recomputed without a change"
    torch.testing.assert_close(lp0, log_prob(flow, x, grad=True), **tol(dtype))

    if params:
        # an optimizer step
        opt = torch.optim.SGD(params, lr=0.05)
        torch.manual_seed(SEED)
        flow.loss(x).backward()
        opt.step()
        lp2 = log_prob(flow, x)
        assert len(lu_calls) == warm + n_affine
        assert not torch.allclose(lp2, lp0)
        torch.testing.assert_close(lp2, log_prob(flow, x, grad=True), **tol(dtype))
        # load_state_dict of other values
        other = make(case, seed=2, dtype=dtype, device=device)
        flow.load_state_dict(other.state_dict())
        lp3 = log_prob(flow, x)
        torch.testing.assert_close(lp3, log_prob(other, x, grad=True), **tol(dtype))
        assert not torch.allclose(lp3, lp2)
        # an in-place edit through .data (no version-counter bump visible to autograd)
        affine_layers(flow)[-1].weight.data.mul_(1.5)
        lp4 = log_prob(flow, x)
        assert not torch.allclose(lp4, lp3)
        torch.testing.assert_close(lp4, log_prob(flow, x, grad=True), **tol(dtype))
        # and the inverse uses the current parameters too
        torch.testing.assert_close(flow.inverse(forward(flow, x)[0]), x, **tol(dtype))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_double_after_use(case: Case, device: torch.device) -> None:
    """``flow.double()`` on a float32 model that has warmed its caches gives float64 results."""
    flow = make(case, seed=0, dtype=torch.float32, device=device)
    x32 = make_data(case, torch.float32, device)
    log_prob(flow, x32)  # warm every cache in float32
    z32, _ = forward(flow, x32)
    flow.inverse(z32)

    flow.double()
    assert all(p.dtype == torch.float64 for p in flow.parameters())
    x = x32.double()
    lp = log_prob(flow, x)
    assert lp.dtype == torch.float64
    # full float64 accuracy against the uncached path and the independent change of variables
    torch.testing.assert_close(lp, log_prob(flow, x, grad=True), rtol=1e-12, atol=1e-12)
    z, _ = forward(flow, x)
    torch.manual_seed(SEED)
    J = vmap(jacrev(lambda x1: flow(x1.unsqueeze(0))[0].squeeze(0)), randomness="different")(x)
    ref = -0.5 * z.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + torch.linalg.slogdet(J)[1]
    torch.testing.assert_close(lp, ref.detach(), rtol=1e-12, atol=1e-12)
    x_back = flow.inverse(z)
    assert x_back.dtype == torch.float64
    if case.data == "integer":
        assert torch.equal(x_back, x)
    else:
        torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    assert flow.sample(3).dtype == torch.float64

    # a float64-only change of the weights (invisible in float32) is seen by the cache
    for layer in affine_layers(flow):
        layer.weight.data.mul_(1 + 1e-9)
    if affine_layers(flow):
        lp_new = log_prob(flow, x)
        assert not torch.equal(lp_new, lp)
        torch.testing.assert_close(lp_new, log_prob(flow, x, grad=True), rtol=1e-13, atol=1e-13)


def test_contract_covers_every_public_layer() -> None:
    """Adding a public layer without adding it to CASES fails here."""
    covered = {type(m) for case in CASES for m in case.build().modules()}
    public = {
        obj
        for obj in vars(jf).values()
        if isinstance(obj, type) and issubclass(obj, jf.FlowLayer) and obj is not jf.FlowLayer
    }
    assert public <= covered, f"not in the contract test: {public - covered}"


def test_deepcopy_is_independent() -> None:
    """A deep copy shares no cache or parameter with the original."""
    flow = make(CASES[-2], seed=0, dtype=torch.float64, device=torch.device("cpu"))
    x = make_data(CASES[-2], torch.float64, torch.device("cpu"))
    lp = log_prob(flow, x)
    twin = copy.deepcopy(flow)
    affine_layers(twin)[0].weight.data.mul_(2.0)
    lp_twin = log_prob(twin, x)
    torch.testing.assert_close(log_prob(flow, x), lp)
    assert not torch.allclose(lp_twin, lp)
    torch.testing.assert_close(lp_twin, log_prob(twin, x, grad=True))

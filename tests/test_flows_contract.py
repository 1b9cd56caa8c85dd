"""One contract test, run over every layer and every flow (the zuko pattern).

Each layer is wrapped in a one-layer :class:`jacfree.Flow`, so layers and flows are held to the
same contract: shapes, round trip, log-det against the autograd Jacobian, gradients for every
parameter, train/eval/no-grad agreement, persistence, device/dtype following, ``.double()`` and the
per-parameter-state cache of the exact log-det.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor
from torch.func import jacrev, vmap

import jacfree as jf
from contract import (
    LEVELS,
    SEED,
    B,
    Case,
    all_cases,
    assert_follows,
    forward,
    gradient_layers,
    log_prob,
    make,
    make_data,
    tol,
)
from jacfree.flows.core import ParameterStateCache

CASES = all_cases()


def training_value_offset(flow: jf.Flow) -> Tensor:
    """What ``flow.loss`` adds to the exact batch-mean NLL: the log|det| of every layer whose mode
    never evaluates it (relative, selfnorm), and λ·E of the self-normalizing ones (read after a
    ``loss`` call)."""
    total = torch.zeros((), dtype=torch.float64)
    for m in gradient_layers(flow):
        if m.gradient in ("relative", "selfnorm"):
            total = total + m.logabsdet().detach().double().cpu()
        if m.gradient == "selfnorm":
            total = total + float(m.recon_weight) * m.last_reconstruction.double().cpu()
    return total


def cache_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every (re)computation of a per-parameter-state cached value."""
    calls: list[str] = []
    real_get = ParameterStateCache.get

    def counting_get(self, name, tensors, compute):  # type: ignore[no-untyped-def]
        def counted():  # type: ignore[no-untyped-def]
            calls.append(name)
            return compute()

        return real_get(self, name, tensors, counted)

    monkeypatch.setattr(ParameterStateCache, "get", counting_get)
    return calls


def weight_to_edit(flow: jf.Flow) -> torch.nn.Parameter:
    """The parameter an in-place ``.data`` edit targets: the last square weight if any."""
    weights = [m.weight for m in gradient_layers(flow) if hasattr(m, "weight")]
    return weights[-1] if weights else list(flow.parameters())[-1]


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
    shape = (B, *case.shape)

    # shapes, dtype and device of every output follow the input
    z, logdet = forward(flow, x)
    assert z.shape == shape
    assert logdet.shape == (B,)
    lp = log_prob(flow, x, grad=True)
    assert lp.shape == (B,)
    assert torch.isfinite(z).all() and torch.isfinite(logdet).all() and torch.isfinite(lp).all()
    loss = flow.loss(x)
    assert loss.shape == ()
    assert torch.isfinite(loss)
    samples = flow.sample(5)
    assert samples.shape == (5, *case.shape)
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
        s = torch.randn(shape, dtype=dtype, device=device)
        torch.testing.assert_close(forward(flow, flow.inverse(s))[0], s, **tol(dtype))

    # log-det == slogdet of the full Jacobian (torch.func), per sample, from the same forward
    # call; and log_prob == log N(z; 0, I) + log|det J| computed independently
    def one(x1: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        z1, ld1 = flow(x1.unsqueeze(0))
        return z1.flatten(), (z1.squeeze(0), ld1.squeeze(0))

    torch.manual_seed(SEED)
    J, (zj, ldj) = vmap(jacrev(one, has_aux=True), randomness="different")(x)
    J = J.reshape(B, case.dim, case.dim)
    sign, logabsdet = torch.linalg.slogdet(J)
    assert (sign != 0).all()
    torch.testing.assert_close(ldj, logabsdet, **tol(dtype))
    ref_lp = -0.5 * zj.flatten(1).square().sum(1) - 0.5 * case.dim * math.log(2 * math.pi)
    ref_lp = ref_lp + logabsdet
    torch.testing.assert_close(log_prob(flow, x, grad=True), ref_lp.detach(), **tol(dtype))
    if case.data != "integer":  # deterministic forward: the vmapped call is the batched one
        torch.testing.assert_close(zj, z, **tol(dtype))
        torch.testing.assert_close(ldj, logdet, **tol(dtype))

    # the training loss: its value is the batch-mean NLL, minus the log-dets a mode never
    # evaluates (relative, selfnorm), plus the reconstruction penalty λ·E (selfnorm)
    exact_nll = -log_prob(flow, x, grad=True).mean()
    torch.manual_seed(SEED)
    value = flow.loss(x).detach().double()
    offset = training_value_offset(flow).to(device)
    torch.testing.assert_close(value, exact_nll.double() + offset, **tol(dtype))

    # every parameter gets a finite non-zero gradient from loss; from log_prob, every one but
    # the learned inverses (the exact density does not depend on them)
    for objective, skip in (
        (flow.loss, ()),
        (lambda x: -flow.log_prob(x).mean(), ("inverse_weight",)),
    ):
        if not params:
            break
        flow.zero_grad(set_to_none=True)
        torch.manual_seed(SEED)
        objective(x).backward()
        for name, p in flow.named_parameters():
            if name.rsplit(".", 1)[-1] in skip:
                continue
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
    calls = cache_counter(monkeypatch)
    lp0 = log_prob(flow, x)
    warm = len(calls)
    flow.zero_grad()
    flow.eval()
    flow.train()
    lp1 = log_prob(flow, x)  # after no-ops
    assert torch.equal(lp1, lp0)
    assert len(calls) == warm, "a cached value was recomputed without a change"
    torch.testing.assert_close(lp0, log_prob(flow, x, grad=True), **tol(dtype))

    if params:
        # an optimizer step
        opt = torch.optim.SGD(params, lr=0.05)
        torch.manual_seed(SEED)
        flow.loss(x).backward()
        opt.step()
        lp2 = log_prob(flow, x)
        if warm:
            assert len(calls) > warm, "the cache missed an optimizer step"
        assert not torch.allclose(lp2, lp0)
        torch.testing.assert_close(lp2, log_prob(flow, x, grad=True), **tol(dtype))
        # load_state_dict of other values
        other = make(case, seed=2, dtype=dtype, device=device)
        flow.load_state_dict(other.state_dict())
        lp3 = log_prob(flow, x)
        torch.testing.assert_close(lp3, log_prob(other, x, grad=True), **tol(dtype))
        assert not torch.allclose(lp3, lp2)
        # an in-place edit through .data bypasses the version counters the caches are keyed on
        # (keys are read for free, never compared on the device): invalidate explicitly
        weight_to_edit(flow).data.mul_(1.5)
        jf.flows.invalidate_caches(flow)
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
    J = vmap(jacrev(lambda x1: flow(x1.unsqueeze(0))[0].flatten()), randomness="different")(x)
    J = J.reshape(B, case.dim, case.dim)
    ref = -0.5 * z.flatten(1).square().sum(1) - 0.5 * case.dim * math.log(2 * math.pi)
    ref = ref + torch.linalg.slogdet(J)[1]
    torch.testing.assert_close(lp, ref.detach(), rtol=1e-12, atol=1e-12)
    x_back = flow.inverse(z)
    assert x_back.dtype == torch.float64
    if case.data == "integer":
        assert torch.equal(x_back, x)
    else:
        torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    assert flow.sample(3).dtype == torch.float64

    # a float64-only change of the weights (invisible in float32) is seen by the cache
    if gradient_layers(flow):
        with torch.no_grad():  # an in-place update autograd sees (an optimiser's kind)
            for p in flow.parameters():
                p.mul_(1 + 1e-9)
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
    case = next(c for c in CASES if c.name == "FCFlow-exact-L3")
    flow = make(case, seed=0, dtype=torch.float64, device=torch.device("cpu"))
    x = make_data(case, torch.float64, torch.device("cpu"))
    lp = log_prob(flow, x)
    twin = copy.deepcopy(flow)
    twin.affine_layers[0].weight.data.mul_(2.0)
    lp_twin = log_prob(twin, x)
    torch.testing.assert_close(log_prob(flow, x), lp)
    assert not torch.allclose(lp_twin, lp)
    torch.testing.assert_close(lp_twin, log_prob(twin, x, grad=True))

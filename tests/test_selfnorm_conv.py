"""Convolutional self-normalizing layers and 1×1 convolutions (Keller et al., ICML 2021), float64.

References come from explicitly built D×D matrices (``conv_matrix``, itself checked against
``conv2d``) and autograd of exact objectives — the flow's NLL through ``slogdet``, the NLL of the
inverse model parametrised by r (T(w) = T(r)⁻¹), the penalty computed directly — never from the
SNF rule itself. Images are tiny (C = 2, H = 5, W = 4: D = 40).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import jacrev, vmap

import jacfree as jf
from jacfree.flows.activations import smooth_leaky_relu, smooth_leaky_relu_log_derivative
from jacfree.flows.toeplitz import conv_matrix, conv_matrix_adjoint, flip_kernel, multiplicity

F64 = torch.float64
C, H, W = 2, 5, 4
SIZE = (H, W)
D = C * H * W
B = 7
ALPHA = 0.3


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster


def data(n: int = B, seed: int = 2, shape: tuple[int, ...] = (C, H, W)) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return 1.3 * torch.randn(n, *shape, generator=gen, dtype=F64) + 0.4


def centre_tap_conv(gen: torch.Generator, k: int = 3) -> jf.SelfNormConv2d:
    """A float64 selfnorm conv whose centre tap is I + 0.3·randn (not orthogonal), random bias,
    and r its exact inverse (the centre-tap inverse)."""
    layer = jf.SelfNormConv2d(C, k, "selfnorm").double()
    p = (k - 1) // 2
    with torch.no_grad():
        layer.weight.zero_()
        centre = torch.eye(C, dtype=F64) + 0.3 * torch.randn(C, C, generator=gen, dtype=F64)
        layer.weight[:, :, p, p] = centre
        layer.bias.copy_(0.5 * torch.randn(C, generator=gen, dtype=F64))
        layer.reset_inverse()
    return layer


def snf_conv_flow(seed: int = 0, *, exact_inverse: bool = True) -> jf.Flow:
    """conv → smooth leaky ReLU → conv, selfnorm, R = W⁻¹ exactly (or r perturbed)."""
    gen = torch.Generator().manual_seed(seed)
    convs = [centre_tap_conv(gen), centre_tap_conv(gen)]
    if not exact_inverse:
        with torch.no_grad():
            for m in convs:
                m.weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen, dtype=F64))
                m.inverse_weight.add_(0.1 * torch.randn(m.weight.shape, generator=gen, dtype=F64))
    return jf.Flow([convs[0], jf.SmoothLeakyReLU(ALPHA), convs[1]], (C, H, W))


def convs_of(flow: jf.Flow) -> list[jf.SelfNormConv2d]:
    return [m for m in flow.layers if isinstance(m, jf.SelfNormConv2d)]


def reference_nll(x: Tensor, matrices: list[Tensor], biases: list[Tensor]) -> Tensor:
    """Batch-mean NLL of T₁ → σ → T₂ → … in matrix form: log N(z) + Σ log|det T| + Σ log σ'."""
    h = x.flatten(1)
    logdet = x.new_zeros(x.shape[0])
    for k, (T, b) in enumerate(zip(matrices, biases, strict=True)):
        if k > 0:
            logdet = logdet + smooth_leaky_relu_log_derivative(h, ALPHA).sum(1)
            h = smooth_leaky_relu(h, ALPHA)
        h = h @ T.T + b.repeat_interleave(H * W)
        logdet = logdet + torch.linalg.slogdet(T).logabsdet
    log_n = -0.5 * h.square().sum(1) - 0.5 * h.shape[1] * math.log(2 * math.pi)
    return -(log_n + logdet).mean()


def snf_grads(flow: jf.Flow, x: Tensor) -> tuple[list[dict[str, Tensor]], Tensor]:
    flow.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_(True)
    flow.loss(xr).backward()
    grads = [{n: p.grad for n, p in m.named_parameters(recurse=False)} for m in convs_of(flow)]
    return grads, xr.grad


def layer_inputs(flow: jf.Flow, x: Tensor) -> list[Tensor]:
    inputs, h = [], x
    for layer in flow.layers:
        if isinstance(layer, (jf.SelfNormConv2d, jf.Conv1x1)):
            inputs.append(h.detach())
        h, _ = layer(h)
    return inputs


# -- the matrix of a convolution, flip, multiplicity ---------------------------------------------


@pytest.mark.parametrize(("k", "size"), [(1, (5, 4)), (3, (5, 4)), (5, (5, 4)), (3, (2, 3))])
def test_conv_matrix_is_the_convolution_and_flip_is_its_transpose(k: int, size: tuple) -> None:
    gen = torch.Generator().manual_seed(1)
    w = torch.randn(C, C, k, k, generator=gen, dtype=F64)
    h = torch.randn(3, C, *size, generator=gen, dtype=F64)
    T = conv_matrix(w, size)
    torch.testing.assert_close(
        h.flatten(1) @ T.T, F.conv2d(h, w, padding=(k - 1) // 2).flatten(1), rtol=0, atol=1e-13
    )
    torch.testing.assert_close(conv_matrix(flip_kernel(w), size), T.T, rtol=0, atol=0)


def test_multiplicity_closed_form_and_ones_convolution() -> None:
    expected = torch.tensor([[12, 16, 12], [15, 20, 15], [12, 16, 12]], dtype=F64)
    torch.testing.assert_close(multiplicity(3, (5, 4), dtype=F64), expected, rtol=0, atol=0)
    for k in (1, 3, 5, 7):
        for size in ((5, 4), (2, 3), (1, 1)):
            p = (k - 1) // 2
            ones = torch.ones(1, 1, *size, dtype=F64)
            ref = torch.nn.grad.conv2d_weight(ones, (1, 1, k, k), ones, padding=p)[0, 0]
            torch.testing.assert_close(multiplicity(k, size, dtype=F64), ref, rtol=0, atol=0)
            a = torch.arange(k, dtype=F64) - p
            closed = torch.outer((size[0] - a.abs()).clamp(min=0), (size[1] - a.abs()).clamp(min=0))
            torch.testing.assert_close(multiplicity(k, size, dtype=F64), closed, rtol=0, atol=0)
    # a 1×1 convolution: every tap H·W times; computed once per (K, H, W, dtype, device)
    assert float(multiplicity(1, (5, 4), dtype=F64)) == 20
    assert multiplicity(3, (5, 4), dtype=F64) is multiplicity(3, (5, 4), dtype=F64)


@pytest.mark.parametrize(("k", "size"), [(1, (5, 4)), (3, (5, 4)), (5, (3, 4))])
def test_kernel_identity_flip_times_multiplicity(k: int, size: tuple) -> None:
    """∂(vec T(w))ᵀ/∂w · vec(T(r)ᵀ) = flip(r) ⊙ m for any w, r (same padding, stride 1)."""
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(C, C, k, k, generator=gen, dtype=F64, requires_grad=True)
    r = torch.randn(C, C, k, k, generator=gen, dtype=F64)
    (lhs,) = torch.autograd.grad((conv_matrix(w, size) * conv_matrix(r, size).T).sum(), w)
    rhs = flip_kernel(r) * multiplicity(k, size, dtype=F64)
    torch.testing.assert_close(lhs, rhs, rtol=0, atol=1e-12)
    # the same through the explicit adjoint
    adj = conv_matrix_adjoint(conv_matrix(r, size).T, tuple(w.shape), size)
    torch.testing.assert_close(adj, rhs, rtol=0, atol=1e-12)


# -- the SNF rule ----------------------------------------------------------------------------------


def test_centre_tap_surrogate_equals_the_exact_log_det_gradient() -> None:
    """For a centre-tap w and r = T(w)⁻¹, the surrogate flip(r) ⊙ m is ∂log|det T(w)|/∂w."""
    layer = centre_tap_conv(torch.Generator().manual_seed(4))
    layer.set_recon_weight(0.0)
    _, term = layer.training_forward(data())
    (grad_w,) = torch.autograd.grad(-term.mean(), layer.weight)  # c = −1, no data term
    w = layer.weight.detach().clone().requires_grad_(True)
    (exact,) = torch.autograd.grad(-torch.linalg.slogdet(conv_matrix(w, SIZE)).logabsdet, w)
    torch.testing.assert_close(grad_w, 0.5 * exact, rtol=1e-12, atol=1e-13)
    assert exact[:, :, 0].abs().max() < 1e-12  # off-centre taps: zero, but only for T(w)⁻¹ a conv


def test_with_r_the_exact_inverse_weight_grad_is_half_bias_and_input_grads_exact() -> None:
    flow, x = snf_conv_flow(), data()
    flow.set_recon_weight(3.0)  # R = W⁻¹: the penalty and its gradient vanish
    got, gx = snf_grads(flow, x)
    ws = [m.weight.detach().clone().requires_grad_(True) for m in convs_of(flow)]
    bs = [m.bias.detach().clone().requires_grad_(True) for m in convs_of(flow)]
    xr = x.clone().requires_grad_(True)
    nll = reference_nll(xr, [conv_matrix(w, SIZE) for w in ws], bs)
    *ref, ref_x = torch.autograd.grad(nll, [*ws, *bs, xr])
    for k, g in enumerate(got):
        torch.testing.assert_close(g["weight"], 0.5 * ref[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(g["bias"], ref[2 + k], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx, ref_x, rtol=1e-10, atol=1e-12)


def test_inverse_weight_grad_is_half_the_inverse_model_nll_gradient() -> None:
    """−log p^g with layer k parametrised by r (T(w_k) = T(r_k)⁻¹), differentiated in r."""
    flow, x = snf_conv_flow(), data()
    got, _ = snf_grads(flow, x)
    convs = convs_of(flow)
    for k in range(len(convs)):
        r = convs[k].inverse_weight.detach().clone().requires_grad_(True)
        mats = [conv_matrix(m.weight.detach(), SIZE) for m in convs]
        mats[k] = torch.linalg.inv(conv_matrix(r, SIZE))
        (grad_r,) = torch.autograd.grad(reference_nll(x, mats, [m.bias for m in convs]), r)
        torch.testing.assert_close(got[k]["inverse_weight"], 0.5 * grad_r, rtol=1e-9, atol=1e-12)


def test_input_gradient_is_exact_for_any_r() -> None:
    flow, x = snf_conv_flow(exact_inverse=False), data()
    flow.set_recon_weight(2.0)
    _, gx = snf_grads(flow, x)
    mats = [conv_matrix(m.weight.detach(), SIZE) for m in convs_of(flow)]
    xr = x.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(reference_nll(xr, mats, [m.bias for m in convs_of(flow)]), xr)
    torch.testing.assert_close(gx, ref, rtol=1e-10, atol=1e-12)


def test_reconstruction_gradient_is_autograd_of_the_penalty_and_stays_in_its_layer() -> None:
    flow, x = snf_conv_flow(exact_inverse=False), data()
    lam = 0.7
    flow.set_recon_weight(0.0)
    without, gx0 = snf_grads(flow, x)
    flow.set_recon_weight(lam)
    with_penalty, gx1 = snf_grads(flow, x)
    for k, (layer, h) in enumerate(zip(convs_of(flow), layer_inputs(flow, x), strict=True)):
        w = layer.weight.detach().clone().requires_grad_(True)
        r = layer.inverse_weight.detach().clone().requires_grad_(True)
        penalty = lam * (F.conv2d(F.conv2d(h, w, padding=1), r, padding=1) - h).square()
        gw, gr = torch.autograd.grad(penalty.sum((1, 2, 3)).mean(), (w, r))
        diff_w = with_penalty[k]["weight"] - without[k]["weight"]
        diff_r = with_penalty[k]["inverse_weight"] - without[k]["inverse_weight"]
        torch.testing.assert_close(diff_w, gw, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(diff_r, gr, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(with_penalty[k]["bias"], without[k]["bias"], rtol=0, atol=0)
    # h is detached: the penalty of layer 2 reaches neither layer 1 nor the data
    torch.testing.assert_close(gx1, gx0, rtol=0, atol=0)


def test_the_rule_follows_per_sample_weights_of_the_terms() -> None:
    """L = Σ_n q_n (½‖z_n‖² − term_n): data terms weighted by q, c = −Σq, penalty weights λq."""
    gen = torch.Generator().manual_seed(6)
    layer = snf_conv_flow(exact_inverse=False).layers[2]
    lam = 0.9
    layer.set_recon_weight(lam)
    h = data()
    q = torch.rand(B, generator=gen, dtype=F64) + 0.5
    z, term = layer.training_forward(h)
    loss = (q * (0.5 * z.square().sum((1, 2, 3)) - term)).sum()
    got = torch.autograd.grad(loss, (layer.weight, layer.inverse_weight, layer.bias))

    params = (layer.weight, layer.inverse_weight, layer.bias)
    w, r, b = (t.detach().clone().requires_grad_(True) for t in params)
    u = F.conv2d(h, w, padding=1)
    g = (q.view(-1, 1, 1, 1) * (u + b.view(1, -1, 1, 1))).detach()  # ∂L/∂z
    e = torch.nn.grad.conv2d_input(h.shape, w.detach(), g, padding=1)  # exact input gradient
    c = -float(q.sum())
    Tw, Tr = conv_matrix(w, SIZE), conv_matrix(r, SIZE)
    surrogate = (
        0.5 * (g * u).sum()  # ½ conv_weight_grad(h, g) in w
        + 0.5 * c * (Tw * Tr.detach().T).sum()  # ½ c flip(r) ⊙ m in w
        - 0.5 * (e * F.conv2d(u.detach(), r, padding=1)).sum()  # ½ conv_weight_grad(z', −e) in r
        - 0.5 * c * (Tr * Tw.detach().T).sum()  # −½ c flip(w) ⊙ m in r
        + (g * b.view(1, -1, 1, 1)).sum()  # the bias, not halved
        + lam * (q * (F.conv2d(u, r, padding=1) - h).square().sum((1, 2, 3))).sum()
    )
    ref = torch.autograd.grad(surrogate, (w, r, b))
    for a, bb in zip(got, ref, strict=True):
        torch.testing.assert_close(a, bb, rtol=1e-10, atol=1e-12)
    # and with w frozen, r gets the same gradient
    layer.weight.requires_grad_(False)
    z, term = layer.training_forward(h)
    loss = (q * (0.5 * z.square().sum((1, 2, 3)) - term)).sum()
    (gr,) = torch.autograd.grad(loss, layer.inverse_weight)
    torch.testing.assert_close(gr, got[1], rtol=1e-12, atol=1e-13)


def test_loss_value_is_nll_without_snf_log_dets_plus_the_penalty() -> None:
    flow, x = snf_conv_flow(exact_inverse=False), data()
    lam = 1.5
    flow.set_recon_weight(lam)
    value = flow.loss(x)
    penalty = sum(
        m.reconstruction_error(h).mean()
        for m, h in zip(convs_of(flow), layer_inputs(flow, x), strict=True)
    )
    log_dets = sum(m.logabsdet(SIZE) for m in convs_of(flow))
    expected = -flow.log_prob(x).mean() + log_dets + lam * penalty
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow.training_diagnostics()["recon"], penalty.detach())
    # with R = W⁻¹: the training loss − Σ log|det T(w)| is the exact NLL (the objective
    # log p^f-side + Σ log|det T(w)| is the exact log-likelihood)
    flow = snf_conv_flow()
    offset = sum(m.logabsdet(SIZE) for m in convs_of(flow))
    torch.testing.assert_close(
        flow.loss(x) - offset, -flow.log_prob(x).mean(), rtol=1e-12, atol=1e-12
    )


def test_exact_mode_trains_on_the_exact_nll_gradient() -> None:
    flow = snf_conv_flow(exact_inverse=False).set_gradient("exact")
    x = data()
    got, _ = snf_grads(flow, x)
    ws = [m.weight.detach().clone().requires_grad_(True) for m in convs_of(flow)]
    nll = reference_nll(x, [conv_matrix(w, SIZE) for w in ws], [m.bias for m in convs_of(flow)])
    ref = torch.autograd.grad(nll, ws)
    for g, rw in zip(got, ref, strict=True):
        torch.testing.assert_close(g["weight"], rw, rtol=1e-10, atol=1e-12)
        assert g["inverse_weight"] is None  # exact mode: the learned inverse is not trained
    torch.testing.assert_close(flow.loss(x), -flow.log_prob(x).mean(), rtol=1e-12, atol=1e-12)


def test_training_step_computes_no_inverse_or_determinant(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    flow = jf.Flow(
        [
            jf.SelfNormConv2d(C, 3, "selfnorm"),
            jf.SmoothLeakyReLU(ALPHA),
            jf.Conv1x1(C, "selfnorm", bias=True),
            jf.SmoothLeakyReLU(ALPHA),
            jf.SelfNormConv2d(C, 3, "selfnorm"),
        ],
        (C, H, W),
    ).double()
    x = data()
    opt = torch.optim.Adam(flow.parameters(), lr=1e-3)

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("an O(D³) routine was called in a selfnorm training step")

    for name in ("inv", "solve", "slogdet", "det", "lu_factor", "lu_solve", "inv_ex", "lu"):
        monkeypatch.setattr(torch.linalg, name, forbidden)
    for name in ("inverse", "det", "logdet", "slogdet", "lu_solve"):
        monkeypatch.setattr(torch, name, forbidden)
    for _ in range(2):
        opt.zero_grad()
        flow.loss(x).backward()
        opt.step()
    assert flow.sample(3, approximate=True).shape == (3, C, H, W)  # sampling through R too


def test_reconstruction_alone_drives_r_to_the_inverse() -> None:
    """With w frozen, Adam on the penalty alone makes T(r) T(w) → I (w centre-tap: reachable)."""
    gen = torch.Generator().manual_seed(7)
    layer = centre_tap_conv(gen)
    with torch.no_grad():
        layer.inverse_weight.copy_(0.3 * torch.randn(layer.weight.shape, generator=gen, dtype=F64))
    layer.weight.requires_grad_(False)
    layer.bias.requires_grad_(False)
    opt = torch.optim.Adam([layer.inverse_weight], lr=0.02)
    h = torch.randn(64, C, H, W, generator=gen, dtype=F64)
    eye = torch.eye(D, dtype=F64)
    Tw = conv_matrix(layer.weight, SIZE)

    def error() -> float:
        return float((conv_matrix(layer.inverse_weight.detach(), SIZE) @ Tw - eye).norm())

    start = error()
    for _ in range(1000):
        opt.zero_grad()
        layer.reconstruction_error(h).mean().backward()
        opt.step()
    assert start > 1.0
    assert error() < 1e-4


def test_reconstruction_reduces_the_inverse_error_of_a_general_kernel() -> None:
    """With off-centre taps T(w)⁻¹ is no K×K conv; the penalty still improves on the paper's
    adjoint initialisation r = flip(w) by an order of magnitude."""
    gen = torch.Generator().manual_seed(8)
    layer = centre_tap_conv(gen)
    with torch.no_grad():
        layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=gen, dtype=F64))
        layer.inverse_weight.copy_(flip_kernel(layer.weight))
    layer.weight.requires_grad_(False)
    opt = torch.optim.Adam([layer.inverse_weight], lr=0.02)
    h = torch.randn(64, C, H, W, generator=gen, dtype=F64)
    Tw = conv_matrix(layer.weight, SIZE)

    def error() -> float:
        return float((conv_matrix(layer.inverse_weight.detach(), SIZE) @ Tw - torch.eye(D)).norm())

    start = error()
    for _ in range(400):
        opt.zero_grad()
        layer.reconstruction_error(h).mean().backward()
        opt.step()
    assert error() < 0.1 * start


# -- exact evaluation, inverses, sampling ------------------------------------------------------


def test_log_prob_is_the_brute_force_change_of_variables() -> None:
    torch.manual_seed(9)
    flow = jf.Flow(
        [
            jf.SelfNormConv2d(C, 3, "selfnorm"),
            jf.SmoothLeakyReLU(ALPHA),
            jf.Conv1x1(C, "selfnorm", bias=True),
            jf.SmoothLeakyReLU(ALPHA),
            jf.SelfNormConv2d(C, 5, "exact"),
        ],
        (C, H, W),
    ).double()
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = data()
    flow.eval()
    lp = flow.log_prob(x)
    J = vmap(jacrev(lambda x1: flow(x1.unsqueeze(0))[0].flatten()))(x).reshape(B, D, D)
    z = flow(x)[0].flatten(1)
    ref = -0.5 * z.square().sum(1) - 0.5 * D * math.log(2 * math.pi) + torch.linalg.slogdet(J)[1]
    with torch.no_grad():
        torch.testing.assert_close(flow.log_prob(x), ref.detach(), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(lp.detach(), ref.detach(), rtol=1e-12, atol=1e-10)


def test_conv1x1_log_det_is_hw_times_the_channel_log_det() -> None:
    torch.manual_seed(10)
    layer = jf.Conv1x1(3).double()
    with torch.no_grad():
        layer.weight.add_(0.4 * torch.randn(3, 3, dtype=F64))
    x = data(shape=(3, H, W))
    _, ld = layer(x)
    channel = torch.linalg.slogdet(layer.weight).logabsdet
    toeplitz = torch.linalg.slogdet(conv_matrix(layer.weight[:, :, None, None], SIZE)).logabsdet
    J = jacrev(lambda x1: layer(x1.unsqueeze(0))[0].flatten())(x[0]).reshape(3 * H * W, -1)
    for ref in (H * W * channel, toeplitz, torch.linalg.slogdet(J).logabsdet):
        torch.testing.assert_close(ld, ref.detach().expand(B), rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(layer.logabsdet(), H * W * channel.detach())
        torch.testing.assert_close(layer.logabsdet((2, 3)), 6 * channel.detach())


def conv1x1_flow(gradient: str, seed: int = 11) -> jf.Flow:
    torch.manual_seed(seed)
    flow = jf.Flow(
        [jf.Conv1x1(C, gradient, bias=True), jf.SmoothLeakyReLU(ALPHA), jf.Conv1x1(C, gradient)],
        (C, H, W),
    ).double()
    with torch.no_grad():
        for m in flow.layers:
            if isinstance(m, jf.Conv1x1):
                m.weight.add_(0.3 * torch.randn(C, C, dtype=F64))
                if m.bias is not None:
                    m.bias.copy_(0.5 * torch.randn(C, dtype=F64))
                if m.inverse_weight is not None:
                    m.inverse_weight.copy_(torch.linalg.inv(m.weight))
    return flow


def exact_grads(flow: jf.Flow, x: Tensor) -> list[dict[str, Tensor]]:
    ref = copy.deepcopy(flow).set_gradient("exact")
    ref.zero_grad(set_to_none=True)
    (-ref.log_prob(x).mean()).backward()
    return [
        {n: p.grad for n, p in m.named_parameters(recurse=False) if p.grad is not None}
        for m in ref.layers
        if isinstance(m, jf.Conv1x1)
    ]


def test_conv1x1_selfnorm_is_the_dense_rule_per_pixel() -> None:
    flow, x = conv1x1_flow("selfnorm"), data()
    layers = [m for m in flow.layers if isinstance(m, jf.Conv1x1)]
    flow.zero_grad()
    flow.loss(x).backward()
    for m, ref in zip(layers, exact_grads(flow, x), strict=True):
        torch.testing.assert_close(m.weight.grad, 0.5 * ref["weight"], rtol=1e-10, atol=1e-12)
        if m.bias is not None:
            torch.testing.assert_close(m.bias.grad, ref["bias"], rtol=1e-10, atol=1e-12)
    # grad_R: half the inverse-model gradient (W_C = R⁻¹)
    for k, m in enumerate(layers):
        R = m.inverse_weight.detach().clone().requires_grad_(True)
        ref_flow = copy.deepcopy(flow).set_gradient("exact")
        target = [t for t in ref_flow.layers if isinstance(t, jf.Conv1x1)][k]
        del target.weight
        target.weight = torch.linalg.inv(R)
        (grad_r,) = torch.autograd.grad(-ref_flow.log_prob(x).mean(), R)
        torch.testing.assert_close(m.inverse_weight.grad, 0.5 * grad_r, rtol=1e-9, atol=1e-12)
    # the penalty: per sample, the sum over pixels; λ·mean_n of it, in this layer only
    with torch.no_grad():
        for m in layers:
            m.inverse_weight.add_(0.1 * torch.randn(C, C, dtype=F64))
    lam = 0.6
    grads = []
    for value in (0.0, lam):
        flow.set_recon_weight(value)
        flow.zero_grad()
        flow.loss(x).backward()
        grads.append([{n: p.grad.clone() for n, p in m.named_parameters()} for m in layers])
    for k, (m, h) in enumerate(zip(layers, layer_inputs(flow, x), strict=True)):
        gw, gr = torch.autograd.grad(
            lam * m.reconstruction_error(h).mean(), (m.weight, m.inverse_weight)
        )
        torch.testing.assert_close(
            grads[1][k]["weight"] - grads[0][k]["weight"], gw, rtol=1e-9, atol=1e-12
        )
        torch.testing.assert_close(
            grads[1][k]["inverse_weight"] - grads[0][k]["inverse_weight"], gr, rtol=1e-9, atol=1e-12
        )
    diag = flow.training_diagnostics()["recon"]
    expected = sum(
        m.reconstruction_error(h).mean() for m, h in zip(layers, layer_inputs(flow, x), strict=True)
    )
    torch.testing.assert_close(diag, expected.detach())


def test_conv1x1_relative_gradient_is_the_euclidean_one_times_the_metric() -> None:
    """Relative gradient = [∇_W ∇_b] Ŵᵀ Ŵ with Ŵ = [[W, b], [0, 1]] (Gresele et al.), per layer."""
    flow, x = conv1x1_flow("relative"), data()
    layers = [m for m in flow.layers if isinstance(m, jf.Conv1x1)]
    flow.zero_grad()
    flow.loss(x).backward()
    for m, ref in zip(layers, exact_grads(flow, x), strict=True):
        Wm = m.weight.detach()
        b = m.bias.detach() if m.bias is not None else torch.zeros(C, dtype=F64)
        aug = torch.zeros(C + 1, C + 1, dtype=F64)
        aug[:C, :C], aug[:C, C], aug[C, C] = Wm, b, 1.0
        euclid = torch.zeros(C + 1, C + 1, dtype=F64)
        euclid[:C, :C] = ref["weight"]
        euclid[:C, C] = ref["bias"] if m.bias is not None else 0.0
        relative = euclid @ aug.T @ aug
        torch.testing.assert_close(m.weight.grad, relative[:C, :C], rtol=1e-10, atol=1e-12)
        if m.bias is not None:
            torch.testing.assert_close(m.bias.grad, relative[:C, C], rtol=1e-10, atol=1e-12)


def test_approximate_inverse_and_sampling_match_the_exact_ones_when_r_is_the_inverse() -> None:
    flow = snf_conv_flow()
    gen = torch.Generator().manual_seed(12)
    conv1 = jf.Conv1x1(C, "selfnorm").double()
    with torch.no_grad():
        conv1.weight.add_(0.3 * torch.randn(C, C, generator=gen, dtype=F64))
        conv1.inverse_weight.copy_(torch.linalg.inv(conv1.weight))
    flow = jf.Flow([*flow.layers, jf.SmoothLeakyReLU(ALPHA), conv1], (C, H, W)).double()
    z = torch.randn(5, C, H, W, generator=gen, dtype=F64)
    for layer in (*convs_of(flow), conv1):
        torch.testing.assert_close(
            layer.approximate_inverse(z), layer.inverse(z), rtol=1e-12, atol=1e-12
        )
    torch.testing.assert_close(
        flow.inverse(z, approximate=True), flow.inverse(z), rtol=1e-10, atol=1e-10
    )
    exact = flow.sample(4, generator=torch.Generator().manual_seed(0))
    approx = flow.sample(4, generator=torch.Generator().manual_seed(0), approximate=True)
    torch.testing.assert_close(approx, exact, rtol=1e-10, atol=1e-10)


def test_approximate_inverse_error_follows_the_reconstruction_error() -> None:
    layer = snf_conv_flow(exact_inverse=False).layers[0]
    flow = jf.Flow([layer], (C, H, W))
    x = data(50)
    z, _ = flow(x)
    err = (flow.inverse(z, approximate=True) - x).square().sum((1, 2, 3)).mean()
    flow.loss(x)
    torch.testing.assert_close(err, layer.last_reconstruction, rtol=1e-10, atol=1e-12)


def test_initialisation_and_entering_selfnorm_set_r_to_the_inverse() -> None:
    eye = torch.eye(D, dtype=F64)
    fresh = jf.SelfNormConv2d(C, 3, "selfnorm", recon_weight=2.5)
    assert float(fresh.recon_weight) == 2.5
    Tw, Tr = (
        conv_matrix(fresh.weight.double(), SIZE),
        conv_matrix(fresh.inverse_weight.double(), SIZE),
    )
    torch.testing.assert_close(Tr @ Tw, eye, rtol=0, atol=1e-6)  # float32 parameters
    assert float(fresh.weight.detach()[:, :, 0].abs().max()) == 0  # centre tap only
    # an exact-mode layer with a centre-tap w: r = the exact inverse when the mode is entered
    layer = centre_tap_conv(torch.Generator().manual_seed(13)).double()
    layer.set_gradient("exact")
    layer.register_parameter("inverse_weight", None)
    layer.set_gradient("selfnorm")
    Tw = conv_matrix(layer.weight, SIZE)
    torch.testing.assert_close(
        conv_matrix(layer.inverse_weight, SIZE) @ Tw, eye, rtol=0, atol=1e-12
    )
    # a general w: the least-squares projection of T(w)⁻¹ onto K×K convolutions
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn(layer.weight.shape, dtype=F64))
    layer.reset_inverse(SIZE)
    r = layer.inverse_weight.detach().clone().requires_grad_(True)
    target = torch.linalg.inv(conv_matrix(layer.weight.detach(), SIZE))
    (grad,) = torch.autograd.grad((conv_matrix(r, SIZE) - target).square().sum(), r)
    assert float(grad.abs().max()) < 1e-12
    # Conv1x1: R = W_C⁻¹ when entered (= W_Cᵀ at initialisation)
    c1 = jf.Conv1x1(3)
    assert c1.inverse_weight is None
    c1.set_gradient("selfnorm")
    torch.testing.assert_close(c1.inverse_weight, c1.weight.T, rtol=0, atol=1e-6)


def test_logabsdet_remembers_the_image_size_and_caches_per_size() -> None:
    layer = centre_tap_conv(torch.Generator().manual_seed(14))
    with torch.no_grad():
        layer.weight.add_(0.1 * torch.randn(layer.weight.shape, dtype=F64))
    fresh = copy.deepcopy(layer)
    fresh.last_spatial_size = None
    with pytest.raises(ValueError, match="spatial_size"):
        fresh.logabsdet()
    for size in ((5, 4), (3, 3)):
        x = data(shape=(C, *size))
        with torch.no_grad():
            _, ld = layer(x)
            assert layer.last_spatial_size == size
            ref = torch.linalg.slogdet(conv_matrix(layer.weight, size)).logabsdet
            torch.testing.assert_close(layer.logabsdet(), ref, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(ld, ref.expand(B), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(layer.inverse(layer(x)[0]), x, rtol=1e-10, atol=1e-10)
    assert {"lu5x4", "lu3x3"} <= set(layer._cache._entries)


# -- errors ------------------------------------------------------------------------------------


def test_errors_name_the_problem_and_the_fix() -> None:
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        jf.SelfNormConv2d(2, kernel_size=4)
    with pytest.raises(ValueError, match="channels must be an integer"):
        jf.SelfNormConv2d(0)
    with pytest.raises(NotImplementedError, match="'exact', 'selfnorm'"):
        jf.SelfNormConv2d(2, gradient="relative")
    with pytest.raises(ValueError, match="unknown gradient mode"):
        jf.Conv1x1(2, gradient="fast")
    layer = jf.SelfNormConv2d(2)
    with pytest.raises(ValueError, match="built for 2 channels but x has 3"):
        layer(torch.randn(4, 3, 5, 5))
    with pytest.raises(ValueError, match=r"shape \(batch, 2, height, width\)"):
        layer(torch.randn(4, 50))
    with pytest.raises(ValueError, match="built for 2 channels but z has 1"):
        jf.Conv1x1(2).inverse(torch.randn(4, 1, 5, 5))
    with pytest.raises(RuntimeError, match="no learned inverse"):
        jf.Conv1x1(2).reconstruction_error(torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="spatial_size"):
        jf.Conv1x1(2).logabsdet()

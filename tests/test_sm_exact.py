"""Exact score matching: chunked torch.func Hessian / Jacobian traces, D = 784 included."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from jacfree.scorematching import losses

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


class SoftplusEnergy(nn.Module):
    """E(x) = Σ_k a_k softplus(w_k·x + b_k) + ½c‖x‖², with closed-form Hessian trace and score."""

    def __init__(self, d: int, k: int, dtype: torch.dtype = DT):
        super().__init__()
        self.lin = nn.Linear(d, k).to(dtype)
        self.a = nn.Parameter(torch.rand(k, dtype=dtype))
        self.c = nn.Parameter(torch.tensor(0.7, dtype=dtype))

    def forward(self, x):
        return (nn.functional.softplus(self.lin(x)) * self.a).sum(-1) + 0.5 * self.c * (x * x).sum(
            -1
        )

    def closed_form(self, x):
        with torch.no_grad():
            sig = torch.sigmoid(self.lin(x))
            W = self.lin.weight
            trace_E = (sig * (1 - sig) * self.a) @ (W * W).sum(1) + self.c * x.shape[1]
            grad_E = (sig * self.a) @ W + self.c * x
            return -trace_E + 0.5 * (grad_E * grad_E).sum(-1)  # log p̃ = −E


def test_exact_sm_at_d_784_matches_the_closed_form_and_ignores_chunking():
    energy = SoftplusEnergy(784, 64)
    x = torch.randn(16, 784, dtype=DT)
    want = energy.closed_form(x)
    with torch.no_grad():
        got = losses.exact_sm(energy, x, reduction="none")
        other = losses.exact_sm(energy, x, chunk_size=100, reduction="none")
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(other, want)


def test_exact_sm_image_batch_at_d_784_float32():
    energy = SoftplusEnergy(784, 32, dtype=torch.float32)

    def img_energy(y):
        return energy(y.flatten(1))

    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        got = losses.exact_sm(img_energy, x, reduction="none")
    torch.testing.assert_close(got, energy.closed_form(x.flatten(1)), rtol=1e-4, atol=1e-3)


def test_exact_sm_parameter_gradient_matches_an_autograd_trace_loop():
    d = 6
    energy = SoftplusEnergy(d, 10)
    x = torch.randn(5, d, dtype=DT)
    loss = losses.exact_sm(energy, x, chunk_size=4)
    params = list(energy.parameters())
    g_func = torch.autograd.grad(loss, params)
    # reference: d create_graph backward passes (Hyvärinen's loop)
    xr = x.clone().requires_grad_(True)
    s = torch.autograd.grad(-energy(xr).sum(), xr, create_graph=True)[0]
    trace = sum(
        torch.autograd.grad(s[:, i].sum(), xr, create_graph=True)[0][:, i] for i in range(d)
    )
    ref_loss = (trace + 0.5 * (s * s).sum(-1)).mean()
    torch.testing.assert_close(loss, ref_loss)
    for a, b in zip(g_func, torch.autograd.grad(ref_loss, params), strict=True):
        torch.testing.assert_close(a, b)


def test_exact_sm_scorenet_matches_jacrev_trace():
    d = 7
    net = nn.Sequential(nn.Linear(d, 20), nn.Tanh(), nn.Linear(20, d)).double()
    x = torch.randn(9, d, dtype=DT)
    terms = losses.exact_sm_scorenet(net, x, chunk_size=3, reduction="none", return_terms=True)
    with torch.no_grad():
        jac = torch.func.vmap(torch.func.jacrev(lambda y: net(y[None])[0]))(x)
        s = net(x)
    torch.testing.assert_close(terms.curvature, torch.einsum("bii->b", jac))
    torch.testing.assert_close(terms.norm, 0.5 * (s * s).sum(-1))


def test_jacobian_trace_conditioning_and_errors():
    d = 4
    x = torch.randn(3, d, dtype=DT)
    c = torch.tensor([1.0, 2.0, 3.0], dtype=DT)
    tr = losses.jacobian_trace(lambda y, cc: cc[:, None] * y**2, x, cond=c)
    torch.testing.assert_close(tr, c * 2 * x.sum(-1))
    with pytest.raises(ValueError, match="chunk_size"):
        losses.jacobian_trace(lambda y: y, x, chunk_size=0)

r"""The O(ε²) bias of the FD estimators: leading constants and parameter gradients (float64).

Sphere averages are taken with an exact degree-5 cubature on S² (the 6 axis points ±e_i with
weight 1/30 and the 12 points (±e_i ± e_j)/√2 with weight 1/15), so the averages of the
per-direction losses are exact up to the O(ε⁴) terms and the leading constants below,

    FD-SSM     E_v[L] − J = ε²/(d+2) · [¼ Δ²f + ½ ∇f·∇(Δf)]
    FD-SSM-VR  E_v[L] − J = ε² · [s·Δs/(2d) + ∇·(Δs)/(2(d+2))]
    FD-DSM     E_v[L] − ½‖r‖² = ε² · r·∇(Δf)(x̃) / (2(d+2)),   r = ∇f(x̃) + (x̃ − x)/σ²

can be checked without Monte-Carlo noise: (FD − exact)/(ε² · constant) → 1 at rate O(ε²).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jacfree.scorematching import losses

DT = torch.float64
D = 3


pytestmark = pytest.mark.usefixtures("one_thread")


def cubature_directions(B: int) -> torch.Tensor:
    """30 unit directions on S² whose plain average is an exact degree-5 sphere cubature.

    Axis points carry weight 1/30 and edge points 1/15, so every edge point appears twice.
    Shape (30, B, 3): the same set for every sample.
    """
    pts = []
    eye = torch.eye(D, dtype=DT)
    for i in range(D):
        pts += [eye[i], -eye[i]]
    for i in range(D):
        for j in range(i + 1, D):
            for si in (1.0, -1.0):
                for sj in (1.0, -1.0):
                    p = (si * eye[i] + sj * eye[j]) / math.sqrt(2)
                    pts += [p, p]
    U = torch.stack(pts)
    return U[:, None, :].expand(len(pts), B, D).contiguous()


def test_the_cubature_is_exact_to_degree_five():
    U = cubature_directions(1)[:, 0]
    g = torch.Generator().manual_seed(0)
    # E[u_i u_j] = δ/d, E[u_i u_j u_k u_l] = (δδ + δδ + δδ)/(d(d+2)), odd moments vanish
    second = torch.einsum("ni,nj->ij", U, U) / len(U)
    torch.testing.assert_close(second, torch.eye(D, dtype=DT) / D)
    fourth = torch.einsum("ni,nj,nk,nl->ijkl", U, U, U, U) / len(U)
    I = torch.eye(D, dtype=DT)
    want = (
        torch.einsum("ij,kl->ijkl", I, I)
        + torch.einsum("ik,jl->ijkl", I, I)
        + torch.einsum("il,jk->ijkl", I, I)
    ) / (D * (D + 2))
    torch.testing.assert_close(fourth, want)
    a = torch.randn(D, generator=g, dtype=DT)
    assert abs(float(((U @ a) ** 3).mean())) < 1e-15
    assert abs(float(((U @ a) ** 5).mean())) < 1e-14


class TanhEnergy(nn.Module):
    """E(x) = −Σ a_k tanh(w_k·x + b_k) + ½ c ‖x‖² — smooth, non-quadratic."""

    def __init__(self, seed: int = 0, k: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, D, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=DT))
        self.a = nn.Parameter(torch.randn(k, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.tensor(1.0, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -(torch.tanh(x @ self.W.T + self.b) * self.a).sum(-1) + 0.5 * self.c * (x * x).sum(
            -1
        )


class TanhScore(nn.Module):
    """A non-conservative score network s(x) = A tanh(Wx + b) − x."""

    def __init__(self, seed: int = 1, k: int = 6):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = nn.Parameter(torch.randn(k, D, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(k, generator=g, dtype=DT))
        self.A = nn.Parameter(torch.randn(D, k, generator=g, dtype=DT))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.W.T + self.b) @ self.A.T - x


def per_sample(fn):
    """Lift a per-sample function of y (D,) to the batch with vmap."""
    return torch.func.vmap(fn)


def fd_ssm_constant(energy: nn.Module, x: torch.Tensor) -> torch.Tensor:
    def f(y):
        return -energy(y[None])[0]

    def lap(y):
        return torch.trace(torch.func.hessian(f)(y))

    def c(y):
        grad_f = torch.func.grad(f)(y)
        grad_lap = torch.func.grad(lap)(y)
        bilap = torch.trace(torch.func.hessian(lap)(y))
        return (0.25 * bilap + 0.5 * grad_f @ grad_lap) / (D + 2)

    with torch.no_grad():
        return per_sample(c)(x)


def fd_ssm_vr_constant(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    def s(y):
        return net(y[None])[0]

    def lap_s(y):  # (Δs)_i = Σ_j ∂_j∂_j s_i
        H = torch.func.jacfwd(torch.func.jacfwd(s))(y)  # [i, j, k]
        return torch.einsum("ijj->i", H)

    def c(y):
        div_lap = torch.trace(torch.func.jacfwd(lap_s)(y))
        return s(y) @ lap_s(y) / (2 * D) + div_lap / (2 * (D + 2))

    with torch.no_grad():
        return per_sample(c)(x)


def fd_dsm_constant(energy: nn.Module, xt: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    def f(y):
        return -energy(y[None])[0]

    def lap(y):
        return torch.trace(torch.func.hessian(f)(y))

    def c(y, t):
        r = torch.func.grad(f)(y) + t
        return r @ torch.func.grad(lap)(y) / (2 * (D + 2))

    with torch.no_grad():
        return per_sample(c)(xt, target)


EPS = (0.1, 0.05, 0.025)


def check_ratios(ratios: list[torch.Tensor]):
    dev = [float((r - 1).abs().max()) for r in ratios]
    assert dev[-1] < 0.01, dev
    # the remaining deviation is O(ε²): it shrinks about 4× per halving
    assert dev[0] / dev[1] == pytest.approx(4.0, rel=0.25), dev
    assert dev[1] / dev[2] == pytest.approx(4.0, rel=0.25), dev


def test_fd_ssm_bias_matches_the_leading_constant():
    energy = TanhEnergy()
    x = torch.randn(8, D, dtype=DT)
    U = cubature_directions(8)
    with torch.no_grad():
        J = losses.exact_sm(energy, x, reduction="none")
        # the cubature makes the ε → 0 limit exact: the sphere average of d(uᵀHu + ½(uᵀ∇f)²) is J
        sliced = losses.ssm(energy, x, v=U * math.sqrt(D), reduction="none")
        torch.testing.assert_close(sliced, J)
        C = fd_ssm_constant(energy, x)
        ratios = [
            (losses.fd_ssm(energy, x, eps, directions=U, reduction="none") - J) / (eps**2 * C)
            for eps in EPS
        ]
    check_ratios(ratios)


def test_fd_ssm_vr_bias_matches_the_leading_constant():
    net = TanhScore()
    x = torch.randn(8, D, dtype=DT)
    U = cubature_directions(8)
    with torch.no_grad():
        J = losses.exact_sm_scorenet(net, x, reduction="none")
        C = fd_ssm_vr_constant(net, x)
        ratios = [
            (losses.fd_ssm_vr(net, x, eps, directions=U, reduction="none") - J) / (eps**2 * C)
            for eps in EPS
        ]
    check_ratios(ratios)


def test_fd_dsm_bias_matches_the_leading_constant():
    energy = TanhEnergy(seed=3)
    x = torch.randn(8, D, dtype=DT)
    noise = torch.randn(8, D, dtype=DT)
    sigma = 0.7
    U = cubature_directions(8)
    with torch.no_grad():
        J = losses.dsm(energy, x, sigma, noise=noise, reduction="none")
        C = fd_dsm_constant(energy, x + sigma * noise, noise / sigma)
        ratios = [
            (losses.fd_dsm(energy, x, sigma, eps, noise=noise, directions=U, reduction="none") - J)
            / (eps**2 * C)
            for eps in EPS
        ]
    check_ratios(ratios)


# ------------------------------------------------------------------------------ parameter gradients


def grads(module: nn.Module, loss: torch.Tensor) -> torch.Tensor:
    g = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True)
    return torch.cat([torch.zeros(1, dtype=DT) if t is None else t.flatten() for t in g])


def check_gradient_order(diffs: list[float], scale: float):
    assert diffs[-1] < 1e-2 * scale, (diffs, scale)
    assert diffs[0] / diffs[1] == pytest.approx(4.0, rel=0.15), diffs
    assert diffs[1] / diffs[2] == pytest.approx(4.0, rel=0.15), diffs


def test_fd_ssm_parameter_gradient_agrees_with_ssm_at_order_eps_squared():
    energy = TanhEnergy(seed=4)
    x = torch.randn(32, D, dtype=DT)
    u = torch.nn.functional.normalize(torch.randn(32, D, dtype=DT), dim=1)
    ref = grads(energy, losses.ssm(energy, x, v=u * math.sqrt(D)))
    diffs = [
        float((grads(energy, losses.fd_ssm(energy, x, eps, directions=u)) - ref).norm())
        for eps in EPS
    ]
    check_gradient_order(diffs, float(ref.norm()))
    # and in sphere average against the exact SM gradient (torch.func Hessian trace)
    U = cubature_directions(32)
    ref = grads(energy, losses.exact_sm(energy, x))
    fdg = grads(energy, losses.fd_ssm(energy, x, 0.025, directions=U))
    assert float((fdg - ref).norm()) < 1e-2 * float(ref.norm())


def test_fd_ssm_vr_parameter_gradient_agrees_with_ssm_vr_at_order_eps_squared():
    net = TanhScore(seed=5)
    x = torch.randn(32, D, dtype=DT)
    u = torch.nn.functional.normalize(torch.randn(32, D, dtype=DT), dim=1)
    ref = grads(net, losses.ssm_scorenet(net, x, vr=True, v=u * math.sqrt(D)))
    diffs = [
        float((grads(net, losses.fd_ssm_vr(net, x, eps, directions=u)) - ref).norm()) for eps in EPS
    ]
    check_gradient_order(diffs, float(ref.norm()))


def test_fd_dsm_parameter_gradient_agrees_with_dsm_at_order_eps_squared():
    energy = TanhEnergy(seed=6)
    x = torch.randn(32, D, dtype=DT)
    noise = torch.randn(32, D, dtype=DT)
    U = cubature_directions(32)
    ref = grads(energy, losses.dsm(energy, x, 0.5, noise=noise))
    diffs = [
        float(
            (
                grads(energy, losses.fd_dsm(energy, x, 0.5, eps, noise=noise, directions=U)) - ref
            ).norm()
        )
        for eps in EPS
    ]
    check_gradient_order(diffs, float(ref.norm()))

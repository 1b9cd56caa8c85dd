"""Finite-difference stencils and directional derivatives (jacfree.scorematching.fd).

Expected order: the minimal central stencil for D^T_v f has T + 1 points and absolute error
O(‖v‖^{T+2}) (relative O(ε²)), so halving ‖v‖ divides the error by 2^{T+2} (8, 16, 32, 64 for
T = 1..4); ``accuracy=4`` stencils gain two more powers (2^{T+4}).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import pytest
import torch

from jacfree.scorematching import fd

DT = torch.float64


def tanh_features(d: int, k: int = 8, seed: int = 3):
    """A smooth non-quadratic log-density f(x) = Σ a_k tanh(w_k·x + b_k) − ½‖x‖², (B, d) -> (B,)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(k, d, generator=g, dtype=DT)
    b = torch.randn(k, generator=g, dtype=DT)
    a = torch.randn(k, generator=g, dtype=DT)

    def f(x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ W.T + b) * a).sum(-1) - 0.5 * (x * x).sum(-1)

    return f


def exact_directional(f, x: torch.Tensor, v: torch.Tensor, order: int) -> torch.Tensor:
    """D^T_v f(x) by nested forward-mode torch.func.jvp (rows are independent)."""
    g = f
    for _ in range(order):
        g = (lambda h: lambda y: torch.func.jvp(h, (y,), (v,))[1])(g)
    return g(x)


# ------------------------------------------------------------------------------------ stencils


def test_minimal_central_stencils_match_the_papers_table():
    F = Fraction
    table = {
        1: ((-1, 1), (F(-1, 2), F(1, 2)), 3),
        2: ((-1, 0, 1), (1, -2, 1), 4),
        3: ((-2, -1, 1, 2), (F(-1, 2), 1, -1, F(1, 2)), 5),
        4: ((-2, -1, 0, 1, 2), (1, -4, 6, -4, 1), 6),
    }
    for T, (offsets, weights, p) in table.items():
        s = fd.central_stencil(T)
        assert s.offsets == tuple(F(a) for a in offsets)
        assert s.weights == tuple(F(w) for w in weights)
        assert s.error_order == p == T + 2
        assert s.accuracy == 2
        assert len(s.offsets) == T + 1


@pytest.mark.parametrize("T", range(1, 9))
@pytest.mark.parametrize("accuracy", [2, 4, 6])
def test_stencils_satisfy_the_moment_conditions(T: int, accuracy: int):
    s = fd.central_stencil(T, accuracy)
    assert s.error_order is not None
    for j in range(s.error_order):
        assert s.moment(j) == (math.factorial(T) if j == T else 0), j
    assert s.moment(s.error_order) != 0
    assert s.accuracy == accuracy
    assert s.error_coefficient == s.moment(s.error_order) / math.factorial(s.error_order)
    # symmetry: weights even for even T, odd for odd T
    for a, w in zip(s.offsets, s.weights, strict=True):
        j = s.offsets.index(-a)
        assert s.weights[j] == (w if T % 2 == 0 else -w)


def test_stencil_on_given_offsets_and_cache():
    s = fd.stencil(0, (1, -1))
    assert s.offsets == (-1, 1)
    assert s.weights == (Fraction(1, 2), Fraction(1, 2))
    assert s.error_order == 2
    assert fd.central_stencil(3) is fd.central_stencil(3)  # cached
    one_sided = fd.stencil(1, (0, 1))
    assert one_sided.weights == (-1, 1)
    assert one_sided.error_order == 2  # forward difference is only first order


def test_stencil_argument_errors():
    with pytest.raises(ValueError, match="distinct"):
        fd.stencil(1, (1, 1, 0))
    with pytest.raises(ValueError, match="at least 3 offsets"):
        fd.stencil(2, (-1, 1))
    with pytest.raises(ValueError, match="order"):
        fd.central_stencil(-1)
    with pytest.raises(ValueError, match="even"):
        fd.central_stencil(2, 3)


# ------------------------------------------------------------------------------------ convergence


@pytest.mark.slow
@pytest.mark.parametrize("T", [1, 2, 3, 4])
def test_directional_derivatives_converge_at_the_stencil_order(T: int):
    d, B = 5, 16
    f = tanh_features(d)
    x = torch.randn(B, d, dtype=DT)
    u = fd.sphere_directions(x)
    s = fd.central_stencil(T)
    p = T + 2
    errs = []
    for h in (0.2, 0.1, 0.05, 0.025):
        v = h * u
        approx = fd.directional_derivative(f, x, v, T)
        exact = exact_directional(f, x, v, T)
        err = approx - exact
        errs.append(err.norm().item())
        # the error IS the leading term coefficient · D^{T+2}_v f, up to O(h^{T+4})
        lead = float(s.error_coefficient) * exact_directional(f, x, v, p)
        assert (err - lead).norm() <= 0.05 * lead.norm() * (h / 0.025) ** 2 + 1e-12
    ratios = [a / b for a, b in itertools.pairwise(errs)]
    assert ratios[-1] == pytest.approx(2.0**p, rel=0.05), ratios
    # the normalised derivative D^T_u f ≈ FD/h^T converges at O(h²): error ratio 4
    norm_ratio = ratios[-1] / 2.0**T
    assert norm_ratio == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("T", [1, 2])
def test_higher_accuracy_stencils_gain_two_orders(T: int):
    d, B = 4, 8
    f = tanh_features(d, seed=5)
    x = torch.randn(B, d, dtype=DT)
    u = fd.sphere_directions(x)
    errs = []
    for h in (0.1, 0.05, 0.025):
        v = h * u
        approx = fd.directional_derivative(f, x, v, T, accuracy=4)
        errs.append((approx - exact_directional(f, x, v, T)).norm().item())
    assert errs[1] / errs[2] == pytest.approx(2.0 ** (T + 4), rel=0.1)


def test_vector_valued_f_and_particles():
    d, B, n = 3, 6, 4
    A = torch.randn(d, d, dtype=DT)

    def s(x):  # vector-valued, non-linear
        return torch.tanh(x @ A.T) + x**3

    x = torch.randn(B, d, dtype=DT)
    v = fd.sphere_directions(x, 1e-3, n=n)
    out = fd.directional_derivative(s, x, v, 1)
    assert out.shape == (n, B, d)
    for k in range(n):
        _, jv = torch.func.jvp(s, (x,), (v[k],))
        torch.testing.assert_close(out[k], jv, rtol=1e-5, atol=1e-8)
    # zero offset is evaluated once, not once per particle
    calls = []

    def counted(y):
        calls.append(y.shape[0])
        return s(y)

    fd.directional_derivative(counted, x, v, 2)
    assert calls == [B + 2 * n * B]
    calls.clear()
    fd.directional_derivative(counted, x, v, 2, parallel=False)
    assert sorted(calls) == [B, n * B, n * B]


def test_all_points_in_one_batched_call_and_parallel_equals_sequential():
    d, B = 4, 5
    f = tanh_features(d)
    x = torch.randn(B, d, dtype=DT)
    v = fd.sphere_directions(x, 0.1)
    calls = []

    def counted(y):
        calls.append(y.shape[0])
        return f(y)

    par = fd.directional_derivatives(counted, x, v, (1, 2, 3, 4))
    assert calls == [5 * B]  # offsets -2..2, shared by all four orders
    calls.clear()
    seq = fd.directional_derivatives(counted, x, v, (1, 2, 3, 4), parallel=False)
    assert calls == [B] * 5
    for a, b in zip(par, seq, strict=True):
        assert torch.equal(a, b)


def test_conditioning_is_repeated_with_the_points():
    d, B = 3, 4
    x = torch.randn(B, d, dtype=DT)
    c = torch.rand(B, dtype=DT) + 0.5
    v = fd.sphere_directions(x, 0.01, n=2)

    def f(y, cc):
        return cc * (y**3).sum(-1)

    out = fd.directional_derivative(f, x, v, 1, cond=c)
    ref = c * (3 * x**2 * v + v**3).sum(-1)  # the central difference of a cubic, exactly
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-15)


# ------------------------------------------------------------------------------------ directions


def test_sphere_directions_radius_covariance_independence():
    d, B = 5, 4000
    x = torch.zeros(B, d, dtype=DT)
    v = fd.sphere_directions(x, 0.3)
    assert v.dtype == DT and v.shape == (B, d)
    torch.testing.assert_close(v.norm(dim=1), torch.full((B,), 0.3, dtype=DT))
    cov = v.T @ v / B
    torch.testing.assert_close(cov, (0.09 / d) * torch.eye(d, dtype=DT), atol=4e-3, rtol=0)
    w = fd.sphere_directions(x, 0.3)
    assert not torch.allclose(v, w)  # fresh per call
    assert (v[0] - v[1]).abs().max() > 1e-3  # and per sample
    img = fd.sphere_directions(torch.zeros(3, 2, 4, 4), 2.0, n=5)
    assert img.shape == (5, 3, 2, 4, 4) and img.dtype == torch.float32
    torch.testing.assert_close(img.flatten(2).norm(dim=-1), torch.full((5, 3), 2.0))
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    assert torch.equal(
        fd.sphere_directions(x, 1.0, generator=g1), fd.sphere_directions(x, 1.0, generator=g2)
    )
    with pytest.raises(ValueError, match="eps"):
        fd.sphere_directions(x, 0.0)


# ------------------------------------------------------------------------------------ guards


def test_precision_guard_refuses_half_precision_and_autocast():
    f = tanh_features(3)
    for dt in (torch.float16, torch.bfloat16):
        x = torch.randn(4, 3).to(dt)
        with pytest.raises(TypeError, match="float32 or float64"):
            fd.directional_derivative(f, x, torch.ones_like(x), 1)
    x = torch.randn(4, 3)
    with pytest.raises(TypeError, match=r"returned torch\.bfloat16"):
        fd.directional_derivative(lambda y: y.sum(-1).bfloat16(), x, 0.1 * x, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="autocast"):
        fd.directional_derivative(lambda y: y.sum(-1), x, 0.1 * x, 2)


def test_batchnorm_in_training_mode_is_refused_in_parallel_mode():
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 1))
    x = torch.randn(6, 3)
    v = fd.sphere_directions(x, 0.1)
    with pytest.raises(ValueError, match="BatchNorm"):
        fd.directional_derivative(net, x, v, 1)
    with pytest.warns(UserWarning, match="BatchNorm"):
        fd.directional_derivative(net, x, v, 1, parallel=False)
    net.eval()  # per-sample affine map: fine
    fd.directional_derivative(net, x, v, 1)


def test_shape_errors_are_clear():
    f = tanh_features(3)
    x = torch.randn(4, 3, dtype=DT)
    with pytest.raises(ValueError, match="shape of x"):
        fd.directional_derivative(f, x, torch.ones(4, 2, dtype=DT), 1)
    with pytest.raises(ValueError, match="leading dimension"):
        fd.directional_derivative(lambda y: y.sum(), x, 0.1 * x, 1)

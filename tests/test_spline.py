"""Rational-quadratic spline activation: exact inverse and log-derivative in float64."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

import jacfree as jf
from jacfree.flows import rational_quadratic_spline, spline_knots

F64 = torch.float64


def random_spline(
    shape: int | tuple[int, ...] = 3, bins: int = 5, seed: int = 0, scale: float = 1.5
):
    """A spline layer (float64) with strongly non-uniform bins and derivatives."""
    layer = jf.RQSplineActivation(shape, bins=bins).double()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=F64))
    return layer


def probe_points(layer: jf.RQSplineActivation, n: int = 400, seed: int = 1) -> Tensor:
    """(N, C): per channel, random points, every knot ± {0, 1e-12, 1e-9}, the bounds and tails."""
    b = layer.bound
    c = layer.param_shape[0]
    xk, _, _ = spline_knots(
        layer.raw_widths, layer.raw_heights, layer.raw_derivatives, b
    )  # (C, K+1)
    gen = torch.Generator().manual_seed(seed)
    cols = []
    for ch in range(c):
        knots = xk[ch].detach()
        near = torch.cat([knots + d for d in (0.0, 1e-12, -1e-12, 1e-9, -1e-9)])
        extra = torch.tensor([-b, b, -b - 1e-9, b + 1e-9, -1e6, 1e6, -25.0, 25.0], dtype=F64)
        rnd = 8 * torch.randn(n, generator=gen, dtype=F64)
        cols.append(torch.cat([near, extra, rnd]))
    return torch.stack(cols, dim=1)


def test_identity_at_initialisation() -> None:
    layer = jf.RQSplineActivation(4).double()
    x = 12 * torch.randn(50, 4, dtype=F64)
    y, logdet = layer(x)
    torch.testing.assert_close(y, x, rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(logdet, torch.zeros(50, dtype=F64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("bins", [1, 2, 5, 8])
def test_inverse_is_exact(bins: int) -> None:
    layer = random_spline(3, bins=bins)
    x = probe_points(layer)
    y, _ = layer(x)
    torch.testing.assert_close(layer.inverse(y), x, rtol=1e-12, atol=1e-12)
    # and the other way: arbitrary outputs, including near the output knots
    _, yk, _ = spline_knots(layer.raw_widths, layer.raw_heights, layer.raw_derivatives, layer.bound)
    ys = torch.cat([probe_points(layer, seed=2), (yk.detach().T + 1e-12)])
    torch.testing.assert_close(layer(layer.inverse(ys))[0], ys, rtol=1e-12, atol=1e-12)


def test_log_derivative_matches_autograd() -> None:
    layer = random_spline(3)
    x = probe_points(layer).requires_grad_(True)
    y, _ = rational_quadratic_spline(x, *layer.knots(x))
    _, log_der = rational_quadratic_spline(x.detach(), *layer.knots(x))
    (dy,) = torch.autograd.grad(y.sum(), x)
    assert (dy > 0).all()
    torch.testing.assert_close(log_der, dy.log(), rtol=1e-11, atol=1e-11)
    # the layer's log-det is the per-sample sum
    _, logdet = layer(x.detach())
    torch.testing.assert_close(logdet, log_der.sum(1), rtol=1e-13, atol=1e-12)


def test_log_derivative_against_finite_differences() -> None:
    """Independent of autograd: central differences of g in float64."""
    layer = random_spline(2, seed=5)
    x = 9 * torch.rand(300, 2, dtype=F64) * torch.where(torch.rand(300, 2) < 0.5, -1.0, 1.0)
    h = 1e-6
    with torch.no_grad():
        fd = (layer(x + h)[0] - layer(x - h)[0]) / (2 * h)
        _, log_der = rational_quadratic_spline(x, *layer.knots(x))
    torch.testing.assert_close(log_der, fd.log(), rtol=1e-6, atol=1e-6)


def test_inverse_returns_the_forward_log_derivative_at_the_result() -> None:
    layer = random_spline(3)
    x = probe_points(layer)
    y, log_der = rational_quadratic_spline(x, *layer.knots(x))
    x_back, log_der_back = rational_quadratic_spline(y, *layer.knots(y), inverse=True)
    torch.testing.assert_close(x_back, x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_der_back, log_der, rtol=1e-9, atol=1e-9)


def test_knots_values_and_derivatives_are_continuous() -> None:
    """g(x_k) = y_k, and g' from the left and right of every knot equals d_k (C¹ spline)."""
    layer = random_spline(1, bins=6, seed=3)
    xk, yk, dk = (
        t[0].detach()
        for t in spline_knots(
            layer.raw_widths, layer.raw_heights, layer.raw_derivatives, layer.bound
        )
    )
    with torch.no_grad():
        y, _ = layer(xk[:, None])
        torch.testing.assert_close(y[:, 0], yk, rtol=1e-13, atol=1e-13)
        torch.testing.assert_close(
            rational_quadratic_spline(xk[:, None], *layer.knots(xk[:, None]))[1][:, 0],
            dk.log(),
            rtol=1e-12,
            atol=1e-12,
        )
        for side in (-1e-10, 1e-10):
            pts = (xk + side)[:, None]
            _, ld = rational_quadratic_spline(pts, *layer.knots(pts))
            torch.testing.assert_close(ld[:, 0], dk.log(), rtol=1e-6, atol=1e-6)
    assert torch.equal(dk[[0, -1]], torch.ones(2, dtype=F64))  # joins the identity tails


def test_tails_are_the_identity() -> None:
    layer = random_spline(2)
    x = torch.tensor([[-1e6, 10.5], [-10.000001, 1e6], [11.0, -50.0]], dtype=F64)
    y, logdet = layer(x)
    assert torch.equal(y, x)
    assert torch.equal(logdet, torch.zeros(3, dtype=F64))
    assert torch.equal(layer.inverse(x), x)


def test_all_tail_batches_have_finite_zero_parameter_gradients() -> None:
    """nflows #23: a batch entirely in the tails must not produce NaN gradients."""
    layer = random_spline(2)
    x = torch.full((4, 2), 30.0, dtype=F64)
    y, logdet = layer(x)
    (y.sum() + logdet.sum()).backward()
    for p in layer.parameters():
        assert p.grad is not None and torch.equal(p.grad, torch.zeros_like(p))


def test_strictly_increasing() -> None:
    layer = random_spline(1, bins=7, seed=4, scale=3.0)
    x = torch.linspace(-12, 12, 20001, dtype=F64)[:, None]
    y, _ = layer(x)
    assert (y.diff(dim=0) > 0).all()


def test_parameter_grids() -> None:
    """Per channel broadcasts over H, W; per element uses its own spline; () is one shared."""
    x = 4 * torch.randn(5, 3, 2, 2, dtype=F64)
    per_channel = random_spline(3)
    per_element = jf.RQSplineActivation((3, 2, 2)).double()
    shared = jf.RQSplineActivation(()).double()
    with torch.no_grad():
        for c in range(3):  # per-element with the per-channel parameters copied in
            per_element.raw_widths[c] = per_channel.raw_widths[c]
            per_element.raw_heights[c] = per_channel.raw_heights[c]
            per_element.raw_derivatives[c] = per_channel.raw_derivatives[c]
        shared.raw_widths.copy_(per_channel.raw_widths[1])
        shared.raw_heights.copy_(per_channel.raw_heights[1])
        shared.raw_derivatives.copy_(per_channel.raw_derivatives[1])
    y, ld = per_channel(x)
    y2, ld2 = per_element(x)
    torch.testing.assert_close(y2, y, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(ld2, ld, rtol=1e-14, atol=1e-13)
    torch.testing.assert_close(shared(x)[0][:, 1], y[:, 1], rtol=1e-14, atol=1e-14)
    # channel c's output only depends on channel c's parameters
    y[:, 0].sum().backward()
    assert per_channel.raw_widths.grad[1:].abs().sum() == 0
    assert per_channel.raw_widths.grad[0].abs().sum() > 0


def test_float32_round_trip() -> None:
    layer = random_spline(3).float()
    x = 6 * torch.randn(1000, 3)
    torch.testing.assert_close(layer.inverse(layer(x)[0]), x, rtol=1e-5, atol=1e-5)


def test_bad_arguments_and_shapes() -> None:
    layer = jf.RQSplineActivation(3)
    with pytest.raises(ValueError, match=r"must start with \(3,\).*shape=C"):
        layer(torch.randn(2, 4, 5, 5))
    with pytest.raises(ValueError, match="min_bin"):
        jf.RQSplineActivation(3, bins=5, min_bin=0.2)
    with pytest.raises(ValueError, match="bound"):
        jf.RQSplineActivation(3, bound=float("inf"))
    with pytest.raises(ValueError, match="bins"):
        jf.RQSplineActivation(3, bins=0)

"""Smooth leaky ReLU (value, log-derivative, Newton inverse) and the pre-processing layers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

import jacfree as jf
from jacfree.flows import (
    smooth_leaky_relu,
    smooth_leaky_relu_inverse,
    smooth_leaky_relu_log_derivative,
)

F64 = torch.float64
ALPHAS = [0.01, 0.3, 0.9]


def grid(dtype: torch.dtype = F64) -> Tensor:
    """|y| up to 50, dense near 0, plus random points."""
    gen = torch.Generator().manual_seed(3)
    y = torch.cat([
        torch.linspace(-50, 50, 1001, dtype=F64),
        torch.linspace(-1, 1, 201, dtype=F64),
        10 * torch.randn(500, generator=gen, dtype=F64),
    ])  # fmt: skip
    return y.to(dtype)


# -- σ and log σ' --------------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_sigma_matches_its_definition(alpha: float) -> None:
    y = torch.linspace(-30, 30, 601, dtype=F64)
    naive = alpha * y + (1 - alpha) * torch.log(1 + torch.exp(y))
    torch.testing.assert_close(smooth_leaky_relu(y, alpha), naive, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_log_derivative_matches_autograd(alpha: float) -> None:
    y = grid().requires_grad_(True)
    (dsigma,) = torch.autograd.grad(smooth_leaky_relu(y, alpha).sum(), y)
    assert (dsigma > alpha * (1 - 1e-12)).all() and (dsigma <= 1).all()
    torch.testing.assert_close(
        smooth_leaky_relu_log_derivative(y.detach(), alpha), dsigma.log(), rtol=1e-12, atol=1e-14
    )


def test_layer_log_det_is_the_sum_of_log_derivatives() -> None:
    layer = jf.SmoothLeakyReLU(0.2)
    y = 4 * torch.randn(7, 5, dtype=F64, requires_grad=True)
    z, logdet = layer(y)
    # diagonal Jacobian: every output depends on its own input only
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0], y.detach())
    J = J.reshape(35, 35)
    torch.testing.assert_close(J, torch.diag(J.diagonal()))
    torch.testing.assert_close(logdet, J.diagonal().log().reshape(7, 5).sum(1).detach())
    torch.testing.assert_close(z, smooth_leaky_relu(y, 0.2))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("alpha", ALPHAS)
def test_stable_for_large_inputs(alpha: float, dtype: torch.dtype) -> None:
    y = torch.tensor([-1000.0, -50.0, -40.0, -20.0, 20.0, 40.0, 50.0, 1000.0], dtype=dtype)
    y.requires_grad_(True)
    s = smooth_leaky_relu(y, alpha)
    ld = smooth_leaky_relu_log_derivative(y, alpha)
    assert torch.isfinite(s).all() and torch.isfinite(ld).all()
    (s.sum() + ld.sum()).backward()
    assert torch.isfinite(y.grad).all()
    # the asymptotes: σ(y) → y (right) and αy (left); log σ' → 0 and log α
    big = y.detach().abs() >= 40
    right, left = big & (y.detach() > 0), big & (y.detach() < 0)
    torch.testing.assert_close(s[right].detach(), y.detach()[right], rtol=1e-6, atol=0)
    torch.testing.assert_close(s[left].detach(), alpha * y.detach()[left], rtol=1e-6, atol=0)
    torch.testing.assert_close(ld[right].detach(), torch.zeros_like(ld[right]), rtol=0, atol=1e-6)
    torch.testing.assert_close(
        ld[left].detach(), torch.full_like(ld[left], math.log(alpha)), rtol=1e-6, atol=0
    )
    # and the inverse of those values is finite
    assert torch.isfinite(smooth_leaky_relu_inverse(s.detach(), alpha)).all()


# -- the Newton inverse ---------------------------------------------------------------------------


@pytest.mark.parametrize("alpha", ALPHAS)
def test_inverse_float64_to_1e10(alpha: float) -> None:
    y = grid()
    y_back = smooth_leaky_relu_inverse(smooth_leaky_relu(y, alpha), alpha)
    assert y_back.dtype == F64
    err = (y_back - y).abs()
    assert (err <= 1e-10 * y.abs() + 1e-12).all(), f"max error {float(err.max()):.3g}"


@pytest.mark.parametrize("alpha", ALPHAS)
def test_inverse_float32_equals_the_float64_inverse(alpha: float) -> None:
    y = grid(torch.float32)
    z = smooth_leaky_relu(y, alpha)
    y32 = smooth_leaky_relu_inverse(z, alpha)
    assert y32.dtype == torch.float32
    y64 = smooth_leaky_relu_inverse(z.double(), alpha)
    torch.testing.assert_close(y32.double(), y64, rtol=1e-6, atol=1e-9)
    # and σ(σ⁻¹(z)) = z at float32 precision
    torch.testing.assert_close(smooth_leaky_relu(y32, alpha), z, rtol=1e-5, atol=1e-5)


def test_inverse_is_vectorised_over_large_tensors() -> None:
    gen = torch.Generator().manual_seed(0)
    y = 10 * torch.randn(50, 40, 60, generator=gen, dtype=F64)  # 120k elements, any shape
    y[0, 0, :4] = torch.tensor([-50.0, 50.0, 0.0, -1e-3])
    z = smooth_leaky_relu(y, 0.05)
    y_back = smooth_leaky_relu_inverse(z, 0.05)
    assert y_back.shape == y.shape
    assert ((y_back - y).abs() <= 1e-10 * y.abs() + 1e-12).all()
    # empty input
    assert smooth_leaky_relu_inverse(torch.empty(0, 3, dtype=F64), 0.3).shape == (0, 3)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_inverse_of_extreme_latents(alpha: float) -> None:
    z = torch.tensor([-1e6, -1e3, 1e3, 1e6], dtype=F64)
    y = smooth_leaky_relu_inverse(z, alpha)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(smooth_leaky_relu(y, alpha), z, rtol=1e-12, atol=0)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_alpha_validation(alpha: float) -> None:
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        jf.SmoothLeakyReLU(alpha)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        smooth_leaky_relu_inverse(torch.zeros(3), alpha)
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
        jf.FCFlow(3, layers=2, alpha=alpha)


# -- LogitTransform -----------------------------------------------------------------------------


@pytest.mark.parametrize(("levels", "alpha"), [(256, 1e-6), (17, 0.05), (1.0, 0.01)])
def test_logit_log_det_and_round_trip(levels: float, alpha: float) -> None:
    layer = jf.LogitTransform(levels, alpha)
    gen = torch.Generator().manual_seed(0)
    x = levels * torch.rand(6, 3, generator=gen, dtype=F64)
    x[0] = torch.tensor([0.0, levels, levels / 2], dtype=F64)  # the edges are allowed
    y, logdet = layer(x)
    assert torch.isfinite(y).all()
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0].sum(0), x)  # (3, 6, 3)
    diag = J.permute(1, 0, 2).diagonal(dim1=1, dim2=2)  # ∂y_bi/∂x_bi
    torch.testing.assert_close(logdet, diag.log().sum(1), rtol=1e-10, atol=1e-10)
    # y = logit(α + (1−2α) x / levels)
    p = alpha + (1 - 2 * alpha) * x / levels
    torch.testing.assert_close(y, torch.logit(p), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(layer.inverse(y), x, rtol=1e-9, atol=1e-9 * levels)


def test_logit_range_errors() -> None:
    layer = jf.LogitTransform(256)
    for bad in (torch.tensor([[-1.0, 3.0]]), torch.tensor([[0.0, 256.5]])):
        with pytest.raises(ValueError, match=r"LogitTransform expects values in \[0, 256\]"):
            layer(bad)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 0\.5\)"):
        jf.LogitTransform(256, alpha=0.5)
    with pytest.raises(ValueError, match=r"alpha must lie in \[0, 0\.5\)"):
        jf.LogitTransform(256, alpha=-0.1)


# -- Dequantize ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_dequantize_round_trip_and_log_det(dtype: torch.dtype) -> None:
    layer = jf.Dequantize(17)
    x = torch.randint(0, 17, (50, 4)).to(dtype)
    x[0] = torch.tensor([0, 16, 0, 16], dtype=dtype)
    z, logdet = layer(x)
    assert z.dtype == dtype
    assert torch.equal(logdet, torch.zeros(50, dtype=dtype))
    u = z - x
    assert (u >= 0).all() and (u < 1).all()
    assert u.std() > 0.2  # uniform noise, not a constant offset
    assert torch.equal(layer.inverse(z), x)
    # the Jacobian is the identity (log-det 0 is exact)
    torch.manual_seed(0)
    J = torch.autograd.functional.jacobian(lambda t: layer(t)[0], x[:2].double())
    torch.testing.assert_close(J.reshape(8, 8), torch.eye(8, dtype=F64))
    # a fresh draw on every call, in train and in eval mode
    layer.eval()
    assert not torch.equal(layer(x)[0], layer(x)[0])
    # the inverse clips back into {0, …, levels−1}
    assert torch.equal(
        layer.inverse(torch.tensor([[-0.7, 3.2, 16.99, 40.0]], dtype=dtype)),
        torch.tensor([[0.0, 3.0, 16.0, 16.0]], dtype=dtype),
    )


def test_dequantize_range_errors() -> None:
    layer = jf.Dequantize(17)
    for bad in (torch.tensor([[-1.0, 3.0]]), torch.tensor([[0.0, 17.0]])):
        with pytest.raises(ValueError, match=r"Dequantize expects values in \[0, 16\]"):
            layer(bad)

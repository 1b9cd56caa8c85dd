"""The gradient-mode base class: a layer made of its hooks alone; a Flow that asks its layers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import jacfree as jf
from jacfree.flows.linear import InvertibleLinear
from jacfree.flows.selfnorm import selfnorm_affine

D, B = 5, 12


class HookDense(InvertibleLinear):
    """A dense layer written with the base-class hooks only (no relative mode)."""

    supported_gradients = ("exact", "selfnorm")

    def __init__(self, gradient: str) -> None:
        super().__init__()
        self.weight = self._orthogonal_weight(D)
        self.bias = torch.nn.Parameter(torch.zeros(D))
        self._init_gradient(gradient, 0.7)

    def _map(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(x, weight, bias)

    def _selfnorm_forward(self, x: Tensor, size: object) -> tuple[Tensor, Tensor, Tensor]:
        return selfnorm_affine(x, self.weight, self.inverse_weight, self.bias, self.recon_weight)

    def inverse(self, z: Tensor) -> Tensor:
        return self._solve((z.double() - self.bias.detach().double()).t()).t().to(z.dtype)


def _pair(mode: str) -> tuple[jf.Flow, jf.Flow]:
    torch.manual_seed(0)
    hooked = HookDense(mode)
    square = jf.SquareAffine(D, mode, recon_weight=0.7)
    with torch.no_grad():
        w = torch.randn(D, D, generator=torch.Generator().manual_seed(1)) + 3 * torch.eye(D)
        for p in (hooked.weight, square.weight):
            p.copy_(w)
        hooked.bias.fill_(0.2)
        square.bias.fill_(0.2)
        if mode == "selfnorm":
            r = torch.linalg.inv(hooked.weight) + 0.01
            hooked.inverse_weight.copy_(r)
            square.inverse_weight.copy_(r)
    return jf.Flow([hooked], (D,)), jf.Flow([square], (D,))


@pytest.mark.parametrize("mode", ["exact", "selfnorm"])
def test_a_layer_of_hooks_alone_trains_and_inverts_like_square_affine(mode: str) -> None:
    hooked, square = _pair(mode)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(2))
    for flow in (hooked, square):
        flow.loss(x).backward()
    for a, b in zip(hooked.parameters(), square.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(hooked.log_prob(x), square.log_prob(x))
    z = hooked(x)[0]
    torch.testing.assert_close(hooked.inverse(z), x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        hooked.inverse(z, approximate=True), square.inverse(z, approximate=True)
    )
    if mode == "selfnorm":
        h, s = hooked.layers[0], square.layers[0]
        torch.testing.assert_close(h.reconstruction_error(x), s.reconstruction_error(x))
        assert hooked.training_diagnostics().keys() == {"recon", "recon_rel"}
        torch.testing.assert_close(
            hooked.training_diagnostics()["recon"], square.training_diagnostics()["recon"]
        )


def test_a_mode_without_a_hook_is_refused_with_the_supported_ones() -> None:
    flow = jf.Flow([HookDense("exact")], (D,))
    with pytest.raises(NotImplementedError, match=r"HookDense supports gradient modes 'exact', "):
        flow.set_gradient("relative")
    assert flow.gradient == "exact"


class Foreign(jf.FlowLayer):
    """A layer with no gradient mode that happens to hold a buffer called ``recon_weight``."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("recon_weight", torch.tensor(5.0))

    def set_recon_weight(self, value: float) -> None:
        raise AssertionError("Flow must not set λ on a layer without a gradient mode")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x, x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        return z


def test_flow_asks_its_layers_instead_of_matching_names() -> None:
    flow = jf.Flow([jf.SquareAffine(D, "selfnorm", recon_weight=2.0), Foreign()], (D,))
    assert flow.recon_weight == 2.0  # the foreign buffer (5) is not λ
    flow.set_recon_weight(3.0)
    assert flow.recon_weight == 3.0
    assert float(flow.layers[1].recon_weight) == 5.0
    assert flow.gradient == "selfnorm"
    assert flow.gradient_layers() == [flow.layers[0]]


def test_state_dict_keys_and_parameter_order_are_those_of_older_checkpoints() -> None:
    cases = {
        jf.SquareAffine(D, "selfnorm"): ["weight", "bias", "inverse_weight", "recon_weight"],
        jf.Conv1x1(3, "selfnorm"): ["weight", "inverse_weight", "recon_weight"],
        jf.Conv1x1(3, "selfnorm", bias=True): ["weight", "bias", "inverse_weight", "recon_weight"],
        jf.SelfNormConv2d(3): ["weight", "bias", "inverse_weight", "recon_weight"],
        jf.SquareAffine(D, "relative"): ["weight", "bias"],
    }
    for layer, keys in cases.items():
        assert list(layer.state_dict()) == keys
        assert [n for n, _ in layer.named_parameters()] == [k for k in keys if k != "recon_weight"]

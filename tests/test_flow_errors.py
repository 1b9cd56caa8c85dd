"""Bad input raises a clear exception that names the problem and the fix (design.md, Errors)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor

import jacfree as jf

D = 4


@pytest.fixture
def flow() -> jf.FCFlow:
    return jf.FCFlow(D, layers=2)


# every public entry point that takes data, and the name it reports the data under
ENTRY_POINTS: dict[str, tuple[Callable[[jf.Flow, Tensor], object], str]] = {
    "forward": (lambda f, x: f(x), "x"),
    "log_prob": (lambda f, x: f.log_prob(x), "x"),
    "loss": (lambda f, x: f.loss(x), "x"),
    "inverse": (lambda f, z: f.inverse(z), "z"),
}
ENTRY_IDS = list(ENTRY_POINTS)


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_wrong_feature_count(flow: jf.FCFlow, entry: str) -> None:
    call, name = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=rf"{name} has 5 features but the model expects {D}") as e:
        call(flow, torch.randn(8, 5))
    assert "features=5" in str(e.value)  # the fix: pass 4 columns or build with features=5


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_one_dimensional_input(flow: jf.FCFlow, entry: str) -> None:
    call, name = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=r"got rank 1 shape \(4,\)") as e:
        call(flow, torch.randn(D))
    assert f"add a batch dimension with {name}.unsqueeze(0)" in str(e.value)
    assert f"(batch, {D})" in str(e.value)


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_three_dimensional_input(flow: jf.FCFlow, entry: str) -> None:
    call, name = ENTRY_POINTS[entry]
    with pytest.raises(ValueError, match=r"got rank 3 shape \(2, 2, 2\)") as e:
        call(flow, torch.randn(2, 2, 2))
    assert f"flatten each sample with {name}.flatten(1)" in str(e.value)


# the entry points that scan values (a host read); ``loss`` is the training step, which reads no
# value on the host: its data is checked once by ``validate_data`` (``jacfree.fit`` calls it)
VALUE_CHECKS = {
    **{k: v for k, v in ENTRY_POINTS.items() if k != "loss"},
    "validate_data": (lambda f, x: f.validate_data(x), "x"),
}


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("entry", list(VALUE_CHECKS))
def test_non_finite_values(flow: jf.FCFlow, entry: str, bad: float) -> None:
    call, name = VALUE_CHECKS[entry]
    x = torch.randn(8, D)
    x[3, 1] = bad
    x[5, 0] = bad
    with pytest.raises(ValueError, match=rf"{name} contains 2 NaN/Inf value\(s\)") as e:
        call(flow, x)
    assert "clean or impute" in str(e.value)


def test_loss_never_hides_garbage(flow: jf.FCFlow) -> None:
    """A non-finite batch gives a non-finite loss (what the training loop's device-side guard
    catches), and ``validate_data`` refuses the dataset before any step."""
    x = torch.randn(8, D)
    x[0, 0] = float("nan")
    assert torch.isnan(flow.loss(x))
    with pytest.raises(ValueError, match="NaN/Inf"):
        flow.validate_data(x)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_integer_dtype(flow: jf.FCFlow, entry: str, dtype: torch.dtype) -> None:
    call, name = ENTRY_POINTS[entry]
    x = torch.ones(8, D, dtype=dtype)
    with pytest.raises(TypeError, match=r"integer/boolean dtype") as e:
        call(flow, x)
    message = str(e.value)
    assert str(dtype) in message
    assert f"{name}.float()" in message
    assert "Dequantize" in message  # the fix for discrete data


@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_float_dtype_other_than_the_flows(flow: jf.FCFlow, entry: str) -> None:
    call, name = ENTRY_POINTS[entry]
    with pytest.raises(TypeError, match=rf"{name} has dtype torch.float64 but the model's param"):
        call(flow, torch.ones(8, D, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"model.to\(torch.float32\)"):
        call(flow.double(), torch.ones(8, D))
    call(flow, torch.ones(8, D, dtype=torch.float64))  # the float64 flow takes float64 data


@pytest.mark.parametrize(
    "bad", [[[0.0] * D] * 3, np.zeros((3, D)), 3.0, None], ids=["list", "ndarray", "float", "None"]
)
@pytest.mark.parametrize("entry", ENTRY_IDS)
def test_non_tensor_input(flow: jf.FCFlow, entry: str, bad: object) -> None:
    call, name = ENTRY_POINTS[entry]
    with pytest.raises(
        TypeError, match=rf"{name} must be a torch.Tensor of shape \(batch, {D}\)"
    ) as e:
        call(flow, bad)
    assert f"torch.as_tensor({name}, dtype=torch.float32)" in str(e.value)
    assert type(bad).__name__ in str(e.value)


@pytest.mark.parametrize("mode", ["relativ", "Exact", "", "inverse"])
def test_bad_gradient_mode_name(mode: str) -> None:
    options = r"choose one of 'exact', 'relative', 'selfnorm'"
    with pytest.raises(ValueError, match=rf"unknown gradient mode '{mode}'; {options}"):
        jf.FCFlow(D, gradient=mode)
    with pytest.raises(ValueError, match=rf"unknown gradient mode '{mode}'; {options}"):
        jf.SquareAffine(D, gradient=mode)
    flow = jf.FCFlow(D, gradient="relative")
    with pytest.raises(ValueError, match=rf"unknown gradient mode '{mode}'"):
        flow.set_gradient(mode)
    assert flow.gradient == "relative"  # unchanged


def test_unsupported_gradient_mode_names_the_supported_ones() -> None:
    class ExactOnly(jf.flows.linear.InvertibleLinear):
        supported_gradients = ("exact",)

    layer = ExactOnly()
    flow = jf.Flow([layer], (D,))
    with pytest.raises(NotImplementedError, match=r"ExactOnly supports gradient modes 'exact', "):
        flow.set_gradient("relative")
    with pytest.raises(NotImplementedError, match=r"not 'selfnorm'"):
        layer.set_gradient("selfnorm")
    assert flow.gradient == "exact"


@pytest.mark.parametrize("layers", [0, -1, 1.5, "2", True])
def test_bad_layer_count(layers: object) -> None:
    with pytest.raises(ValueError, match=rf"layers must be an integer >= 1, got {layers!r}"):
        jf.FCFlow(D, layers=layers)


@pytest.mark.parametrize("features", [0, -3, 2.0])
def test_bad_feature_count(features: object) -> None:
    with pytest.raises(ValueError, match=rf"features must be an integer >= 1, got {features!r}"):
        jf.FCFlow(features)
    with pytest.raises(ValueError, match=rf"features must be an integer >= 1, got {features!r}"):
        jf.SquareAffine(features)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.2, 2.0])
def test_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(ValueError, match=rf"alpha must lie in \(0, 1\), got {alpha}"):
        jf.FCFlow(D, layers=2, alpha=alpha)
    with pytest.raises(ValueError, match=rf"alpha must lie in \(0, 1\), got {alpha}"):
        jf.SmoothLeakyReLU(alpha)


@pytest.mark.parametrize("n", [0, -1, 2.5])
def test_bad_sample_count(flow: jf.FCFlow, n: object) -> None:
    with pytest.raises(ValueError, match=rf"n must be an integer >= 1, got {n!r}"):
        flow.sample(n)


def _preprocessed(levels: int = 17) -> jf.FCFlow:
    return jf.FCFlow(D, preprocess=[jf.Dequantize(levels), jf.LogitTransform(levels)])


@pytest.mark.parametrize("entry", ["forward", "log_prob", "validate_data"])
@pytest.mark.parametrize("bad", [-1.0, 17.0, 255.0])
def test_dequantize_out_of_range(entry: str, bad: float) -> None:
    call, _ = VALUE_CHECKS[entry]
    x = torch.randint(0, 17, (8, D)).float()
    x[2, 3] = bad
    with pytest.raises(ValueError, match=r"Dequantize expects values in \[0, 16\]") as e:
        call(_preprocessed(), x)
    message = str(e.value)
    assert f"{bad:g}" in message  # the offending range is reported
    assert "rescale it or build the model with the matching `levels`" in message


@pytest.mark.parametrize("bad", [-0.5, 256.5, 1000.0])
def test_logit_out_of_range(bad: float) -> None:
    flow = jf.FCFlow(D, preprocess=[jf.LogitTransform(256)])
    x = 255 * torch.rand(8, D)
    x[1, 1] = bad
    with pytest.raises(ValueError, match=r"LogitTransform expects values in \[0, 256\]") as e:
        flow.log_prob(x)
    assert "rescale it or build the model with the matching `levels`" in str(e.value)


def test_raw_pixels_refused_by_a_unit_scale_model() -> None:
    with pytest.raises(ValueError, match=r"LogitTransform expects values in \[0, 1\]"):
        jf.FCFlow(D, preprocess=[jf.LogitTransform(1.0)]).log_prob(255 * torch.rand(8, D))


@pytest.mark.parametrize("levels", [0, -2, 2.5, float("nan")])
def test_bad_levels(levels: float) -> None:
    with pytest.raises(ValueError, match=r"levels must be"):
        jf.Dequantize(levels)


@pytest.mark.parametrize("levels", [0, -2, float("inf"), float("nan")])
def test_bad_logit_levels(levels: float) -> None:
    with pytest.raises(ValueError, match=r"levels must be"):
        jf.LogitTransform(levels)

"""The shared argument checks of ``jacfree._checks``: positive numbers, image shapes, devices."""

from __future__ import annotations

import math

import pytest
import torch

from jacfree._checks import check_image_shape, check_positive, resolve_device


@pytest.mark.parametrize("bad", [0, -1.5, math.nan, math.inf, True, "1", None])
def test_check_positive_refuses_what_is_not_a_finite_positive_number(bad):
    with pytest.raises(ValueError, match=r"step must be a finite number > 0 \(the step\), got"):
        check_positive(bad, "step", "the step")


def test_check_positive_returns_a_float():
    assert check_positive(3, "n") == 3.0 and isinstance(check_positive(3, "n"), float)


def test_check_image_shape():
    assert check_image_shape([1, 28, 28], "CNNFlow") == (1, 28, 28)
    with pytest.raises(ValueError, match=r"CNNFlow needs image data.*got \(784,\)\. E\.g\."):
        check_image_shape((784,), "CNNFlow")
    with pytest.raises(ValueError, match="Use an image dataset"):
        check_image_shape((1, 0, 28), "model kind 'cnn'", "Use an image dataset.")


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available; use cpu"):
            resolve_device("cuda")

"""sklearn's 8×8 handwritten digits (UCI optdigits test set), embedded in the package.

1,797 images, 8×8, integer values 0..16 (``levels = 17``), 10 classes. Source: scikit-learn's
``load_digits`` (BSD-3), itself the UCI "Optical Recognition of Handwritten Digits" data
(CC BY 4.0). Served on the original 0..16 scale; models dequantise (x + U[0,1)) and apply the logit
transform themselves, so NLLs and bits/dim are on the [0, 17)^64 scale.

Split: a seeded permutation into 70 % train (1,258), 10 % validation (180) and 20 % test (359).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from .registry import Dataset, catalogued, labelled_split


@catalogued("digits")
def load_digits(root: Path | None = None, seed: int = 0) -> Dataset:
    """sklearn's 8×8 digits: 1,797 images, integer values 0..16 (``levels = 17``), 10 classes.

    Source: scikit-learn's ``load_digits`` (BSD-3), the UCI optdigits data (CC BY 4.0), embedded
    in the package (no extra needed). Served on the original 0..16 scale, shape (1, 8, 8),
    ``logdet = 0``; models dequantise and apply the logit transform themselves. Split: seeded
    permutation into 70 % train (1,258), 10 % validation (180), 20 % test (359). ``root`` is
    ignored.
    """
    with resources.files("jacfree.data").joinpath("digits.npz").open("rb") as f:
        arrays = np.load(f)
        images, labels = arrays["images"], arrays["labels"]
    images = images.reshape(-1, 1, 8, 8)
    return labelled_split("digits", "sklearn 8x8 digits", images, labels, (0.7, 0.1, 0.2), seed, 17)

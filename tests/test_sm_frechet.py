"""Classifier-feature Fréchet distance: closed forms for Gaussians, the cached classifier."""

from __future__ import annotations

import pytest
import torch

from jacfree.data import load
from jacfree.scorematching import frechet

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def test_distance_of_a_set_with_itself_is_zero():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=g, dtype=DT) @ torch.randn(6, 6, generator=g, dtype=DT)
    mu, cov = frechet.feature_stats(x)
    assert frechet.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)


def test_a_shift_adds_its_squared_norm():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(400, 5, generator=g, dtype=DT) @ torch.randn(5, 5, generator=g, dtype=DT)
    delta = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.3], dtype=DT)
    a, b = frechet.feature_stats(x), frechet.feature_stats(x + delta)
    assert frechet.frechet_distance(*a, *b) == pytest.approx(float(delta @ delta), rel=1e-9)


def test_diagonal_covariances_closed_form_and_symmetry():
    a = torch.tensor([1.0, 4.0, 0.25], dtype=DT)
    b = torch.tensor([9.0, 1.0, 0.25], dtype=DT)
    mu = torch.zeros(3, dtype=DT)
    want = float(((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet.frechet_distance(mu, a.diag(), mu, b.diag()) == pytest.approx(want, rel=1e-12)
    g = torch.Generator().manual_seed(2)
    A, B = (torch.randn(4, 4, generator=g, dtype=DT) for _ in range(2))
    c1, c2 = A @ A.T, B @ B.T + torch.eye(4, dtype=DT)
    m1, m2 = torch.randn(4, generator=g, dtype=DT), torch.zeros(4, dtype=DT)
    d12 = frechet.frechet_distance(m1, c1, m2, c2)
    assert d12 == pytest.approx(frechet.frechet_distance(m2, c2, m1, c1), rel=1e-9)
    assert d12 > 0


def test_report_on_digits_real_images_sit_at_the_floor(tmp_path):
    ds = load("digits")
    torch.manual_seed(0)
    real = ds.test[:300]
    noise = torch.randint(0, ds.levels, real.shape).to(real.dtype)
    r = frechet.frechet_report(real, ds, draws=3, cache_dir=tmp_path, classifier_steps=300)
    assert r["classifier_test_accuracy"] > 0.8
    assert any((tmp_path / "classifiers").iterdir())  # cached
    n = frechet.frechet_report(noise, ds, draws=3, cache_dir=tmp_path, classifier_steps=300)
    assert n["classifier_test_accuracy"] == r["classifier_test_accuracy"]
    assert n["cfd"] > 5 * r["cfd"]
    assert r["cfd"] < 3 * r["cfd_real"] + 1e-6

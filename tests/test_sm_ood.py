"""OOD detection: AUROC against a brute-force pairwise count, ROC curve, noise baselines."""

from __future__ import annotations

import pytest
import torch

from jacfree.scorematching import ood


def brute_auroc(a: torch.Tensor, b: torch.Tensor) -> float:
    """P(S_out > S_in) + ½ P(S_out = S_in) by comparing every pair."""
    gt = (b[None, :] > a[:, None]).double().sum()
    eq = (b[None, :] == a[:, None]).double().sum()
    return float((gt + 0.5 * eq) / (len(a) * len(b)))


@pytest.mark.parametrize("seed", range(4))
def test_auroc_equals_pairwise_count_with_ties(seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (37,), generator=g).float()  # many ties
    b = torch.randint(1, 8, (23,), generator=g).float()
    assert ood.auroc(a, b) == pytest.approx(brute_auroc(a, b), abs=1e-12)
    c, d = torch.randn(50, generator=g), torch.randn(41, generator=g) + 0.5
    assert ood.auroc(c, d) == pytest.approx(brute_auroc(c, d), abs=1e-12)


def test_auroc_extremes_and_symmetry():
    a, b = torch.arange(10.0), torch.arange(10.0) + 100
    assert ood.auroc(a, b) == 1.0
    assert ood.auroc(b, a) == 0.0
    assert ood.auroc(a, a.clone()) == 0.5
    g = torch.Generator().manual_seed(0)
    c, d = torch.randn(30, generator=g), torch.randn(20, generator=g)
    assert ood.auroc(c, d) + ood.auroc(d, c) == pytest.approx(1.0)


def test_roc_curve_area_is_auroc():
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 10, (60,), generator=g).double()
    b = torch.randint(3, 14, (45,), generator=g).double()
    fpr, tpr = ood.roc_curve(a, b)
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert bool((fpr.diff() >= 0).all()) and bool((tpr.diff() >= 0).all())
    assert float(torch.trapezoid(tpr, fpr)) == pytest.approx(ood.auroc(a, b), abs=1e-12)


def test_bad_scores_are_refused():
    with pytest.raises(ValueError, match="NaN/Inf"):
        ood.auroc(torch.tensor([0.0, float("nan")]), torch.ones(3))
    with pytest.raises(ValueError, match="1-D"):
        ood.auroc(torch.ones(2, 2), torch.ones(3))


def test_novelty_scores_deviation():
    x = torch.arange(6.0).reshape(6, 1)
    ref = torch.tensor([[1.0], [3.0]])  # mean score 2
    s = ood.novelty_scores(lambda b: b[:, 0], x, statistic="deviation", reference=ref)
    assert s.tolist() == [2.0, 1.0, 0.0, 1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="reference"):
        ood.novelty_scores(lambda b: b[:, 0], x, statistic="deviation")


def test_noise_images_have_the_data_format():
    like = torch.randint(0, 256, (100, 1, 4, 4)).float()
    g = torch.Generator().manual_seed(0)
    u = ood.noise_images("noise-uniform", like, 50, 256, generator=g)
    assert u.shape == (50, 1, 4, 4) and u.min() >= 0 and u.max() <= 255
    assert bool((u == u.round()).all())
    z = ood.noise_images("noise-gaussian", like, 5000, 256, generator=g)
    assert z.min() >= 0 and z.max() <= 255
    assert abs(float(z.mean()) - float(like.mean())) < 10

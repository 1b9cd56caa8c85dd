r"""Sample quality as a Fréchet distance in the feature space of a small classifier.

The Fréchet distance between two Gaussians fitted to features (Heusel et al. 2017, the distance
behind "FID") is

.. math::

    d_F^2 = \|\mu_1 - \mu_2\|^2
            + \operatorname{tr}\big(C_1 + C_2 - 2\,(C_1^{1/2} C_2 C_1^{1/2})^{1/2}\big).

FID uses the pool features of an ImageNet Inception network, whose weights cannot be had offline
here. This module instead trains a small convolutional classifier on the labelled training split of
the same dataset ONCE, caches it, and uses its 64-dimensional penultimate layer: the **classifier-
feature Fréchet distance** (CFD). Its values are comparable between models evaluated with the same
cached classifier and the same number of samples, NOT with published FIDs. The estimate is biased
upward at small sample sizes, so :func:`frechet_report` also gives the distance between two
disjoint halves of real test images of the same size (the floor a perfect sampler would reach),
and a standard error over independent draws of samples.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "FeatureClassifier",
    "classifier_for",
    "feature_stats",
    "frechet_distance",
    "frechet_report",
    "train_classifier",
]


def _sqrtm_psd(c: Tensor) -> Tensor:
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``.

    Computed in float64 through the symmetric form ``tr (C₁^{½} C₂ C₁^{½})^{½}`` (eigenvalues of
    a symmetric PSD matrix), which is exact for positive semi-definite covariances.
    """
    mu1, mu2, cov1, cov2 = (t.detach().double().cpu() for t in (mu1, mu2, cov1, cov2))
    if mu1.shape != mu2.shape or cov1.shape != cov2.shape or cov1.shape != (len(mu1),) * 2:
        raise ValueError("means (k,) and covariances (k, k) of both Gaussians must match")
    s1 = _sqrtm_psd(0.5 * (cov1 + cov1.T))
    middle = s1 @ (0.5 * (cov2 + cov2.T)) @ s1
    cross = torch.linalg.eigvalsh(0.5 * (middle + middle.T)).clamp_min(0).sqrt().sum()
    value = (mu1 - mu2).pow(2).sum() + torch.trace(cov1) + torch.trace(cov2) - 2 * cross
    return float(value.clamp_min(0))


def feature_stats(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(k,)`` and unbiased covariance ``(k, k)`` of feature rows ``(n, k)``, float64."""
    f = features.detach().double()
    if f.dim() != 2 or len(f) < 2:
        raise ValueError("features must be (n, k) with n >= 2")
    return f.mean(0), torch.cov(f.T)


class FeatureClassifier(nn.Module):
    """A small CNN classifier ``(n, C, H, W)`` in [0, 1] -> logits; ``features`` gives its
    64-dimensional penultimate layer (after the ReLU)."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, width: int = 16):
        super().__init__()
        c, h, w = image_shape
        self.image_shape = tuple(image_shape)
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        hh, ww = (h + 3) // 4, (w + 3) // 4
        self.fc = nn.Sequential(nn.Linear(2 * width * hh * ww, 64), nn.ReLU())
        self.head = nn.Linear(64, n_classes)

    def features(self, x: Tensor) -> Tensor:
        return self.fc(self.body(x.reshape(len(x), *self.image_shape)))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x))


def _unit(x: Tensor, levels: int | None) -> Tensor:
    return x / (levels - 1) if levels else x


def train_classifier(
    ds: Any, *, n_train: int = 20000, steps: int = 1000, seed: int = 0
) -> tuple[FeatureClassifier, float]:
    """Train :class:`FeatureClassifier` on the first ``n_train`` labelled training images of
    ``ds`` (images scaled to [0, 1]) for ``steps`` Adam steps on random batches of 128; returns
    it (eval mode) and its test accuracy."""
    if not ds.is_image or "train" not in ds.labels:
        raise ValueError(f"dataset {ds.name!r} has no labelled images to train a classifier on")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    x = _unit(ds.train[:n_train].float(), ds.levels)
    y = ds.labels["train"][:n_train]
    n_classes = int(ds.labels["train"].max()) + 1
    model = FeatureClassifier(tuple(ds.shape), n_classes)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = torch.randint(len(x), (min(128, len(x)),), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        xt = _unit(ds.test.float(), ds.levels)
        pred = torch.cat([model(b).argmax(1) for b in xt.split(1000)])
    acc = float((pred == ds.labels["test"]).double().mean())
    return model, acc


def classifier_for(
    ds: Any, cache_dir: str | Path | None = None, *, steps: int = 1000
) -> tuple[FeatureClassifier, float]:
    """The cached feature classifier of ``ds`` (trained by :func:`train_classifier` with
    ``steps`` on first use, then loaded from ``<data cache>/classifiers/``); returns it and its
    test accuracy."""
    from ..data import registry

    folder = Path(cache_dir) if cache_dir else Path(registry.resolve_cache_dir())
    key = hashlib.sha256(
        f"{ds.name}|{tuple(ds.shape)}|{len(ds.train)}|{ds.levels}|{steps}|v2".encode()
    ).hexdigest()[:12]
    path = folder / "classifiers" / f"{ds.name}-{key}.pt"
    n_classes = int(ds.labels["train"].max()) + 1 if "train" in ds.labels else 0
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model = FeatureClassifier(tuple(ds.shape), n_classes)
        model.load_state_dict(state["model"])
        model.eval()
        return model, float(state["test_accuracy"])
    model, acc = train_classifier(ds, steps=steps)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"model": model.state_dict(), "test_accuracy": acc}, tmp)
        tmp.replace(path)
    except OSError:  # a read-only cache only costs a retrain next time
        pass
    return model, acc


@torch.no_grad()
def _features(model: FeatureClassifier, x: Tensor) -> Tensor:
    return torch.cat([model.features(b.float()) for b in x.split(1000)])


def frechet_report(
    samples: Tensor,
    ds: Any,
    *,
    draws: int = 5,
    cache_dir: str | Path | None = None,
    classifier_steps: int = 1000,
) -> dict[str, float]:
    """Classifier-feature Fréchet distance of model ``samples`` (data scale, ``(n, C, H, W)``)
    against ``ds``'s test split.

    The samples are split into ``draws`` equal groups; each group's distance to the statistics
    of the whole test split is computed, and the mean ± standard error over groups is reported
    (``cfd``, ``cfd_stderr``), with ``cfd_real`` (± ``cfd_real_stderr``): the same number for
    ``draws`` disjoint groups of real training images of the same size — the small-sample floor.
    """
    if draws < 2 or len(samples) < 2 * draws:
        raise ValueError("need draws >= 2 and at least 2 samples per draw")
    clf, acc = classifier_for(ds, cache_dir, steps=classifier_steps)
    size = len(samples) // draws
    ref_mu, ref_cov = feature_stats(_features(clf, _unit(ds.test.float(), ds.levels)))

    def per_group(x: Tensor) -> Tensor:
        feats = _features(clf, x)
        return torch.tensor(
            [
                frechet_distance(*feature_stats(feats[k * size : (k + 1) * size]), ref_mu, ref_cov)
                for k in range(draws)
            ],
            dtype=torch.float64,
        )

    fake = per_group(_unit(samples.float().cpu(), ds.levels))
    real = per_group(_unit(ds.train[: size * draws].float(), ds.levels))
    root = math.sqrt(draws)
    return {
        "cfd": float(fake.mean()),
        "cfd_stderr": float(fake.std() / root),
        "cfd_real": float(real.mean()),
        "cfd_real_stderr": float(real.std() / root),
        "cfd_samples_per_draw": float(size),
        "cfd_draws": float(draws),
        "classifier_test_accuracy": acc,
    }

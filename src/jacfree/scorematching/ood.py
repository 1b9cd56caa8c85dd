r"""Out-of-distribution detection with a trained density or energy model: AUROC and ROC curve.

A model trained on data ``p_D`` gives every input a *novelty score* — here the energy ``E(x)``
of an energy model (``log p̃ = −E``) or the negative log-density ``−log p(x)`` of a model with a
normalised density — and OOD detection asks how well that score separates the in-distribution test
split from another dataset. The threshold-free summary is the area under the ROC curve,

.. math::

    \mathrm{AUROC} = P(S_{out} > S_{in}) + \tfrac12 P(S_{out} = S_{in}),

the Mann–Whitney statistic ``U/(n_in·n_out)``: 1 when every OOD input scores above every
in-distribution one, ½ for a useless score, 0 when the order is reversed (a score that is
*lower* off the data, the known failure of likelihoods on some dataset pairs; Nalisnick et al.
2019). It is computed exactly from ranks (ties get their average rank), in ``O(n log n)``.

The FD score-matching paper (Pang et al., NeurIPS 2020, reference ``test_ood.py``) scores with the
*deviation* of the energy from its mean on training data, ``|E(x) − mean_train E|``, which also
flags inputs whose energy is unusually LOW; :func:`novelty_scores` offers both (``statistic``).

The noise baselines ``noise-uniform`` and ``noise-gaussian`` (:func:`noise_images`) are images
of the in-distribution data's shape and scale: i.i.d. uniform levels, or Gaussian pixels with the
data's per-pixel mean and standard deviation, clipped to the valid range.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "NOISE_SETS",
    "STATISTICS",
    "auroc",
    "noise_images",
    "novelty_scores",
    "ood_report",
    "plot_roc",
    "roc_curve",
]

NOISE_SETS = ("noise-uniform", "noise-gaussian")
STATISTICS = ("score", "deviation")


def _check_scores(a: object, name: str) -> Tensor:
    if not isinstance(a, Tensor) or a.dim() != 1 or a.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor of scores")
    a = a.detach().double().cpu()
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{name} contains NaN/Inf scores; the model diverged on some inputs")
    return a


def _average_ranks(values: Tensor) -> Tensor:
    """1-based ranks of ``values`` with ties sharing their average rank."""
    order = torch.argsort(values, stable=True)
    sorted_v = values[order]
    n = len(values)
    # start and end (exclusive) of each tie group, in sorted order
    new_group = torch.ones(n, dtype=torch.bool)
    new_group[1:] = sorted_v[1:] != sorted_v[:-1]
    group = torch.cumsum(new_group.long(), 0) - 1
    starts = torch.nonzero(new_group).squeeze(1)
    ends = torch.cat([starts[1:], torch.tensor([n])])
    avg = (starts + 1 + ends).double() / 2  # mean of ranks start+1 .. end
    ranks = torch.empty(n, dtype=torch.float64)
    ranks[order] = avg[group]
    return ranks


def auroc(scores_in: Tensor, scores_out: Tensor) -> float:
    """Area under the ROC curve for "OOD scores higher": ``P(S_out > S_in) + ½P(S_out = S_in)``.

    Exact (Mann–Whitney U from average ranks). ``scores_in``: scores of in-distribution inputs,
    ``scores_out``: of out-of-distribution inputs; 1-D tensors of any lengths.
    """
    a = _check_scores(scores_in, "scores_in")
    b = _check_scores(scores_out, "scores_out")
    ranks = _average_ranks(torch.cat([a, b]))
    n_in, n_out = len(a), len(b)
    u = float(ranks[n_in:].sum()) - n_out * (n_out + 1) / 2
    return u / (n_in * n_out)


def roc_curve(scores_in: Tensor, scores_out: Tensor) -> tuple[Tensor, Tensor]:
    """``(false-positive rate, true-positive rate)`` at every threshold, OOD = positive, from
    (0, 0) to (1, 1); ties step diagonally, so the trapezoid area equals :func:`auroc`."""
    a = _check_scores(scores_in, "scores_in")
    b = _check_scores(scores_out, "scores_out")
    scores = torch.cat([a, b])
    positive = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).double()
    order = torch.argsort(scores, descending=True, stable=True)
    s, y = scores[order], positive[order]
    tp, fp = torch.cumsum(y, 0), torch.cumsum(1 - y, 0)
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[:-1] != s[1:]  # keep one point per distinct threshold
    tpr = torch.cat([torch.zeros(1, dtype=torch.float64), tp[last] / len(b)])
    fpr = torch.cat([torch.zeros(1, dtype=torch.float64), fp[last] / len(a)])
    return fpr, tpr


@torch.no_grad()
def novelty_scores(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    statistic: str = "score",
    reference: Tensor | None = None,
    batch_size: int = 500,
) -> Tensor:
    """Per-input novelty scores ``score_fn(batch) -> (b,)`` (an energy, or ``−log p``), float64.

    ``statistic="deviation"`` returns ``|score − mean(score over reference)|`` (the reference
    code's OOD statistic; ``reference`` = training inputs) instead of the score itself.
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {STATISTICS}")

    def run(data: Tensor) -> Tensor:
        return torch.cat([score_fn(b).detach().double().cpu() for b in data.split(batch_size)])

    s = run(x)
    if statistic == "deviation":
        if reference is None:
            raise ValueError("statistic='deviation' needs reference inputs (training data)")
        s = (s - run(reference).mean()).abs()
    return s


def noise_images(
    kind: str,
    like: Tensor,
    n: int,
    levels: int | None,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` noise inputs shaped like the rows of ``like`` (on the data's scale).

    ``noise-uniform``: i.i.d. uniform integer levels ``0..levels−1`` (uniform in the range of
    ``like`` for continuous data); ``noise-gaussian``: ``N(mean, std²)`` per pixel with the mean and
    standard deviation of ``like``, rounded and clipped to the levels for quantised data.
    """
    if kind not in NOISE_SETS:
        raise ValueError(f"unknown noise set {kind!r}; choose one of {NOISE_SETS}")
    shape = (n, *like.shape[1:])
    ref = like.double()
    if kind == "noise-uniform":
        if levels:
            return torch.randint(0, levels, shape, generator=generator).to(like.dtype)
        lo, hi = ref.min(), ref.max()
        return (lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)).to(
            like.dtype
        )
    mean, std = ref.mean(0), ref.std(0)
    z = mean + std * torch.randn(shape, generator=generator, dtype=torch.float64)
    if levels:
        z = z.round().clamp(0, levels - 1)
    return z.to(like.dtype)


def plot_roc(
    curves: dict[str, tuple[Tensor, Tensor, float]], path: str | Path, title: str = ""
) -> Path:
    """ROC curves ``{label: (fpr, tpr, auroc)}`` in one figure (with the chance diagonal)."""
    from ..plots import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, (fpr, tpr, area) in curves.items():
        ax.plot(fpr.numpy(), tpr.numpy(), label=f"{label} (AUROC {area:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false-positive rate (in-distribution flagged)")
    ax.set_ylabel("true-positive rate (OOD flagged)")
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def ood_report(
    score_fn: Callable[[Tensor], Tensor],
    what: str,
    ds: Any,
    names: list[str],
    *,
    n: int = 2000,
    statistic: str = "score",
    seed: int = 0,
    out: Path | None = None,
    root: str | None = None,
) -> dict[str, float]:
    """AUROC of a model's novelty score ``score_fn`` (named ``what``; for a ``jacfree train``
    model, :func:`jacfree.kinds.model_score_fn` gives both), ``ds``'s test split (first ``n``
    rows) vs the test split of every dataset in ``names`` (same image shape and levels) or a
    noise baseline (:data:`NOISE_SETS`); prints one line per dataset, writes ``ood.png`` (ROC
    curves) into ``out`` if given, and returns ``{"auroc_<name>": value}``."""
    from ..data import load

    torch.manual_seed(seed)  # dequantisation noise of the scores
    gen = torch.Generator().manual_seed(seed)
    x_in = ds.test[:n]
    reference = ds.train[:n] if statistic == "deviation" else None
    s_in = novelty_scores(score_fn, x_in, statistic=statistic, reference=reference)
    results: dict[str, float] = {}
    curves: dict[str, tuple[Tensor, Tensor, float]] = {}
    for name in names:
        if name in NOISE_SETS:
            x_out = noise_images(name, ds.train[:n], len(x_in), ds.levels, generator=gen)
        else:
            other = load(name, root=root)
            if tuple(other.shape) != tuple(ds.shape) or other.levels != ds.levels:
                raise ValueError(
                    f"OOD dataset {name!r} has shape {tuple(other.shape)} and {other.levels} "
                    f"levels, the model's data {ds.name!r} {tuple(ds.shape)} and {ds.levels}; "
                    "compare datasets of the same image format (e.g. fashion-mnist vs mnist-5k), "
                    f"or a noise baseline ({', '.join(NOISE_SETS)})."
                )
            x_out = other.test[:n]
        s_out = novelty_scores(score_fn, x_out, statistic=statistic, reference=reference)
        area = auroc(s_in, s_out)
        fpr, tpr = roc_curve(s_in, s_out)
        curves[name] = (fpr, tpr, area)
        results[f"auroc_{name}"] = area
        how = what + (", deviation from the training mean" if statistic == "deviation" else "")
        print(
            f"OOD {ds.name} (n={len(s_in)}) vs {name} (n={len(s_out)}): AUROC {area:.4f} "
            f"(score: {how})"
        )
    if out is not None and curves:
        try:
            path = plot_roc(curves, Path(out) / "ood.png", title=f"OOD vs {ds.name}: {what}")
            print(f"wrote {path}")
        except ImportError as err:
            print(f"plot skipped: {err}")
    return results

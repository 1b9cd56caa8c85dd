"""The contract of every score-matching objective in the registry (float64).

For each :class:`~jacfree.scorematching.objectives.Objective`, under its default settings and
under each setting it reads changed from the default (sequential FD batches, several particles,
random MDSM levels): the loss is a finite scalar; its gradient reaches every parameter of a model
whose parameters all shape the score; the step reads no tensor value on the host and traces as
one graph under ``torch.compile`` with the eager gradients. Each finite-difference form equals its
autograd baseline for a quadratic energy (an affine score), sample by sample, when both see the
same noise and the FD directions are the coordinate axes.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import Tensor, nn

from jacfree.kinds.scorematching import OBJECTIVES
from jacfree.scorematching.convention import ScoreNetModel, score
from jacfree.scorematching.objectives import (
    LABELS,
    SM_OBJECTIVES,
    Objective,
    Settings,
    objective,
    objective_names,
)
from test_hot_path import assert_no_host_reads_and_compiled_grads_equal

DT = torch.float64
D, B = 4, 5

pytestmark = pytest.mark.usefixtures("one_thread")


class Energy(nn.Module):
    """E(x) = a·softplus(Wx + b) + ½ Σ c_i x_i²: every parameter changes the score."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.W = nn.Parameter(torch.randn(6, D, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(6, generator=g, dtype=DT))
        self.a = nn.Parameter(torch.randn(6, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.rand(D, generator=g, dtype=DT) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x @ self.W.T + self.b) @ self.a + 0.5 * (self.c * x * x).sum(
            -1
        )


class ScoreNet(nn.Module):
    """s(x) = V tanh(Wx + b) − c ⊙ x: every parameter changes the output."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.W = nn.Parameter(torch.randn(6, D, generator=g, dtype=DT))
        self.b = nn.Parameter(torch.randn(6, generator=g, dtype=DT))
        self.V = nn.Parameter(torch.randn(D, 6, generator=g, dtype=DT))
        self.c = nn.Parameter(torch.rand(D, generator=g, dtype=DT) + 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.tanh(x @ self.W.T + self.b) @ self.V.T - self.c * x


# each setting an objective may read, changed from its default
CHANGED = {
    "parallel": False,
    "n_particles": 2,
    "random_sigmas": True,
}
CASES = [(o, Settings()) for o in SM_OBJECTIVES] + [
    (o, replace(Settings(), **{k: v}))
    for o in SM_OBJECTIVES
    for k, v in CHANGED.items()
    if k in o.reads
]


def _id(case: tuple[Objective, Settings]) -> str:
    o, s = case
    changed = [f"{k}={getattr(s, k)}" for k, v in CHANGED.items() if getattr(s, k) == v]
    return "-".join([o.model, o.name, *changed])


def _model(o: Objective) -> nn.Module:
    return Energy() if o.model == "energy" else ScoreNet()


X = torch.randn(B, D, dtype=DT, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_a_finite_scalar_whose_gradient_reaches_every_parameter(case) -> None:
    o, settings = case
    model = _model(o)
    loss = o(model, X, settings)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, f"{o.name}: no gradient reaches {name}"


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_no_host_reads_and_one_graph_with_the_eager_gradients(case) -> None:
    o, settings = case
    assert_no_host_reads_and_compiled_grads_equal(_model(o), o.bind(settings))


class Quadratic(nn.Module):
    """E(x) = ½(x−μ)ᵀP(x−μ) with P symmetric positive definite; its score −P(x−μ) is affine."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(4)
        A = torch.randn(D, D, generator=g, dtype=DT)
        self.P = nn.Parameter(A @ A.T / D + 0.5 * torch.eye(D, dtype=DT))
        self.mu = nn.Parameter(torch.randn(D, generator=g, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        y = x - self.mu
        return 0.5 * ((y @ self.P) * y).sum(-1)

    def score(self, x: Tensor) -> Tensor:
        return -(x - self.mu) @ self.P


def _shared_randomness(o: Objective) -> dict[str, Tensor]:
    """The same noise for an FD form and its baseline; the coordinate axes as FD directions
    (``d`` per sample: the direction average is then exact) and as sliced projections (scaled
    to ``E[vvᵀ] = I``)."""
    g = torch.Generator().manual_seed(5)
    kw: dict[str, Tensor] = {}
    if "sigma" in o.reads or "sigmas" in o.reads:
        kw["noise"] = torch.randn(B, D, generator=g, dtype=DT)
    if "sigmas" in o.reads:
        kw["noise_levels"] = torch.linspace(0.1, 0.9, B, dtype=DT)
    axes = torch.eye(D, dtype=DT)[:, None, :].expand(D, B, D)
    if o.fd:
        kw["directions"] = axes
    elif "projection" in o.reads:
        kw["v"] = math.sqrt(D) * axes
    return kw


FD_FORMS = [o for o in SM_OBJECTIVES if o.fd]


@pytest.mark.parametrize("fd_form", FD_FORMS, ids=lambda o: f"{o.model}-{o.name}")
@pytest.mark.parametrize("eps", [1e-3, 0.1, 2.0])
def test_fd_form_equals_its_baseline_for_a_quadratic(fd_form: Objective, eps: float) -> None:
    q = Quadratic()
    model = q if fd_form.model == "energy" else q.score
    baseline = objective(fd_form.baseline, fd_form.model)
    settings = Settings(eps=eps)
    want = baseline(model, X, settings, reduction="none", **_shared_randomness(baseline))
    got = fd_form(model, X, settings, reduction="none", **_shared_randomness(fd_form))
    assert got.shape == want.shape == (B,)
    torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-8)


def test_the_registry_is_consistent() -> None:
    keys = [(o.model, o.name) for o in SM_OBJECTIVES]
    assert len(set(keys)) == len(keys)
    for o in FD_FORMS:
        base = objective(o.baseline, o.model)
        assert not base.fd and o.name == f"fd_{base.name}"
        assert set(base.reads) - {"projection"} <= set(o.reads)
    assert LABELS["fd_ssm_vr"] == "FD-SSM-VR"
    # every objective a train kind offers (but maximum likelihood) is in the registry
    score_kinds = {"ncsn"}
    for kind, names in OBJECTIVES.items():
        model = "score" if kind in score_kinds else "energy"
        assert set(names) - {"mle"} <= set(objective_names(model)), kind
    with pytest.raises(ValueError, match=r"unknown score objective 'fd_ssm'; choose one of 'sm'"):
        objective("fd_ssm", "score")


def test_a_score_network_goes_through_the_score_estimators_only() -> None:
    """The ``*_scorenet`` estimators are the energy estimators on a :class:`ScoreNetModel`; the
    estimators that evaluate ``log p̃`` refuse it, and a wrong output shape is named."""
    net = ScoreNet()
    wrapped = ScoreNetModel(net)
    torch.testing.assert_close(score(wrapped, X), net(X))
    with pytest.raises(TypeError, match="not a score network; for score networks use fd_ssm_vr"):
        objective("fd_dsm")(wrapped, X)
    with pytest.raises(ValueError, match=r"score_net must return a tensor of the input's shape"):
        objective("ssm", "score")(lambda x: x[:, :2], X)

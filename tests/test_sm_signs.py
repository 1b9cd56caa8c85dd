r"""Sign conventions: log p̃ = −E and score = ∇ₓ log p̃ = −∇ₓE, checked where a flip would hide.

A consistently flipped convention (treating E as log p̃) passes many natural tests: every estimator
would still agree with every other one, FD would still match autograd, parallel would match
sequential, and even the *mean* of a Gaussian would still be recovered, because ½‖s‖² and (vᵀs)²
do not see the sign of s. What the flip changes is the sign of the curvature term
tr ∇² log p̃, and with it the *precision* the objective selects. So the tests below (1) compare the
helpers with hand-written formulas, (2) check the curvature term of every estimator is −p·d for
E = ½p‖x‖², and (3) check every estimator selects the right precision, whereas the flipped
convention demonstrably does not — while it still recovers the mean.
"""

from __future__ import annotations

import pytest
import torch

from jacfree.scorematching import fd, losses
from jacfree.scorematching.convention import log_density, score
from jacfree.scorematching.objectives import SM_OBJECTIVES, Objective, Settings

DT = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def asym_energy(x: torch.Tensor) -> torch.Tensor:
    """E(x) = Σ softplus(x_i) + ½‖x‖² (not symmetric under x → −x); ∇E = sigmoid(x) + x."""
    return torch.nn.functional.softplus(x).sum(-1) + 0.5 * (x * x).sum(-1)


def test_log_density_and_score_match_hand_written_formulas():
    x = torch.randn(7, 4, dtype=DT)
    torch.testing.assert_close(log_density(asym_energy, x), -asym_energy(x))
    torch.testing.assert_close(score(asym_energy, x), -(torch.sigmoid(x) + x))
    mu = torch.randn(4, dtype=DT)
    s = score(lambda y: 0.5 * ((y - mu) ** 2).sum(-1), x)
    torch.testing.assert_close(s, mu - x)  # the score points towards the mode
    # (B, 1) energies are accepted; anything else is refused
    torch.testing.assert_close(log_density(lambda y: asym_energy(y)[:, None], x), -asym_energy(x))
    with pytest.raises(ValueError, match="one value per sample"):
        log_density(lambda y: y, x)


def test_fd_ssm_curvature_term_is_two_e_minus_neighbours():
    """Notes §5.8: the FD-SSM trace term is (d/ε²)·[2E(x) − E(x+v) − E(x−v)] ≈ +d uᵀ∇²log p̃ u."""
    x = torch.randn(9, 4, dtype=DT)
    u = fd.sphere_directions(x)
    eps, d = 0.01, 4
    terms = losses.fd_ssm(asym_energy, x, eps, directions=u, reduction="none", return_terms=True)
    v = eps * u
    by_hand = (d / eps**2) * (2 * asym_energy(x) - asym_energy(x + v) - asym_energy(x - v))
    torch.testing.assert_close(terms.curvature, by_hand)
    # E is convex, so the log-density is concave: the curvature term must be negative
    assert bool((terms.curvature < 0).all())
    sig = torch.sigmoid(x)
    hess_E_uu = (u * u * (sig * (1 - sig) + 1)).sum(-1)  # ∇²E = diag(σ'(x) + 1)
    torch.testing.assert_close(terms.curvature, -d * hess_E_uu, rtol=1e-4, atol=0)
    by_hand_norm = (d / eps**2) * (asym_energy(x + v) - asym_energy(x - v)) ** 2 / 8
    torch.testing.assert_close(terms.norm, by_hand_norm)


# the registered objectives: SM-type ones target J (return_terms), DSM-type ones the smoothed data
SM_TYPE = [o for o in SM_OBJECTIVES if not {"sigma", "sigmas"} & set(o.reads)]
DSM_TYPE = [o for o in SM_OBJECTIVES if "sigma" in o.reads]


def _id(o: Objective) -> str:
    return f"{o.model}-{o.name}"


@pytest.mark.parametrize("obj", SM_TYPE, ids=_id)
def test_curvature_term_of_every_estimator_is_minus_p_d(obj: Objective):
    p, d = 2.0, 3
    x = torch.randn(50, d, dtype=DT)

    def energy(y):
        return 0.5 * p * (y * y).sum(-1)

    def score_net(y):
        return -p * y

    model = energy if obj.model == "energy" else score_net
    terms = obj(model, x, Settings(eps=0.7), reduction="none", return_terms=True)
    # Rademacher and sphere projections make vᵀ(−pI)v = −p·d exact per sample
    torch.testing.assert_close(terms.curvature, torch.full((50,), -p * d, dtype=DT))
    if obj.name in ("sm", "ssm_vr", "fd_ssm_vr"):  # the others slice ½‖s‖² too
        torch.testing.assert_close(terms.norm, 0.5 * p**2 * (x * x).sum(-1))
    assert bool((terms.norm >= 0).all())


S2, D, SIGMA = 0.64, 3, 0.5  # data N(0, S2·I) in D dimensions; DSM noise level


def evaluate(obj: Objective, energy, score_net, x: torch.Tensor) -> float:
    g = torch.Generator().manual_seed(0)  # common random numbers across calls
    model = energy if obj.model == "energy" else score_net
    return float(obj(model, x, Settings(sigma=SIGMA), generator=g).detach())


def scan(obj: Objective, x: torch.Tensor, ps: list[float], flipped: bool = False) -> list[float]:
    """The loss at each precision p for E = ½p‖x‖² (or its sign-flipped convention)."""
    sgn = -1.0 if flipped else 1.0
    out = []
    for p in ps:

        def energy(y, p=p):
            return sgn * 0.5 * p * (y * y).sum(-1)

        def score_net(y, p=p):
            return -sgn * p * y

        out.append(evaluate(obj, energy, score_net, x))
    return out


@pytest.mark.parametrize("obj", SM_TYPE + DSM_TYPE, ids=_id)
def test_every_estimator_selects_the_right_precision_and_a_flip_would_not(obj: Objective):
    x = S2**0.5 * torch.randn(4000, D, dtype=DT, generator=torch.Generator().manual_seed(1))
    # SM optimum p = 1/s²; DSM fits the smoothed data, optimum p = 1/(s² + σ²)
    p_star = 1 / (S2 + SIGMA**2) if obj in DSM_TYPE else 1 / S2
    ps = [0.5 * p_star, p_star, 2 * p_star]
    right = scan(obj, x, ps)
    assert right[1] < right[0] and right[1] < right[2], right
    flipped = scan(obj, x, ps, flipped=True)
    assert not (flipped[1] < flipped[0] and flipped[1] < flipped[2]), flipped


def test_mean_recovery_alone_cannot_see_the_sign():
    """Why the precision test above is needed: the μ-gradient is identical under a flip."""
    x = 0.8 * torch.randn(500, D, dtype=DT) + 1.0
    mu = torch.zeros(D, dtype=DT, requires_grad=True)

    def energy(y):
        return 0.5 * ((y - mu) ** 2).sum(-1)

    u = fd.sphere_directions(x)
    (g_right,) = torch.autograd.grad(losses.fd_ssm(energy, x, directions=u), mu)
    (g_flip,) = torch.autograd.grad(losses.fd_ssm(lambda y: -energy(y), x, directions=u), mu)
    torch.testing.assert_close(g_right, g_flip)
    assert bool((g_right < 0).all())  # both move μ towards the data mean 1.0

r"""The one place where the sign convention of score matching lives.

An *energy* ``E(x) -> (B,)`` defines the unnormalised log-density ``log p̃(x) = −E(x)``; its *score*
is ``s(x) = ∇ₓ log p̃(x) = −∇ₓ E(x)``. :func:`log_density` is the only function in jacfree that
applies this minus sign; every estimator (autograd and finite-difference alike) works with
``log p̃`` from here on, so a sign error cannot hide in one estimator while the others agree.

A score network ``s(x) ≈ ∇ₓ log p`` has a score but no log-density: wrapped in
:class:`ScoreNetModel`, it goes through the same autograd estimators (:func:`score` and
:func:`score_function` return its output), which is how the ``*_scorenet`` estimators are built.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._compile import is_compiling

__all__ = ["Energy", "ScoreNet", "ScoreNetModel", "log_density", "score", "score_function"]

Energy = Callable[..., Tensor]
"""``energy(x) -> (B,)`` (or ``energy(x, cond)``); ``log p̃ = −energy``."""

ScoreNet = Callable[..., Tensor]
"""``score_net(x) -> x.shape`` (or ``score_net(x, cond)``), a direct model of ``∇ₓ log p``."""


class ScoreNetModel:
    """A score network seen by the energy estimators: its score is its output, shape-checked.

    It defines no log-density, so an estimator that evaluates ``log p̃`` (the finite-difference
    energy forms) refuses it; the ones that only need the score take it unchanged.
    """

    __slots__ = ("net",)

    def __init__(self, net: ScoreNet) -> None:
        self.net = net

    def __call__(self, x: Tensor, cond: Tensor | None = None) -> Tensor:
        s = self.net(x) if cond is None else self.net(x, cond)
        if not isinstance(s, Tensor) or tuple(s.shape) != tuple(x.shape):
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(
                f"score_net must return a tensor of the input's shape {tuple(x.shape)}, got {got}"
            )
        return s


def log_density(energy: Energy, x: Tensor, cond: Tensor | None = None) -> Tensor:
    r"""``log p̃(x) = −E(x)``, shape ``(B,)`` — THE sign convention of jacfree's score matching.

    Accepts energies returning ``(B,)`` or ``(B, 1)``; anything else raises. ``cond`` (optional
    per-sample conditioning such as a noise level) is passed on as ``energy(x, cond)``.
    """
    if isinstance(energy, ScoreNetModel):
        raise TypeError(
            "this estimator evaluates log p~ = -E and needs an energy E(x) -> (B,), not a score "
            "network; for score networks use fd_ssm_vr or the *_scorenet estimators."
        )
    e = energy(x) if cond is None else energy(x, cond)
    if not isinstance(e, Tensor):
        raise TypeError(f"energy must return a tensor of shape (B,), got {type(e).__name__}")
    B = x.shape[0]
    if e.dim() == 2 and e.shape == (B, 1):
        e = e.squeeze(1)
    if e.shape != (B,):
        raise ValueError(
            f"energy must return one value per sample, shape ({B},) (or ({B}, 1)); got "
            f"{tuple(e.shape)}. Sum over non-batch dimensions inside the energy."
        )
    return -e


def score(
    energy: Energy,
    x: Tensor,
    *,
    cond: Tensor | None = None,
    create_graph: bool | None = None,
) -> Tensor:
    r"""The score ``s(x) = ∇ₓ log p̃(x) = −∇ₓ E(x)`` by autograd, shape ``x.shape``.

    ``create_graph`` defaults to ``torch.is_grad_enabled()`` (keep the graph for a parameter
    gradient when training, not under ``torch.no_grad()``). Works under ``no_grad`` too. Samples
    must be independent rows (the gradient of the batch sum is taken).

    Eager calls take ``torch.autograd.grad`` (with ``create_graph``: the double-backward graph of
    the reference implementations); under ``torch.compile`` the same gradient comes from
    ``torch.func.grad``, which the compiler traces as one graph.
    """
    if isinstance(energy, ScoreNetModel):
        return energy(x, cond)
    if create_graph is None:
        create_graph = torch.is_grad_enabled()
    if is_compiling():
        s = torch.func.grad(lambda y: log_density(energy, y, cond).sum())(x)
        return s if create_graph else s.detach()
    with torch.enable_grad():
        xr = x if x.requires_grad else x.detach().requires_grad_(True)
        f = log_density(energy, xr, cond)
        (s,) = torch.autograd.grad(f.sum(), xr, create_graph=create_graph)
    return s


def score_function(energy: Energy, cond: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The score ``x -> s(x)`` as a function that ``torch.func`` transforms (``jvp``, ``vmap``)
    compose with: ``torch.func.grad`` of the summed log-density, or a score network's output."""
    if isinstance(energy, ScoreNetModel):
        return lambda y: energy(y, cond)
    return torch.func.grad(lambda y: log_density(energy, y, cond).sum())

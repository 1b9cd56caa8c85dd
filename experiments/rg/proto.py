"""Prototypes of the relative-vs-exact study (docs/relative-gradient.md), selected in ``run.py``.

``--init whiten|diag|scalar``: :func:`layer_init`; ``--optimizer``: ``multadam`` (:class:`MultAdam`,
O(D³)), ``scalaradam``, ``ebadam`` (Euclidean bias gradient, by a solve), ``scaledadam`` /
``scaledadam-w``, ``relscalar``, ``eadam`` / ``eadam-f`` / ``eadam-r`` (:class:`EAdam`, Ê by a
solve; ``eadam-r`` is the prototype of :class:`jacfree.train.RelativeAdam`), ``rowadam``. They
are kept to reproduce the diagnosis table; none is part of the library.
"""

from __future__ import annotations

import torch
from torch import Tensor

from jacfree.flows.linear import SquareAffine


@torch.no_grad()
def layer_init(flow, x: Tensor, how: str) -> None:
    h = x
    flow.eval()
    for layer in flow.layers:
        if isinstance(layer, SquareAffine):
            mu = h.mean(0)
            c = torch.cov(h.T.double()) + 1e-6 * torch.eye(h.shape[1], dtype=torch.float64)
            if how == "whiten":
                lam, u = torch.linalg.eigh(c)
                w = (u * lam.rsqrt()) @ u.T
            elif how == "diag":
                w = torch.diag(c.diagonal().rsqrt())
            elif how == "scalar":
                w = torch.eye(len(c), dtype=torch.float64) * c.diagonal().mean().rsqrt()
                w = w @ layer.weight.double()
            else:
                raise ValueError(how)
            layer.weight.copy_(w.float())
            layer.bias.copy_(-(w.float() @ mu))
            layer._cache.clear()
        h, _ = layer(h)
    flow.train()


class ScalarAdam(torch.optim.Optimizer):
    """Adam whose second moment is one scalar per tensor (keeps the gradient's direction)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = p.new_zeros(())
                st["step"] += 1
                t = st["step"]
                st["m"].lerp_(p.grad, 1 - b1)
                st["v"].lerp_(p.grad.square().mean(), 1 - b2)
                denom = (st["v"] / (1 - b2**t)).sqrt().add_(g["eps"])
                p.addcdiv_(st["m"], denom, value=-g["lr"] / (1 - b1**t))


class MultAdam(torch.optim.Optimizer):
    """Prototype (O(D³)): Adam statistics on E = R W⁻¹ (multiplicative coordinates), W ← W − lr·N·W.

    ``weights`` lists the square weights; other params get plain Adam.
    """

    def __init__(self, params, weights, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, exact=False):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.weights = {id(w) for w in weights}
        self.exact = exact

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            b1, b2 = g["betas"]
            for p in g["params"]:
                if p.grad is None:
                    continue
                st = self.state[p]
                mult = id(p) in self.weights
                if mult:
                    if self.exact:
                        grad = p.grad @ p.T
                    else:
                        grad = torch.linalg.solve(p.double(), p.grad.double(), left=False).float()
                else:
                    grad = p.grad
                if not st:
                    st["step"] = 0
                    st["m"] = torch.zeros_like(p)
                    st["v"] = torch.zeros_like(p)
                st["step"] += 1
                t = st["step"]
                st["m"].lerp_(grad, 1 - b1)
                st["v"].lerp_(grad.square(), 1 - b2)
                n = (st["m"] / (1 - b1**t)) / ((st["v"] / (1 - b2**t)).sqrt() + g["eps"])
                if mult:
                    n = n @ p
                p.sub_(n, alpha=g["lr"])


class EuclidBiasAdam(torch.optim.Adam):
    """Prototype: relative rule for W, the Euclidean gradient Σδ for b (recovered by a solve)."""

    def __init__(self, params, pairs, lr=1e-3):
        super().__init__(params, lr=lr)
        self.pairs = pairs

    @torch.no_grad()
    def step(self, closure=None):
        for w, b in self.pairs:
            e_b = torch.linalg.solve(w.double(), b.double())  # W⁻¹ b
            b.grad -= (w.grad.double() @ e_b).float()  # R_b − R_W W⁻¹ b = Σδ
        return super().step()


class ScaledAdam(torch.optim.Adam):
    """Prototype: Adam whose step for each square layer is multiplied by s = ‖W‖_F/√D."""

    def __init__(self, params, pairs, lr=1e-3, bias=True):
        super().__init__(params, lr=lr)
        self.pairs = pairs
        self.bias = bias

    @torch.no_grad()
    def step(self, closure=None):
        old = {}
        for w, b in self.pairs:
            s = w.norm() / w.shape[0] ** 0.5
            for p in (w, b) if self.bias else (w,):
                old[p] = (p.clone(), s)
        super().step()
        for p, (q, s) in old.items():
            p.copy_(q + s * (p - q))


class RelScalarAdam(torch.optim.Optimizer):
    """Prototype: momentum on R, one second moment per layer of ‖R‖²/‖W‖² (multiplicative step)."""

    def __init__(self, params, pairs, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.pairs = pairs

    @torch.no_grad()
    def step(self, closure=None):
        g = self.param_groups[0]
        b1, b2 = g["betas"]
        for w, b in self.pairs:
            st = self.state[w]
            if not st:
                st["step"] = 0
                st["mw"] = torch.zeros_like(w)
                st["mb"] = torch.zeros_like(b)
                st["v"] = w.new_zeros(())
            st["step"] += 1
            t = st["step"]
            st["mw"].lerp_(w.grad, 1 - b1)
            st["mb"].lerp_(b.grad, 1 - b1)
            e2 = (w.grad.square().sum() + b.grad.square().sum()) / (
                w.square().sum() + b.square().sum() + 1
            )
            st["v"].lerp_(e2 / w.shape[0], 1 - b2)
            denom = (st["v"] / (1 - b2**t)).sqrt().add_(g["eps"]) * (1 - b1**t)
            w.sub_(st["mw"] * g["lr"] / denom)
            b.sub_(st["mb"] * g["lr"] / denom)


class EAdam(torch.optim.Optimizer):
    """Prototype: E = R W⁻¹ (by a solve), v of E per coordinate ("full") or row×column
    ("factored"), direction (E/√v)·W, momentum on that direction in W-space; bias: E_b = Σδ,
    direction N_b + N_W b (augmented matrix)."""

    def __init__(
        self, params, pairs, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, factored=False, rows_only=False
    ):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.pairs = pairs
        self.factored = factored
        self.rows_only = rows_only

    @torch.no_grad()
    def step(self, closure=None):
        g = self.param_groups[0]
        b1, b2 = g["betas"]
        for w, b in self.pairs:
            st = self.state[w]
            e = torch.linalg.solve(w.double(), w.grad.double(), left=False).float()
            eb = b.grad - w.grad @ torch.linalg.solve(w.double(), b.double()).float()
            if not st:
                st["step"] = 0
                st["mw"] = torch.zeros_like(w)
                st["mb"] = torch.zeros_like(b)
                st["vb"] = torch.zeros_like(b)
                if self.factored:
                    st["vr"] = torch.zeros_like(b)
                    st["vc"] = torch.zeros_like(b)
                else:
                    st["v"] = torch.zeros_like(w)
            st["step"] += 1
            t = st["step"]
            c2 = 1 - b2**t
            if self.factored:
                st["vr"].lerp_(e.square().mean(1), 1 - b2)
                st["vc"].lerp_(e.square().mean(0), 1 - b2)
                vr, vc = st["vr"] / c2, st["vc"] / c2
                v = vr[:, None] * vc[None, :] / vr.mean()
                if self.rows_only:
                    v = vr[:, None].expand_as(e)
            else:
                st["v"].lerp_(e.square(), 1 - b2)
                v = st["v"] / c2
            st["vb"].lerp_(eb.square(), 1 - b2)
            n = e / (v.sqrt() + g["eps"])
            nb = eb / ((st["vb"] / c2).sqrt() + g["eps"])
            st["mw"].lerp_(n @ w, 1 - b1)
            st["mb"].lerp_(n @ b + nb, 1 - b1)
            w.sub_(st["mw"], alpha=g["lr"] / (1 - b1**t))
            b.sub_(st["mb"], alpha=g["lr"] / (1 - b1**t))


class RowAdam(torch.optim.Optimizer):
    """Prototype, O(D²): momentum on diag(a)·[R_W, R_b]·s with a_i = 1/rms of row i of [R_W, R_b]
    (running mean), s = ‖W‖_F/√D."""

    def __init__(self, params, pairs, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, scale=True):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.pairs = pairs
        self.scale = scale

    @torch.no_grad()
    def step(self, closure=None):
        g = self.param_groups[0]
        b1, b2 = g["betas"]
        for w, b in self.pairs:
            st = self.state[w]
            if not st:
                st["step"] = 0
                st["mw"] = torch.zeros_like(w)
                st["mb"] = torch.zeros_like(b)
                st["v"] = torch.zeros_like(b)
            st["step"] += 1
            t = st["step"]
            row2 = (w.grad.square().sum(1) + b.grad.square()) / (w.shape[1] + 1)
            st["v"].lerp_(row2, 1 - b2)
            a = 1 / ((st["v"] / (1 - b2**t)).sqrt() + g["eps"])
            if self.scale:
                a = a * (w.norm() / w.shape[0] ** 0.5)
            st["mw"].lerp_(w.grad * a[:, None], 1 - b1)
            st["mb"].lerp_(b.grad * a, 1 - b1)
            w.sub_(st["mw"], alpha=g["lr"] / (1 - b1**t))
            b.sub_(st["mb"], alpha=g["lr"] / (1 - b1**t))

"""One training run of FCFlow for the relative-vs-exact study (docs/relative-gradient.md).

Writes ``OUT/result.json`` (settings, per-epoch history with per-layer weight diagnostics, test
NLL) and ``OUT/test_nll.pt`` (per-row test NLL, for paired comparisons by ``compare.py``).

Example::

    python experiments/rg/run.py --data casp --gradient relative --epochs 40 --out runs/casp-rel
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import proto
import torch
from torch import Tensor

import jacfree as jf
from jacfree.data import load
from jacfree.flows.core import FlowLayer
from jacfree.kinds import preprocess_layers
from jacfree.train.evaluate import per_example_nll
from jacfree.train.optim import make_adam


class Scale(FlowLayer):
    """x ↦ s·x with its log-det D·log|s| counted (to change the data scale the flow sees)."""

    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = float(s)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        ld = x.new_full((x.shape[0],), x[0].numel() * math.log(abs(self.s)))
        return x * self.s, ld

    def inverse(self, z: Tensor) -> Tensor:
        return z / self.s


class WeightStats:
    """fit callback: per-layer update norms ‖ΔW‖_F (epoch sums) and W's singular value range."""

    def __init__(self, flow: jf.FCFlow, opt=None, relative_steps: bool = False) -> None:
        self.flow = flow
        self.opt = opt
        self.relative_steps = relative_steps
        self.prev = [m.weight.detach().clone() for m in flow.affine_layers]
        self.upd = [0.0] * len(self.prev)
        self.umax = [0.0] * len(self.prev)
        self.u2max = [0.0] * len(self.prev)
        self.history: list[dict] = []

    def on_step(self, model, loss, diagnostics) -> None:
        for k, m in enumerate(self.flow.affine_layers):
            w = m.weight.detach()
            dw = w - self.prev[k]
            self.upd[k] += float(dw.norm())
            if self.relative_steps:  # U with ΔW = U·W_prev (diagnostic only: an O(D³) solve)
                prev = self.prev[k].double()
                u = torch.linalg.solve(prev, dw.double(), left=False)
                self.umax[k] = max(self.umax[k], float(u.norm()))
                self.u2max[k] = max(self.u2max[k], float(torch.linalg.matrix_norm(u, 2)))
            self.prev[k].copy_(w)

    def on_epoch_end(self, model, row) -> None:
        self.history.append(row)
        for k, m in enumerate(self.flow.affine_layers):
            s = torch.linalg.svdvals(m.weight.detach().double())
            row[f"w{k}_smax"], row[f"w{k}_smin"] = float(s[0]), float(s[-1])
            row[f"w{k}_fro"] = float(m.weight.detach().norm())
            row[f"w{k}_upd"] = self.upd[k]
            self.upd[k] = 0.0
            if self.relative_steps:
                row[f"u{k}_fro_max"], row[f"u{k}_2_max"] = self.umax[k], self.u2max[k]
                self.umax[k] = self.u2max[k] = 0.0
            state = self.opt.state.get(m.weight, {}) if self.opt is not None else {}
            if "v" in state:  # RelativeAdam's row second moments (weight rows, bias column)
                v = state["v"]
                row[f"v{k}_min"], row[f"v{k}_med"] = float(v[0].min()), float(v[0].median())
                row[f"v{k}_max"], row[f"vb{k}_min"] = float(v[0].max()), float(v[1].min())
        print(json.dumps(row), flush=True)  # progress, one JSON line per epoch

    def state_dict(self):
        return {}

    def load_state_dict(self, state) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="casp")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the flow's input by this")
    p.add_argument("--gradient", default="relative", choices=["exact", "relative", "selfnorm"])
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument(
        "--optimizer", default="adam", help="adam | relative-adam | sgdm | a prototype of proto.py"
    )
    p.add_argument("--init", default="orthogonal", help="orthogonal | data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--patience", type=int, default=None, help="early stopping (default: none)")
    p.add_argument("--recon-weight", type=float, default=1.0, help="λ of selfnorm layers")
    p.add_argument("--out", required=True)
    p.add_argument(
        "--max-step", type=float, default=None, help="RelativeAdam's max_step (default: none)"
    )
    p.add_argument("--max-rms", type=float, default=None, help="RelativeAdam's max_rms")
    p.add_argument(
        "--relative-steps",
        action="store_true",
        help="record max ‖U‖ (ΔW = U·W) per epoch; an O(D³) solve per layer and step",
    )
    a = p.parse_args()
    torch.set_num_threads(1)

    ds = load(a.data)
    flat = lambda t: t.reshape(len(t), -1)  # noqa: E731
    train, val, test = flat(ds.train), flat(ds.val), flat(ds.test)
    pre = preprocess_layers({"levels": ds.levels})
    if a.scale != 1.0:
        pre.append(Scale(a.scale))
    torch.manual_seed(a.seed)
    flow = jf.FCFlow(
        train.shape[1],
        layers=a.layers,
        gradient=a.gradient,
        preprocess=pre,
        recon_weight=a.recon_weight,
    )
    if a.init != "orthogonal":
        proto.layer_init(flow, train[torch.randperm(len(train))[:1000]], a.init)
    params = list(flow.parameters())
    if a.optimizer == "adam":
        opt = make_adam(params, a.lr)
    elif a.optimizer == "sgdm":
        opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9)
    elif a.optimizer == "multadam":
        ws = [m.weight for m in flow.affine_layers]
        opt = proto.MultAdam(params, ws, lr=a.lr, exact=a.gradient == "exact")
    elif a.optimizer == "ebadam":
        pairs = [(m.weight, m.bias) for m in flow.affine_layers]
        opt = proto.EuclidBiasAdam(params, pairs, lr=a.lr)
    elif a.optimizer in ("scaledadam", "scaledadam-w", "relscalar"):
        pairs = [(m.weight, m.bias) for m in flow.affine_layers]
        if a.optimizer == "relscalar":
            opt = proto.RelScalarAdam(params, pairs, lr=a.lr)
        else:
            opt = proto.ScaledAdam(params, pairs, lr=a.lr, bias=a.optimizer == "scaledadam")
    elif a.optimizer in ("eadam", "eadam-f", "eadam-r"):
        pairs = [(m.weight, m.bias) for m in flow.affine_layers]
        opt = proto.EAdam(
            params,
            pairs,
            lr=a.lr,
            factored=a.optimizer != "eadam",
            rows_only=a.optimizer == "eadam-r",
        )
    elif a.optimizer in ("rowadam", "rowadam-ns"):
        pairs = [(m.weight, m.bias) for m in flow.affine_layers]
        opt = proto.RowAdam(params, pairs, lr=a.lr, scale=a.optimizer == "rowadam")
    elif a.optimizer == "relative-adam":
        opt = jf.train.RelativeAdam(flow, lr=a.lr, max_step=a.max_step, max_rms=a.max_rms)
    elif a.optimizer == "scalaradam":
        opt = proto.ScalarAdam(params, lr=a.lr)
    else:
        raise SystemExit(a.optimizer)
    stats = WeightStats(flow, opt, a.relative_steps)
    t0 = time.perf_counter()
    failed = None
    try:
        res = jf.fit(
            flow,
            train,
            val,
            epochs=a.epochs,
            batch_size=a.batch_size,
            lr=a.lr,
            patience=a.patience,
            optimizer=opt,
            seed=a.seed,
            progress=False,
            callbacks=[stats],
        )
    except FloatingPointError as err:  # keep the history up to the failure
        failed = str(err)
        res = jf.train.FitResult(history=stats.history)
    wall = time.perf_counter() - t0
    nll = per_example_nll(flow, test)  # on the loaded (standardised) scale
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(nll, out / "test_nll.pt")
    summary = {
        "args": vars(a),
        "test_nll": float(nll.mean()),
        "test_se": float(nll.std() / math.sqrt(len(nll))),
        "best_epoch": res.best_epoch,
        "train_time_s": sum(r["epoch_time_s"] for r in res.history),
        "wall_s": wall,
        "history": res.history,
        "failed": failed,
    }
    (out / "result.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))


if __name__ == "__main__":
    main()

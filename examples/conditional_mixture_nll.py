"""Test NLL of a label-conditional run, given the label and as a class mixture.

A label-conditional flow p(x | k) also defines the unconditional density
p(x) = Σ_k π_k p(x | k), with π_k the class frequencies of the training split; its NLL is
directly comparable with an unconditional flow's. (For the true distribution, −log p(x | k) is
lower than −log p(x) by the mutual information of image and label, at most log K nats.)

Run::

    python examples/conditional_mixture_nll.py runs/digits-fc-relative-label [more runs]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from jacfree.data import load
from jacfree.kinds import build_model, model_input
from jacfree.train.evaluate import per_example_nll


def mixture_report(run: Path) -> dict[str, float]:
    payload = torch.load(run / "best.pt", weights_only=False)
    spec, data = payload["spec"], payload.get("data", {})
    flow = build_model(spec)
    flow.load_state_dict(payload["model_state"])
    ds = load(data.get("name", "digits"), seed=data.get("seed", 0))
    x = model_input(ds.test, flow)
    classes = spec["context_classes"]
    prior = torch.bincount(ds.labels["train"], minlength=classes).double()
    log_prior = (prior / prior.sum()).log()
    # −log p(x | k) for every class k, the same dequantisation noise for each (seed 0)
    nll = torch.stack(
        [per_example_nll(flow, (x, torch.full((len(x),), k))) for k in range(classes)], 1
    )
    given = nll.gather(1, ds.labels["test"][:, None])[:, 0]
    mixture = -torch.logsumexp(log_prior - nll, 1)
    bits = ds.dim * math.log(2)
    n = len(x)
    return {
        "nll_given_label": float(given.mean()),
        "nll_given_label_stderr": float(given.std() / math.sqrt(n)),
        "nll_mixture": float(mixture.mean()),
        "nll_mixture_stderr": float(mixture.std() / math.sqrt(n)),
        "bits_per_dim_given_label": float(given.mean()) / bits,
        "bits_per_dim_mixture": float(mixture.mean()) / bits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for run in args.runs:
        r = mixture_report(run)
        print(
            f"{run}: given the label {r['nll_given_label']:.3f} ± "
            f"{r['nll_given_label_stderr']:.3f} nats ({r['bits_per_dim_given_label']:.4f} "
            f"bits/dim); class mixture {r['nll_mixture']:.3f} ± {r['nll_mixture_stderr']:.3f} "
            f"nats ({r['bits_per_dim_mixture']:.4f} bits/dim)"
        )


if __name__ == "__main__":
    main()

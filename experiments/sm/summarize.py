"""Print the result tables of the FD-SM experiments (markdown) from runs/sm/*/results.json.

Run from the repository root after ``experiments/sm/run_all.sh``::

    python experiments/sm/summarize.py
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import jacfree as jf
from jacfree.cli import config_arguments

RUNS = Path("runs/sm")
CONFIGS = Path("experiments/sm")


def _load(name: str) -> dict | None:
    path = RUNS / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _pm(t: dict, key: str, se: str | None = None, digits: int = 2) -> str:
    if key not in t:
        return "n/a"
    err = t.get(se or f"{key}_stderr")
    return f"{t[key]:.{digits}f} ± {err:.{digits}f}" if err is not None else f"{t[key]:.{digits}f}"


def _timing(r: dict, n_train: int) -> tuple[str, str]:
    steps = math.ceil(n_train / r["spec_batch_size"])
    per_epoch = r["train_time_per_epoch_s"]
    return f"{per_epoch:.2f}", f"{1e3 * per_epoch / steps:.0f}"


def _row(name: str, sizes: dict[str, int]) -> tuple[dict, dict, tuple[str, str]] | None:
    r = _load(name)
    if r is None:
        return None
    argv = config_arguments(CONFIGS / f"{name}.toml")
    r["spec_batch_size"] = int(argv[argv.index("--batch-size") + 1])
    data = r["data"]["name"]
    if data not in sizes:
        sizes[data] = len(jf.data.load(data).train)
    return r, r["test"], _timing(r, sizes[data])


def main() -> int:
    sizes: dict[str, int] = {}
    cmd = "jacfree train --config experiments/sm/{}.toml"

    print("### DKEF on UCI wine (test split)\n")
    print(
        "| data | objective | test NLL (nats, original scale) | test NLL (whitened scale) "
        "| exact SM loss | log Z (IS, 10⁶) | epochs (best) | s/epoch | ms/step | command |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for data in ("wine-red", "wine-white"):
        for obj in ("ssm", "fd_ssm"):
            name = f"dkef-{data}-{obj}"
            got = _row(name, sizes)
            if got is None:
                continue
            r, t, (spe, mps) = got
            print(
                f"| {data} | {obj} | {_pm(t, 'nll_nats', 'nll_stderr_nats')} "
                f"| {_pm(t, 'nll_nats_preprocessed', 'nll_stderr_nats')} | {_pm(t, 'exact_sm')} "
                f"| {_pm(t, 'log_z')} | {r['epochs_run']} ({r['best_epoch']}) | {spe} | {mps} "
                f"| `{cmd.format(name)}` |"
            )

    print("\n### NICE on mnist-5k (test split, 500 images; exact SM on the first 100)\n")
    print(
        "| objective | test NLL (nats) | bits/dim | exact SM loss (logit space) "
        "| epochs (best) | s/epoch | ms/step | command |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for obj in ("mle", "ssm", "ssm_vr", "fd_ssm", "dsm"):
        name = f"nice-mnist-5k-{obj}"
        got = _row(name, sizes)
        if got is None:
            continue
        r, t, (spe, mps) = got
        print(
            f"| {obj} | {_pm(t, 'nll_nats', 'nll_stderr_nats', 1)} "
            f"| {_pm(t, 'bits_per_dim', 'bits_per_dim_stderr', 3)} "
            f"| {_pm(t, 'exact_sm', digits=0)} "
            f"| {r['epochs_run']} ({r['best_epoch']}) | {spe} | {mps} | `{cmd.format(name)}` |"
        )

    print("\n### MLP energy on 2-D toys (test split, 5000 points)\n")
    print(
        "| data | objective | exact SM loss | test NLL (grid log Z) | epochs (best) | s/epoch "
        "| ms/step | command |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for data in ("moons", "8gaussians"):
        for obj in ("ssm", "fd_ssm"):
            name = f"energy-{data}-{obj}"
            got = _row(name, sizes)
            if got is None:
                continue
            r, t, (spe, mps) = got
            print(
                f"| {data} | {obj} | {_pm(t, 'exact_sm', digits=3)} "
                f"| {_pm(t, 'nll_grid_nats', 'nll_grid_stderr_nats', 3)} "
                f"| {r['epochs_run']} ({r['best_epoch']}) | {spe} | {mps} | `{cmd.format(name)}` |"
            )

    print("\n### NCSN on mnist-5k (test split, 500 images; annealed exact SM on the first 16)\n")
    print(
        "| objective | annealed DSM (test) | annealed exact SM loss | epochs (best) | s/epoch "
        "| ms/step | command |"
    )
    print("|---|---|---|---|---|---|---|")
    for obj in ("dsm", "fd_ssm_vr"):
        name = f"ncsn-mnist-5k-{obj}"
        got = _row(name, sizes)
        if got is None:
            continue
        r, t, (spe, mps) = got
        print(
            f"| {obj} | {_pm(t, 'dsm', digits=1)} | {_pm(t, 'exact_sm', digits=1)} "
            f"| {r['epochs_run']} ({r['best_epoch']}) | {spe} | {mps} | `{cmd.format(name)}` |"
        )

    print(
        "\n### Deep EBM on Fashion-MNIST (MDSM on the first 2000 test images; exact SM on the "
        "first 16)\n"
    )
    print("| objective | test MDSM | exact SM loss | epochs (best) | s/epoch | ms/step | command |")
    print("|---|---|---|---|---|---|---|")
    for obj in ("mdsm", "fd_mdsm"):
        name = f"ebm-fashion-mnist-{obj}"
        got = _row(name, sizes)
        if got is None:
            continue
        r, t, (spe, mps) = got
        print(
            f"| {obj} | {_pm(t, 'mdsm', digits=0)} | {_pm(t, 'exact_sm', digits=0)} "
            f"| {r['epochs_run']} ({r['best_epoch']}) | {spe} | {mps} | `{cmd.format(name)}` |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Print the result table of the SNF experiments (markdown) from runs/snf/*/results.json, and
per pair the validation NLL of both modes after every epoch with the training time so far
(from runs/snf/*/metrics.jsonl).

Run from the repository root after ``experiments/snf/run_all.sh`` (or the single commands)::

    python experiments/snf/summarize.py
"""

from __future__ import annotations

import json
from pathlib import Path

RUNS = Path("runs/snf")
PAIRS = (("FCFlow-2L", "fc"), ("CNN-9L", "cnn"), ("Glow 2x8", "glow"))


def _load(name: str) -> dict | None:
    path = RUNS / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _history(name: str) -> list[dict]:
    path = RUNS / name / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curves(label: str, stem: str) -> None:
    """Validation NLL per epoch of both modes, the gap, and the cumulative training time."""
    exact, snf = _history(f"{stem}-exact"), _history(f"{stem}-selfnorm")
    if not exact or not snf:
        return
    print(f"\n{label}: validation NLL (nats) after each epoch, cumulative training hours\n")
    print("| epoch | exact | selfnorm | selfnorm − exact | exact h | selfnorm h |")
    print("|---|---|---|---|---|---|")
    t_exact = t_snf = 0.0
    for a, b in zip(exact, snf, strict=False):
        t_exact += a["epoch_time_s"] / 3600
        t_snf += b["epoch_time_s"] / 3600
        gap = 100 * (b["val_nll"] - a["val_nll"]) / a["val_nll"]
        print(
            f"| {a['epoch']} | {a['val_nll']:.2f} | {b['val_nll']:.2f} | {gap:+.2f} % "
            f"| {t_exact:.2f} | {t_snf:.2f} |"
        )


def main() -> int:
    print(
        "| model | gradient | epochs (best) | test NLL (nats) | test bits/dim | "
        "train s/epoch | command |"
    )
    print("|---|---|---|---|---|---|---|")
    gaps = []
    for label, stem in PAIRS:
        bpd = {}
        for mode in ("exact", "selfnorm"):
            name = f"{stem}-{mode}"
            r = _load(name)
            if r is None:
                continue
            t = r["test"]
            bpd[mode] = t["bits_per_dim"]
            print(
                f"| {label} | {mode} | {r['epochs_run']} ({r['best_epoch']}) "
                f"| {t['nll_nats']:.2f} ± {t['nll_stderr_nats']:.2f} "
                f"| {t['bits_per_dim']:.4f} ± {t['bits_per_dim_stderr']:.4f} "
                f"| {r['train_time_per_epoch_s']:.0f} "
                f"| `jacfree train --config experiments/snf/{name}.toml` |"
            )
        if len(bpd) == 2:
            gap = 100 * (bpd["selfnorm"] - bpd["exact"]) / bpd["exact"]
            gaps.append(f"{label}: selfnorm − exact = {gap:+.2f} % of the exact bits/dim")
    if gaps:
        print()
        for line in gaps:
            print(f"* {line}")
    for label, stem in PAIRS:
        _curves(label, stem)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Table of the implicit-encoder VAE/WAE runs (runs/sm/{vae,wae}-implicit-mnist-5k-*).

Score-step time: the mean over all training steps of ``train_score_step_ms`` (the score network's
loss and gradient alone); step time: training time per epoch / steps per epoch. Test NLL: AIS on
the first ``ais_n`` binarised test images, mean ± standard error over images, and the Monte-Carlo
standard error of that mean from the chains.
Run: python experiments/sm/summarize_latent.py
"""

from __future__ import annotations

import json
import math
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "runs" / "sm"

print("| model | score estimator | score step (ms) | training step (ms) | test NLL (nats, AIS) "
      "| AIS MC stderr | epochs |")  # fmt: skip
print("|---|---|---|---|---|---|---|")
for mode in ("vae", "wae"):
    for objective in ("ssm_vr", "fd_ssm_vr"):
        run = ROOT / f"{mode}-implicit-mnist-5k-{objective}"
        if not (run / "results.json").exists():
            continue
        res = json.loads((run / "results.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        steps = math.ceil(4000 / res["settings"]["batch_size"])
        score_ms = sum(r["train_score_step_ms"] for r in rows) / len(rows)
        step_ms = 1e3 * sum(r["epoch_time_s"] for r in rows) / (len(rows) * steps)
        t = res["test"]
        print(
            f"| {mode.upper()} | {objective} | {score_ms:.1f} | {step_ms:.1f} | "
            f"{t['ais_nll']:.2f} ± {t['ais_nll_stderr']:.2f} | {t['ais_mc_stderr']:.3f} | "
            f"{len(rows)} |"
        )

"""Time of the implicit VAE/WAE score step, SSM-VR vs FD-SSM-VR, interleaved on the same batches.

The training runs log ``train_score_step_ms`` step by step, but on a shared machine their
absolute times drift with the load; this script alternates the two estimators on the same model
and the same batch so that both see the same load. For each of VAE and WAE (z-dim 32, 256-unit
MLPs, batch 128 of binarised mnist-5k images): the score step alone (encoder samples, the score
net's loss and its gradient — what ``train_score_step_ms`` times) and the whole training step
(``model.loss(x).backward()``), ``--reps`` alternations after 5 warm-up rounds; median and
interquartile range in ms.
Run: python experiments/sm/latent_score_step_time.py --reps 60
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from jacfree.data import load
from jacfree.latent import ImplicitLatentModel, binarize


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ds = load("mnist-5k")
    x = binarize(
        ds.train[: args.batch_size].flatten(1), ds.levels, torch.Generator().manual_seed(0)
    )
    print(f"batch {len(x)}, {args.reps} interleaved repetitions, {args.threads} thread(s)")
    print("| model | score estimator | score step (ms, median [IQR]) | training step (ms) |")
    print("|---|---|---|---|")
    for mode in ("vae", "wae"):
        models = {o: ImplicitLatentModel(784, 32, mode=mode, objective=o, time_score=False)
                  for o in ("ssm_vr", "fd_ssm_vr")}  # fmt: skip
        models["fd_ssm_vr"].load_state_dict(models["ssm_vr"].state_dict())
        times: dict[str, dict[str, list[float]]] = {o: {"score": [], "step": []} for o in models}
        for r in range(args.reps + 5):
            for o, m in models.items():
                t0 = time.perf_counter()
                with torch.no_grad():
                    z = m.encoder(x)
                loss = m.score_loss(z, x)
                torch.autograd.grad(loss, list(m.score.parameters()))
                t1 = time.perf_counter()
                m.zero_grad()
                m.loss(x).backward()
                t2 = time.perf_counter()
                if r >= 5:
                    times[o]["score"].append(1e3 * (t1 - t0))
                    times[o]["step"].append(1e3 * (t2 - t1))
        for o, t in times.items():
            q = statistics.quantiles(t["score"], n=4)
            qs = statistics.quantiles(t["step"], n=4)
            print(
                f"| {mode.upper()} | {o} | {q[1]:.1f} [{q[0]:.1f}, {q[2]:.1f}] | "
                f"{qs[1]:.1f} [{qs[0]:.1f}, {qs[2]:.1f}] |"
            )


if __name__ == "__main__":
    main()

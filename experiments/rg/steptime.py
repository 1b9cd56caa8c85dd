"""Time per training step of FCFlow(D, layers=2), B = 100, float32, one thread: exact + Adam,
relative + Adam and relative + RelativeAdam, interleaved on the same machine state.

    python experiments/rg/steptime.py --dims 9 64 784 --repeats 30

Prints the median CPU time of the process per step (``time.process_time``, robust to other jobs
on the machine) for each variant and D, and the ratios to exact + Adam.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import jacfree as jf
from jacfree.bench.scaling import TrainingStep


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, nargs="+", default=[9, 64, 784])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--repeats", type=int, default=30)
    a = p.parse_args()
    torch.set_num_threads(1)
    print(
        f"{'D':>5} {'exact+Adam ms':>14} {'relative+Adam ms':>17} {'relative+RelativeAdam ms':>25}"
    )
    for d in a.dims:
        torch.manual_seed(0)
        batches = [torch.randn(a.batch, d) for _ in range(4)]
        steps = {}
        for name, grad in (("exact", "exact"), ("rel-adam", "relative"), ("rel-radam", "relative")):
            flow = jf.FCFlow(d, layers=2, gradient=grad, validate=False)
            opt = jf.train.RelativeAdam(flow, lr=1e-4) if name == "rel-radam" else None
            steps[name] = TrainingStep(flow, grad, batches, 1e-4, optimizer=opt)
        times: dict[str, list[float]] = {k: [] for k in steps}
        for s in steps.values():  # warm-up
            for _ in range(3):
                s.step()
        for _ in range(a.repeats):
            for k, s in steps.items():
                t0 = time.process_time()
                s.step()
                times[k].append(time.process_time() - t0)
        med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"{d:>5} {med['exact']:>14.3f} {med['rel-adam']:>17.3f} {med['rel-radam']:>25.3f}")


if __name__ == "__main__":
    main()

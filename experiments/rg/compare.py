"""Paired comparison of runs written by ``run.py``: test NLL of each and B − A over the same rows.

    python experiments/rg/compare.py runs/casp-exact runs/casp-relative [more runs ...]

The first run is the reference A; every other run B is reported as B − A (mean ± standard error
of the per-row differences) and as a percentage of A's mean NLL.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import torch


def main(paths: list[str]) -> None:
    ref = Path(paths[0])
    a = torch.load(ref / "test_nll.pt")
    print(
        f"{'run':<40} {'test NLL':>9} {'± se':>7} {'B − A':>9} {'± se':>7} {'%':>7} {'train s':>8}"
    )
    for p in map(Path, paths):
        b = torch.load(p / "test_nll.pt")
        res = json.loads((p / "result.json").read_text())
        d = b - a
        se = float(d.std() / math.sqrt(len(d)))
        pct = 100 * float(d.mean()) / abs(float(a.mean()))
        print(
            f"{p.name:<40} {float(b.mean()):9.3f} {res['test_se']:7.3f} {float(d.mean()):+9.3f} "
            f"{se:7.3f} {pct:+7.2f} {res['train_time_s']:8.1f}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

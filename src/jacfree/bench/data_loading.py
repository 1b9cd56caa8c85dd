"""``jacfree bench data``: sizes, sources, licences and load times of every available dataset.

For each dataset available on this machine: the first load into an empty cache folder (read the
source files, apply the recipe, split, write the cache entry) and the cached load (read the
prepared ``.npy`` arrays), each the median of ``--repeats`` runs with a fresh cache for every
first load. Prints a table and writes a CSV.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ..data import registry
from .common import write_csv

DEFAULT_OUT = Path("bench-results")
CSV_NAME = "data_loading.csv"


def measure(name: str, repeats: int = 3) -> dict[str, Any]:
    """Sizes and median first-load / cached-load seconds of one available dataset."""
    firsts, cached = [], []
    ds = None
    for _ in range(repeats):
        folder = Path(tempfile.mkdtemp(prefix="jacfree-bench-data-"))
        try:
            t0 = time.perf_counter()
            ds = registry.load(name, cache_dir=folder)
            t1 = time.perf_counter()
            registry.load(name, cache_dir=folder)
            t2 = time.perf_counter()
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        firsts.append(t1 - t0)
        cached.append(t2 - t1)
    assert ds is not None
    facts = registry.info(name)
    return {
        "name": name,
        "group": facts["group"],
        "train": len(ds.train),
        "val": len(ds.val),
        "test": len(ds.test),
        "shape": "x".join(map(str, ds.shape)),
        "first_load_s": statistics.median(firsts),
        "cached_load_s": statistics.median(cached),
        "source": facts["source"],
        "licence": facts["licence"],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "First-load and cached-load time, sizes, source and licence of every dataset available "
        "here (unavailable ones are listed with the reason)."
    )
    parser.add_argument("--repeats", type=int, default=3, help="runs per dataset (median)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the CSV")


def run(args: argparse.Namespace) -> int:
    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}.")
    rows, missing = [], []
    for name in registry.names():
        status = registry.status(name)
        if status:
            rows.append(measure(name, args.repeats))
        else:
            missing.append((name, status.cause))
    print(
        f"{'dataset':<14} {'train':>7} {'val':>6} {'test':>6} {'shape':<9} {'first s':>8} "
        f"{'cached s':>8}  licence"
    )
    for r in rows:
        print(
            f"{r['name']:<14} {r['train']:>7} {r['val']:>6} {r['test']:>6} {r['shape']:<9} "
            f"{r['first_load_s']:>8.3f} {r['cached_load_s']:>8.3f}  {r['licence']}"
        )
    for name, cause in missing:
        print(f"{name:<14} not available here: {cause}")
    path = write_csv(rows, args.out / CSV_NAME, None if rows else ["name"], float_format=None)
    print(f"wrote {path}")
    return 0

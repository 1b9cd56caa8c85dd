"""``jacfree bench NAME``: one sub-command per benchmark module.

A benchmark module provides ``add_arguments(parser)`` and ``run(args) -> int``; list it in
:data:`BENCHMARKS` and it appears under ``jacfree bench``.
"""

from __future__ import annotations

import argparse
import importlib

#: name -> (module of ``jacfree.bench``, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "scaling": ("scaling", "time per training step vs D: exact, relative and the no-log-det floor"),
    "sm": (
        "sm",
        "score matching: time and memory per step, autograd SSM/SSM-VR/DSM vs finite differences",
    ),
    "snf": ("snf", "self-normalizing vs exact: time per training step and per sample, and vs D"),
    "data": (
        "data_loading",
        "sizes, sources, licences and first/cached load times of the available datasets",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one sub-command per benchmark to ``parser``."""
    sub = parser.add_subparsers(dest="bench_name", metavar="{" + ",".join(BENCHMARKS) + "}")
    sub.required = True
    for name, (module, help_text) in BENCHMARKS.items():
        p = sub.add_parser(name, help=help_text)
        mod = importlib.import_module(f"jacfree.bench.{module}")
        mod.add_arguments(p)
        p.set_defaults(bench_run=mod.run)


def run(args: argparse.Namespace) -> int:
    return int(args.bench_run(args))

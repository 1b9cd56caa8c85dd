"""``jacfree data list`` and ``jacfree data info NAME``.

The top-level CLI wires this module as ``jacfree data``: it calls :func:`add_arguments` on the
``data`` sub-parser and :func:`run` with the parsed arguments. ``python -m jacfree.data.cli``
runs it stand-alone.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from typing import TextIO

from . import registry
from .registry import DatasetUnavailableError

_SHORT_FIX = 70


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``list`` and ``info`` sub-commands to ``parser``."""
    sub = parser.add_subparsers(dest="data_command", metavar="{list,info}")
    sub.required = True
    p_list = sub.add_parser(
        "list", help="every dataset, with a one-line description and its availability here"
    )
    p_list.add_argument(
        "--available", action="store_true", dest="data_only_available", help="only available ones"
    )
    p_info = sub.add_parser(
        "info", help="source, licence, recipe, split and sizes of one dataset (loads it)"
    )
    p_info.add_argument("data_name", metavar="NAME", help="registry name (see `jacfree data list`)")
    p_info.add_argument(
        "--root", dest="data_root", default=None, help="folder holding your copy of the data"
    )
    p_info.add_argument("--seed", dest="data_seed", type=int, default=0, help="split seed")
    p_info.add_argument(
        "--cache-dir", dest="data_cache_dir", default=None, help="cache folder of prepared arrays"
    )
    p_info.add_argument(
        "--no-load", dest="data_no_load", action="store_true", help="do not load the data"
    )


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    """Run the sub-command in ``args``; returns the exit code."""
    out = out or sys.stdout
    if args.data_command == "list":
        return _list(out, only_available=getattr(args, "data_only_available", False))
    if args.data_command == "info":
        return _info(
            out,
            args.data_name,
            root=getattr(args, "data_root", None),
            seed=getattr(args, "data_seed", 0),
            cache_dir=getattr(args, "data_cache_dir", None),
            load=not getattr(args, "data_no_load", False),
        )
    print(f"unknown data command {args.data_command!r}", file=sys.stderr)
    return 2


def _list(out: TextIO, *, only_available: bool) -> int:
    rows = registry.catalogue()
    width = max(len(n) for n, _, _ in rows)
    print(f"{'NAME':<{width}}  {'GROUP':<5}  {'HERE':<4}  DESCRIPTION", file=out)
    for name, description, _ in rows:
        st = registry.status(name)
        if only_available and not st:
            continue
        group = registry.spec(name).group
        print(f"{name:<{width}}  {group:<5}  {'yes' if st else 'no':<4}  {description}", file=out)
        if not st:
            fix = st.fix if len(st.fix) <= _SHORT_FIX else f"see `jacfree data info {name}`"
            print(f"{'':<{width}}  {'':<5}  {'':<4}  why not: {st.cause}; fix: {fix}", file=out)
    print(
        f"\nuser data folder: {registry.data_dir()} (set {registry.DATA_DIR_ENV}); "
        f"cache: {registry.resolve_cache_dir()} (set {registry.CACHE_DIR_ENV})",
        file=out,
    )
    return 0


def _info(
    out: TextIO,
    name: str,
    *,
    root: str | None,
    seed: int,
    cache_dir: str | None,
    load: bool,
) -> int:
    try:
        facts = registry.info(name, root=root)
    except KeyError as err:
        print(f"error: {err.args[0]}", file=sys.stderr)
        return 2
    print(f"{facts['name']}: {facts['description']}", file=out)
    print(f"  group:     {facts['group']}", file=out)
    if facts["source"]:
        print(f"  source:    {facts['source']}", file=out)
    if facts["licence"]:
        print(f"  licence:   {facts['licence']}", file=out)
    print(f"  available: {'yes' if facts['available'] else 'no'}", file=out)
    if not facts["available"]:
        print(f"  why not:   {facts['cause']}", file=out)
        print(_wrap(f"fix:       {facts['fix']}"), file=out)
    status = 0
    if load and facts["available"]:
        start = time.perf_counter()
        try:
            ds = registry.load(name, root=root, seed=seed, cache_dir=cache_dir)
        except DatasetUnavailableError as err:
            print(f"  load failed: {err}", file=out)
            status = 1
        else:
            seconds = time.perf_counter() - start
            origin = ds.meta.get("cache_path")
            print(
                f"  sizes:     train {len(ds.train)}, val {len(ds.val)}, test {len(ds.test)}",
                file=out,
            )
            print(f"  shape:     {ds.shape} (D = {ds.dim})", file=out)
            print(
                f"  levels:    {ds.levels}  (bits/dim reported: {ds.bits_per_dim_applies})",
                file=out,
            )
            print(f"  logdet:    {ds.logdet:.6g}  (NLL original scale = NLL - logdet)", file=out)
            print(
                f"  range:     [{float(ds.train.min()):.4g}, {float(ds.train.max()):.4g}]", file=out
            )
            where = f"from cache {origin}" if origin else "prepared from the source"
            print(f"  loaded in: {seconds:.3f} s ({where})", file=out)
    if facts["doc"]:
        print("", file=out)
        print(textwrap.indent(facts["doc"], "  "), file=out)
    return status


def _wrap(text: str) -> str:
    return textwrap.fill(text, width=100, initial_indent="  ", subsequent_indent=" " * 13)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jacfree data", description="jacfree's datasets")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())

"""``jacfree bench scaling``: cost of one training step vs the dimension D, per gradient mode.

What is measured
----------------
The wall-clock time of one **full training step** — ``zero_grad``, forward, backward and the
optimiser step — of the fully connected flow ``jf.FCFlow(D, layers=L)`` (L square D×D affine
layers, smooth leaky ReLUs between them) on a batch of B examples, for several D, in three
variants trained side by side:

``exact``
    ``flow.set_gradient("exact")``; ``flow.loss(x)``: autograd through ``torch.linalg.slogdet``.
    Its backward needs W⁻ᵀ for every layer: O(L·D³) per step — the baseline.
``relative``
    ``flow.loss(x)`` in relative mode (Gresele et al. 2020): no inverse, no determinant,
    O(L·B·D²) per step (:mod:`jacfree.flows.relative`).
``floor``
    The same network trained with **no log-det term of the affine layers at all**: the loss keeps
    only the data term −mean(log N(z) + Σ log σ'(y)) (see :func:`floor_loss`). Every method must
    at least run this forward, this backward and this optimiser step, so its time is the floor no
    way of handling log|det W| can beat.

``relative / floor`` is the price of the log-det term under the relative gradient: per layer one
extra B×D×D product (Y W; the weight gradient Δᵀ(YW) replaces the floor's ΔᵀX at the same cost)
and one extra pass over the D×D weight (the + c·W term), so with L = 2 the relative step does 7
B×D×D products where the floor does 5 — a ratio near 1.4 wherever the products dominate.
``exact / relative`` is the saving over the O(D³) baseline.

Why it is measured this way
---------------------------
* The three variants are interleaved (one step of each per round, order rotated per round), so
  drift of a shared machine's speed hits them equally (:mod:`jacfree.bench.timing`).
* All variants start from the same orthogonally initialised weights and use the same optimiser,
  ``jacfree.train.make_adam`` (fused Adam, lr 1e-4), on a few fixed pre-generated batches.
* Before every step (outside the timed region) the parameters are restored to their initial
  values: Adam moves every coordinate by ≈ lr per step, which at D = 3072 makes W badly
  conditioned within a few dozen steps; restoring keeps every timed step on the same
  well-conditioned weights (the optimiser's moments keep accumulating, which does not change the
  work done). The cost of a step does not depend on the values, only on the shapes.
* The figure reported is the median over the timed steps after warm-up; min, max and the
  inter-quartile range are kept in the CSV. The number of steps is chosen from a time budget per
  D unless ``repeats`` is given.

Outputs (in ``--out``, default ``bench-results/scaling/``): ``scaling.csv`` (one row per
(D, variant)), ``environment.json`` (library versions, threads, CPU, the run's settings) and the
log-log plot ``scaling.png`` (time vs D with each variant's fitted slope over the largest D).
"""

from __future__ import annotations

import argparse
import copy
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flows import FCFlow, Flow, SquareAffine
from ..train import make_adam
from .common import (
    DTYPES,
    PROFILE_COLUMNS,
    add_timing_arguments,
    apply_timing_arguments,
    choice_list,
    describe_setup,
    environment_info,
    fit_loglog_slopes,
    flatten,
    plot_step_scaling,
    positive_int_list,
    profile_columns,
    resolve_device,
    step_medians,
    write_csv,
    write_json,
)
from .timing import time_interleaved

DEFAULT_DIMS: tuple[int, ...] = (256, 512, 784, 1024, 2048, 3072)
VARIANTS: tuple[str, ...] = ("exact", "relative", "floor")
DEFAULT_OUT = Path("bench-results") / "scaling"
CSV_NAME = "scaling.csv"
PLOT_NAME = "scaling.png"
ENV_NAME = "environment.json"

#: columns of ``scaling.csv``, in order
CSV_COLUMNS: tuple[str, ...] = (
    "dim",
    "variant",
    "median_ms",
    "min_ms",
    "max_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "mean_ms",
    "repeats",
    "ratio_to_floor",
    "batch",
    "layers",
    "warmup",
    "optimizer",
    "device",
    "dtype",
    "threads",
    "clock",
    *PROFILE_COLUMNS,
)

#: colour and marker of each variant in the plot
STYLES: dict[str, tuple[str, str]] = {
    "exact": ("C3", "o"),
    "relative": ("C0", "s"),
    "floor": ("C2", "^"),
}


# -- the three variants -----------------------------------------------------------------------


def floor_loss(flow: Flow, x: Tensor) -> Tensor:
    """The batch-mean NLL of ``flow`` **without** the log|det W| of its square affine layers.

    Square affine layers are applied as plain ``F.linear(h, W, b)``; every other layer (the smooth
    leaky ReLUs, any pre-processing) runs its own forward, and its data-dependent log-det counts.
    For an ``FCFlow`` this is −mean(log N(z) + Σ_k Σ_i log σ'(y_k,i)): the exact loss plus
    Σ_k log|det W_k|, so its gradient w.r.t. W_k is the exact one plus W_k⁻ᵀ.
    """
    h = x
    logdet = x.new_zeros(x.shape[0])
    for layer in flow.layers:
        if isinstance(layer, SquareAffine):
            h = F.linear(h, layer.weight, layer.bias)
        else:
            h, ld = layer(h)
            logdet = logdet + ld
    return -(flow.base.log_prob(h) + logdet).mean()


def variant_loss(flow: Flow, variant: str) -> Callable[[Tensor], Tensor]:
    """The loss function of one benchmark variant; sets the flow's gradient mode accordingly."""
    if variant == "floor":
        return lambda x: floor_loss(flow, x)
    if variant in ("exact", "relative"):
        flow.set_gradient(variant)
        return flow.loss
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}.")


COMPILE_MODES: tuple[str, ...] = ("default", "reduce-overhead", "max-autotune")


def compile_loss(loss_fn: Callable[[Tensor], Tensor], mode: str) -> Callable[[Tensor], Tensor]:
    """``torch.compile(loss_fn, mode=mode, fullgraph=True)``: the whole loss and its backward as
    one graph (jacfree's losses trace without a break). ``"reduce-overhead"`` also captures it as
    a CUDA graph on a GPU (static shapes: the benchmarks' batches all have one size)."""
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}."
        )
    # a benchmark compiles one loss per variant, and variants built by one lambda share its code
    # object: allow a graph per variant instead of torch's default of eight per code object
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.7
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    return torch.compile(loss_fn, mode=mode, fullgraph=True)


class TrainingStep:
    """One full training step of a model for one variant, and the reset that precedes it.

    ``step()`` runs ``zero_grad``, the variant's loss on the next pre-generated batch,
    ``backward`` and ``optimizer.step()``. ``reset()`` (untimed) restores the parameters to their
    values at construction.

    The loss is ``loss_fn(x) -> scalar`` if given, else the scaling variant's loss of a
    :class:`~jacfree.flows.Flow` (:func:`variant_loss`). Several steps may train ONE model (e.g.
    the score-matching estimators of ``jacfree bench sm``): build the first one, then pass its
    ``optimizer`` and ``initial`` to the others, so that they share the optimiser state and the
    snapshot that ``reset`` restores instead of holding copies of them.
    """

    def __init__(
        self,
        flow: nn.Module,
        variant: str,
        batches: Sequence[Tensor],
        lr: float,
        *,
        loss_fn: Callable[[Tensor], Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        initial: Sequence[Tensor] | None = None,
        compile: str | None = None,
    ) -> None:
        if not batches:
            raise ValueError("TrainingStep needs at least one batch.")
        self.flow = flow
        self.variant = variant
        if loss_fn is None:
            if not isinstance(flow, Flow):
                raise TypeError(
                    f"TrainingStep of a {type(flow).__name__} needs loss_fn=; only flows have "
                    "the built-in scaling variants."
                )
            loss_fn = variant_loss(flow, variant)
        self.compile = compile
        self.loss_fn = loss_fn if compile is None else compile_loss(loss_fn, compile)
        self.params = [p for p in flow.parameters() if p.requires_grad]
        self.optimizer = make_adam(self.params, lr=lr) if optimizer is None else optimizer
        if initial is None:
            self.initial = [p.detach().clone() for p in self.params]
        else:
            self.initial = list(initial)
            if [t.shape for t in self.initial] != [p.shape for p in self.params]:
                raise ValueError(
                    "initial must hold one tensor per trainable parameter of the model, with the "
                    "same shapes (pass the .initial of a step built on the same model)."
                )
        self.batches = list(batches)
        self.count = 0
        self.last_loss: Tensor | None = None

    @property
    def optimizer_name(self) -> str:
        d = self.optimizer.defaults
        kind = "fused" if d.get("fused") else "foreach" if d.get("foreach") else "for-loop"
        return f"adam-{kind}"

    def step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        x = self.batches[self.count % len(self.batches)]
        self.count += 1
        if self.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()  # outputs of the last replay are done
        loss = self.loss_fn(x)
        loss.backward()
        self.optimizer.step()
        self.last_loss = loss.detach() if self.compile is None else loss.detach().clone()

    @torch.no_grad()
    def reset(self) -> None:
        for p, p0 in zip(self.params, self.initial, strict=True):
            p.copy_(p0)


# -- the benchmark ----------------------------------------------------------------------------


def scaling_benchmark(
    dims: Sequence[int] = DEFAULT_DIMS,
    batch: int = 100,
    layers: int = 2,
    repeats: int | None = None,
    warmup: int = 2,
    variants: Sequence[str] = VARIANTS,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    *,
    lr: float = 1e-4,
    budget: float = 10.0,
    min_repeats: int = 7,
    max_repeats: int = 200,
    n_batches: int = 4,
    clock: str = "wall",
    progress: bool = True,
    compile: str | None = None,
) -> list[dict[str, Any]]:
    """Time one full training step of ``FCFlow(D, layers)`` per variant, for every D in ``dims``.

    Args:
        dims: the dimensions D.
        batch: batch size B.
        layers: number L of square affine layers.
        repeats: timed steps per variant and D; ``None`` fits them in ``budget`` seconds per D
            (at least ``min_repeats``, at most ``max_repeats``).
        warmup: untimed steps per variant and D, run first.
        variants: any of ``"exact"``, ``"relative"``, ``"floor"`` (see the module docs).
        device, dtype: where and in which precision the models and data live.
        seed: seeds the initial weights and the data (standard normal batches).
        lr: Adam learning rate (the parameters are restored before every step anyway).
        budget: seconds of timed steps (all variants together) per D when ``repeats`` is None.
        n_batches: number of pre-generated batches cycled through.
        clock: ``"wall"`` (wall-clock time) or ``"process"`` (CPU time of this process).
        progress: print one line per D to stderr.
        compile: ``torch.compile`` mode of every variant's loss (:func:`compile_loss`), or
            ``None`` for eager steps.

    Returns:
        One dict per (D, variant) with the columns of :data:`CSV_COLUMNS`; times in milliseconds.
        ``ratio_to_floor`` is the median over the floor's median at the same D (``None`` without
        a floor variant).
    """
    variants = tuple(variants)
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not variants:
        raise ValueError(
            f"unknown or no variants {bad or list(variants)}; choose from {', '.join(VARIANTS)}."
        )
    if len(set(variants)) != len(variants):
        raise ValueError(f"variants must be distinct, got {list(variants)}.")
    dims = tuple(int(d) for d in dims)
    if not dims or any(d < 1 for d in dims):
        raise ValueError(f"dims must be positive integers, got {list(dims)}.")
    for name, value in (("batch", batch), ("layers", layers), ("n_batches", n_batches)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    device = resolve_device(device)
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")

    rows: list[dict[str, Any]] = []
    for dim in dims:
        generator = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        base = FCFlow(dim, layers=layers).to(device=device, dtype=dtype)
        batches = [
            torch.randn(batch, dim, generator=generator, dtype=torch.float64).to(device, dtype)
            for _ in range(n_batches)
        ]
        steps = {
            v: TrainingStep(copy.deepcopy(base), v, batches, lr, compile=compile) for v in variants
        }
        del base
        if progress:
            print(f"[scaling] D={dim}: timing {', '.join(variants)} ...", file=sys.stderr)
        stats = time_interleaved(
            {v: s.step for v, s in steps.items()},
            setup={v: s.reset for v, s in steps.items()},
            repeats=repeats,
            warmup=warmup,
            device=device,
            budget=budget,
            min_repeats=min_repeats,
            max_repeats=max_repeats,
            clock=clock,
        )
        for v, s in steps.items():
            if s.last_loss is None or not bool(torch.isfinite(s.last_loss)):
                raise FloatingPointError(
                    f"the {v} variant at D={dim} produced a non-finite loss ({s.last_loss}); "
                    "the timings would be meaningless. Try a smaller --lr or float64."
                )
        floor_median = stats["floor"].median if "floor" in stats else None
        for v in variants:
            summary = stats[v].summary("ms")
            profiled = profile_columns(steps[v].step, device, compile)
            rows.append(
                {
                    "dim": dim,
                    "variant": v,
                    **{k: summary[k] for k in CSV_COLUMNS if k in summary},
                    "repeats": stats[v].n,
                    "ratio_to_floor": None
                    if floor_median is None
                    else stats[v].median / floor_median,
                    "batch": batch,
                    "layers": layers,
                    "warmup": warmup,
                    "optimizer": steps[v].optimizer_name,
                    "device": str(device),
                    "dtype": str(dtype).removeprefix("torch."),
                    "threads": torch.get_num_threads(),
                    "clock": clock,
                    **profiled,
                }
            )
        if progress:
            medians = ", ".join(f"{v} {stats[v].median * 1e3:.2f} ms" for v in variants)
            print(
                f"[scaling] D={dim}: {stats[variants[0]].n} steps each; {medians}", file=sys.stderr
            )
        del steps, stats
        gc.collect()
    return rows


# -- analysis and outputs ---------------------------------------------------------------------


def format_table(rows: Sequence[dict[str, Any]], fit_points: int = 3) -> str:
    """Text table: D, median ms per step for each variant, relative/floor and exact/relative."""
    med = step_medians(rows)
    variants = [v for v in VARIANTS if v in med]
    dims = sorted({int(r["dim"]) for r in rows})
    ratios = [
        (f"{a}/{b}", a, b)
        for a, b in (("relative", "floor"), ("exact", "relative"), ("exact", "floor"))
        if a in med and b in med
    ]
    header = ["D", *(f"{v} ms" for v in variants), *(name for name, _, _ in ratios)]
    lines = []
    for d in dims:
        cells = [str(d)]
        cells += [f"{med[v][d]:.2f}" if d in med[v] else "-" for v in variants]
        cells += [
            f"{med[a][d] / med[b][d]:.2f}" if d in med[a] and d in med[b] else "-"
            for _, a, b in ratios
        ]
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    out = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    out += ["  ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) for cells in lines]
    slopes = fit_loglog_slopes(rows, fit_points)
    if slopes:
        top = sorted(dims)[-max(fit_points, 2) :]
        out.append(
            f"log-log slope over D in {top}: "
            + ", ".join(f"{v} {slopes[v]:.2f}" for v in variants if v in slopes)
        )
    return "\n".join(out)


def plot_scaling(
    rows: Sequence[dict[str, Any]], path: str | Path, fit_points: int = 3, title: str = ""
) -> Path:
    """Log-log plot of ms per step vs D, a line per variant with its fitted slope, and faint
    ∝ D² and ∝ D³ guides through the largest-D point of the floor and the exact lines."""
    return plot_step_scaling(
        rows,
        path,
        variants=VARIANTS,
        styles=STYLES,
        guides=(("floor", 2), ("exact", 3)),
        fit_points=fit_points,
        title=title or "FCFlow: training step time vs D",
    )


def write_outputs(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    config: dict[str, Any] | None = None,
    plot: bool = True,
    fit_points: int = 3,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Write ``scaling.csv``, ``environment.json`` and (unless ``plot=False``) ``scaling.png``."""
    out = Path(out)
    env = {
        "environment": environment_info(device),
        "config": config or {},
        "loglog_slopes": fit_loglog_slopes(rows, fit_points),
    }
    paths = {
        "csv": write_csv(rows, out / CSV_NAME, CSV_COLUMNS),
        "environment": write_json(env, out / ENV_NAME),
    }
    if plot:
        first = rows[0] if rows else {}
        where = describe_setup(first.get("device"), first.get("dtype"), first.get("clock", "wall"))
        title = f"FCFlow, L={first.get('layers')}, B={first.get('batch')}, {where}: training step"
        paths["plot"] = plot_scaling(rows, out / PLOT_NAME, fit_points, title)
    return paths


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jacfree bench scaling``."""
    parser.description = (
        "Time one full training step (zero_grad, forward, backward, Adam step) of FCFlow(D) "
        "for the exact (slogdet), relative and floor (no log-det term) variants, interleaved."
    )
    parser.add_argument(
        "--dims",
        type=positive_int_list,
        nargs="+",
        default=None,
        help="dimensions D, space- or comma-separated (default: "
        + " ".join(map(str, DEFAULT_DIMS))
        + ")",
    )
    parser.add_argument("--batch", type=int, default=100, help="batch size B (default 100)")
    parser.add_argument("--layers", type=int, default=2, help="square affine layers L (default 2)")
    parser.add_argument(
        "--variants",
        type=choice_list(VARIANTS, "variant(s)"),
        nargs="+",
        default=None,
        help="subset of exact relative floor (default: all three)",
    )
    add_timing_arguments(
        parser,
        budget=10.0,
        per="D",
        out=DEFAULT_OUT,
        outputs=f"{CSV_NAME}, {PLOT_NAME}, {ENV_NAME}",
        lr=1e-4,
    )
    parser.add_argument(
        "--fit-points",
        type=int,
        default=3,
        help="fit the log-log slopes over this many largest D (default 3)",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jacfree bench scaling``: benchmark, print the table, write CSV, JSON and plot."""
    dims = flatten(args.dims, DEFAULT_DIMS)
    variants = flatten(args.variants, VARIANTS)
    apply_timing_arguments(args)
    config = {
        "dims": dims,
        "batch": args.batch,
        "layers": args.layers,
        "variants": variants,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "budget_s": args.budget,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "device": args.device,
        "dtype": args.dtype,
        "lr": args.lr,
        "seed": args.seed,
        "clock": args.clock,
        "threads": torch.get_num_threads(),
        "optimizer": "jacfree.train.make_adam",
    }
    rows = scaling_benchmark(
        dims,
        batch=args.batch,
        layers=args.layers,
        repeats=args.repeats,
        warmup=args.warmup,
        variants=variants,
        device=args.device,
        dtype=DTYPES[args.dtype],
        seed=args.seed,
        lr=args.lr,
        budget=args.budget,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        clock=args.clock,
        progress=not args.quiet,
        compile=args.compile,
    )
    where = describe_setup(args.device, args.dtype, args.clock)
    mode = f", compiled ({args.compile})" if args.compile else ""
    print(f"FCFlow(D, layers={args.layers}), B={args.batch}, {where}{mode}: median ms per step")
    print(format_table(rows, args.fit_points))
    paths = write_outputs(
        rows,
        args.out,
        config=config,
        plot=not args.no_plot,
        fit_points=args.fit_points,
        device=args.device,
    )
    for path in paths.values():
        print(f"wrote {path}")
    return 0

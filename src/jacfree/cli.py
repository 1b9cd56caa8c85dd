"""The ``jacfree`` command line: ``train``, ``eval``, ``sample``, ``bench`` and ``data``.

Every run folder holds ``checkpoint.pt`` (last epoch, for ``--resume``), ``best.pt`` (best
validation epoch), ``metrics.jsonl``, ``results.json`` and the plots; ``eval`` and ``sample``
rebuild the model from the spec stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomllib
import torch
from torch import Tensor

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from . import __version__
from .bench import cli as bench_cli
from .data import DatasetUnavailableError, load
from .data import cli as data_cli
from .flows import GRADIENT_MODES
from .models import build_model, data_output, kinds, model_input, model_kind
from .train import (
    GECO,
    NLL,
    CheckpointError,
    ReconstructionWatch,
    distributed,
    evaluate_nll,
    fit,
    load_checkpoint,
)
from .train.fit import BEST, LAST

RUNS = Path("runs")
# Epochs for `jacfree train` when --epochs is not given: small data sets need many passes.
DEFAULT_EPOCHS = {"digits": 1500}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA device is available; use cpu.")
    return dev


def _fresh_folder(base: Path) -> Path:
    """``base`` if it holds no run yet, else ``base-2``, ``base-3``, … (never overwrite)."""
    candidate, k = base, 1
    while (candidate / LAST).exists() or (candidate / BEST).exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


# -- train --------------------------------------------------------------------------------------


def _spec_value(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# Model options of `jacfree train`: each goes into the model spec when given; a model kind reads
# the ones it knows and falls back to its own defaults for the rest.
SPEC_OPTIONS: dict[str, tuple[type, str]] = {
    "layers": (int, "number of layers / blocks of the model"),
    "alpha": (float, "smooth leaky ReLU slope (default 0.3)"),
    "hidden": (int, "hidden width of the model's networks"),
    "objective": (str, "training objective of a score-matching model (e.g. fd_ssm, ssm, dsm)"),
    "eps": (float, "finite-difference step ε (norm of the direction)"),
    "sigma": (float, "noise level σ of denoising score matching"),
    "recon_weight": (float, "λ, the reconstruction weight of self-normalizing layers"),
}


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file of options (keys = long option names, [set] = model options); "
        "options on the command line override it",
    )
    p.add_argument("--data", default="digits", help="dataset name (see `jacfree data list`)")
    p.add_argument("--root", default=None, help="folder holding user-supplied dataset files")
    p.add_argument(
        "--model",
        default="fc",
        help="model kind: "
        + "; ".join(f"{name}: {kind.description}" for name, kind in kinds().items()),
    )
    p.add_argument(
        "--gradient",
        default="relative",
        choices=list(GRADIENT_MODES),
        help="how a flow's log-det gradient is computed (default relative)",
    )
    for name, (kind, help_text) in SPEC_OPTIONS.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    p.add_argument(
        "--set",
        type=_spec_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model option (VALUE parsed as JSON), e.g. --set paper_bias_rule=true",
    )
    p.add_argument(
        "--conditional",
        default=None,
        metavar="label|column:K",
        help="train a conditional flow p(x | c): 'label' conditions on the class labels of the "
        "data (digits, fashion-mnist, mnist-5k, ...), 'column:K' on column K of a table "
        "(models fc, cnn, glow)",
    )
    p.add_argument("--logit-alpha", type=float, default=1e-6, help="logit transform margin")
    p.add_argument(
        "--epochs", type=int, default=None, help="epochs (default: 1500 for digits, else 100)"
    )
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--patience", type=int, default=100, help="early-stopping patience (epochs)")
    p.add_argument("--clip", type=float, default=None, help="clip the gradient norm to this")
    p.add_argument(
        "--warmup-epochs",
        type=float,
        default=0.0,
        help="raise the learning rate linearly from 0 over this many epochs, per batch (0)",
    )
    p.add_argument(
        "--geco-target",
        type=float,
        default=None,
        help="selfnorm: adapt λ by GECO to hold the reconstruction error near this value",
    )
    p.add_argument("--geco-lr", type=float, default=1e-3, help="selfnorm: GECO step of log λ")
    p.add_argument(
        "--recon-warn",
        type=float,
        default=1e-2,
        help="selfnorm: warn when an epoch's relative reconstruction error ‖RWh−h‖²/‖h‖² "
        "exceeds this (default 0.01)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=0, help="seed of the dataset split")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/<data>-...)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads of torch (default: torch's choice; 1 is fastest for small models on a "
        "busy machine)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG plots")


def train_spec(args: argparse.Namespace, ds: Any) -> dict[str, Any]:
    """The model spec of a `jacfree train` run: data facts, the given options, then --set."""
    spec: dict[str, Any] = {
        "kind": args.model,
        "data_shape": list(ds.shape),
        "gradient": args.gradient,
        "levels": ds.levels,
        "logit_alpha": args.logit_alpha,
    }
    spec.update({k: getattr(args, k) for k in SPEC_OPTIONS if getattr(args, k) is not None})
    if args.conditional is not None:
        spec.update(conditional_spec(args.conditional, ds))
    spec.update(dict(args.set))
    return spec


def conditional_spec(option: str, ds: Any) -> dict[str, Any]:
    """The spec entries of ``--conditional label`` / ``--conditional column:K``."""
    if option == "label":
        if not ds.labels:
            raise ValueError(
                f"--conditional label needs class labels, but dataset {ds.name!r} has none; "
                "use a labelled dataset (digits, fashion-mnist, mnist-5k, ...) or, for a "
                "table, --conditional column:K."
            )
        classes = 1 + max(int(labels.max()) for labels in ds.labels.values() if len(labels))
        return {"conditional": "label", "context_classes": classes}
    kind, _, index = option.partition(":")
    if kind != "column" or not index.lstrip("-").isdigit():
        raise ValueError(
            f"--conditional must be 'label' or 'column:K' (K a column index), got {option!r}."
        )
    k, shape = int(index), list(ds.shape)
    if len(shape) != 1 or not -shape[0] <= k < shape[0] or shape[0] < 2:
        raise ValueError(
            f"--conditional column:{k} needs a table of at least 2 columns with column {k}; "
            f"dataset {ds.name!r} has samples of shape {tuple(shape)}."
        )
    return {
        "conditional": f"column:{k % shape[0]}",
        "context_column": k % shape[0],
        "context_features": 1,
        "data_shape": [shape[0] - 1],
    }


def model_data(ds: Any, split: str, model: torch.nn.Module, spec: dict[str, Any]) -> Any:
    """A split as the model takes it: the data, or ``(x, context)`` pairs for a conditional
    flow (the class labels, or the context column taken out of the table)."""
    x = ds.split(split)
    if "context_column" in spec:
        k = spec["context_column"]
        rest = torch.cat([x[:, :k], x[:, k + 1 :]], 1)
        return model_input(rest, model), x[:, k : k + 1]
    if spec.get("conditional") == "label":
        return model_input(x, model), ds.labels[split]
    return model_input(x, model)


def cmd_train(args: argparse.Namespace) -> int:
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}.")
        torch.set_num_threads(args.threads)
    # under torchrun: join the process group (DDP); only rank 0 prints and writes
    cluster = distributed.init_from_env(_device(args.device))
    device = distributed.local_device(_device(args.device))
    kind = model_kind(args.model)
    ds = load(args.data, root=args.root, seed=args.data_seed)
    spec = train_spec(args, ds)
    if args.out is None:
        out = _fresh_folder(RUNS / f"{args.data}-{args.model}-{kind.run_tag(spec)}")
    else:
        out = args.out
    out = distributed.broadcast_object(out, cluster)
    data_info = {"name": args.data, "seed": args.data_seed, "root": args.root}
    torch.manual_seed(args.seed)
    model = build_model(spec).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    if not cluster.is_main:  # another DDP rank: train its shard, rank 0 reports
        _fit(args, model, ds, spec, kind, out, data_info)
        return 0
    print(f"jacfree {__version__}: {ds!r}")
    where = f", {cluster.world} processes (DDP)" if cluster.active else ""
    print(f"model {args.model} ({n_params:,} parameters, {_describe(spec)}{where}) -> {out}")
    t0 = time.perf_counter()
    result = _fit(args, model, ds, spec, kind, out, data_info)
    wall = time.perf_counter() - t0
    test = _report(model, ds, spec, "test")
    epoch_times = [row["epoch_time_s"] for row in result.history]
    summary = {
        "data": data_info,
        "spec": spec,
        "epochs_run": len(result.history),
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "val_metric": f"val_{kind.validation_name(spec)}",
        "best_val": result.best_val,
        "train_time_per_epoch_s": sum(epoch_times) / max(len(epoch_times), 1),
        "wall_time_s": wall,
        "test": test,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"epochs {len(result.history)} (best {result.best_epoch}"
        f"{', early stop' if result.stopped_early else ''}), "
        f"{summary['train_time_per_epoch_s']:.3f} s/epoch training, {wall:.1f} s in all"
    )
    if not args.no_plots:
        _plots(model, ds, spec, result.history, out)
    return 0


def _fit(
    args: argparse.Namespace,
    model: torch.nn.Module,
    ds: Any,
    spec: dict[str, Any],
    kind: Any,
    out: Path,
    data_info: dict[str, Any],
) -> Any:
    return fit(
        model,
        model_data(ds, "train", model, spec),
        model_data(ds, "val", model, spec),
        epochs=DEFAULT_EPOCHS.get(args.data, 100) if args.epochs is None else args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        clip_grad_norm=args.clip,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        out_dir=out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        checkpoint_extra={"spec": spec, "data": data_info},
        objective=kind.objective(spec) if kind.objective else None,
        val_metric=kind.val_metric(spec) if kind.val_metric else None,
        val_name=kind.validation_name(spec),
        callbacks=_callbacks(args, model),
    )


def _callbacks(args: argparse.Namespace, model: torch.nn.Module) -> list[Any]:
    """GECO and the reconstruction watch, for models with self-normalizing layers."""
    if getattr(model, "recon_weight", None) is None or args.gradient != "selfnorm":
        if args.geco_target is not None:
            raise ValueError("--geco-target needs a model trained with --gradient selfnorm.")
        return []
    callbacks: list[Any] = [ReconstructionWatch(args.recon_warn)]
    if args.geco_target is not None:
        callbacks.append(GECO(args.geco_target, lr=args.geco_lr))
    return callbacks


def _describe(spec: dict[str, Any]) -> str:
    """How the run is trained, for the start-up line: its objective if the spec names one."""
    if spec.get("objective"):
        return f"objective={spec['objective']}"
    return f"gradient={spec['gradient']}"


def _report(
    model: torch.nn.Module, ds: Any, spec: dict[str, Any], split: str, seed: int = 0
) -> dict[str, float]:
    """Evaluate, print and return the test metrics: the NLL (nats, and bits/dim for images) on
    the data's original scale when the model has a density, and the model kind's own metrics."""
    kind = model_kind(spec)
    x = model_data(ds, split, model, spec)
    report: dict[str, float] = {}
    if kind.has_density:
        nll = evaluate_nll(model, x, seed=seed)
        # back to the original scale of the data: the dataset's own pre-processing (e.g. the
        # standardisation of a table) has log-det ds.logdet
        # (conditioning on a column of a standardised table: the NLL stays on the loaded scale)
        mean = nll.mean - (0.0 if "context_column" in spec else ds.logdet)
        conditional = f" given {spec['conditional']}" if spec.get("conditional") else ""
        line = f"{split} NLL{conditional} {mean:.3f} ± {nll.stderr:.3f} nats (n={nll.n})"
        report.update(nll_nats=mean, nll_stderr_nats=nll.stderr, n=nll.n)
        if ds.logdet and "context_column" not in spec:
            line += f"; {nll.mean:.3f} on the pre-processed scale"
            report.update(nll_nats_preprocessed=nll.mean)
        if ds.bits_per_dim_applies:
            original = NLL(mean, nll.stderr, nll.n)
            bpd, bpd_se = original.bits_per_dim(ds.dim)
            line += f" = {bpd:.4f} ± {bpd_se:.4f} bits/dim"
            report.update(bits_per_dim=bpd, bits_per_dim_stderr=bpd_se)
        print(line)
    if kind.test_metrics:
        extra = kind.test_metrics(spec)(model, x)
        print(f"{split} " + ", ".join(f"{k} {v:.4f}" for k, v in extra.items()))
        report.update(extra)
    return report


def _plots(model: torch.nn.Module, ds: Any, spec: dict, history: list, out: Path) -> None:
    kind = model_kind(spec)
    try:
        from . import plots

        objective = {
            "relative": "training loss (leaves out Σ log|det W|)",
            "selfnorm": "training loss (no SNF log|det W|; + λ·recon)",
        }.get(kind.run_tag(spec), "training objective")
        plots.loss_curve(
            history, out / "loss.png", title=f"{ds.name}: {kind.run_tag(spec)}", objective=objective
        )
        torch.manual_seed(0)
        if spec.get("conditional"):
            if ds.is_image and "context_classes" in spec:
                per_class = 10
                panels = _class_panels(model, spec, per_class, seed=0)
                plots.image_grids(
                    panels, out / "samples.png", ds.levels, f"{ds.name}: one row per class",
                    cols=per_class,
                )  # fmt: skip
        elif kind.plot is not None:
            kind.plot(model, ds, spec, out)
        elif ds.is_image:
            panels = _sample_panels(model, spec, 64, seed=0, inverse="both")
            plots.image_grids(panels, out / "samples.png", ds.levels, title=f"{ds.name} samples")
        elif ds.dim == 2:
            plots.density_2d(
                model, ds.test, out / "density.png", samples=model.sample(5000), title=ds.name
            )
    except ImportError as err:
        print(f"plots skipped: {err}", file=sys.stderr)


# -- eval / sample ------------------------------------------------------------------------------


def _load_run(path: Path, which: str, device: torch.device) -> tuple[Any, dict, dict]:
    file = path / (BEST if which == "best" else LAST) if path.is_dir() else path
    state = load_checkpoint(file, map_location=device)
    if "spec" not in state:
        raise CheckpointError(
            f"{file} has no model spec; it was not written by `jacfree train`. Rebuild the model "
            "in Python and use model.load_state_dict(payload['model_state'])."
        )
    model = build_model(state["spec"]).to(device)
    try:
        model.load_state_dict(state["model_state"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{file} does not fit the model its spec describes ({err}); it was written by another "
            "version of jacfree or edited. Retrain, or load it with the version that wrote it."
        ) from err
    model.eval()
    return model, state["spec"], state.get("data", {})


def cmd_eval(args: argparse.Namespace) -> int:
    device = _device(args.device)
    model, spec, data = _load_run(args.run, args.which, device)
    name = args.data or data.get("name")
    if not name:
        raise ValueError("the checkpoint does not name its dataset; pass --data NAME.")
    ds = load(name, root=args.root or data.get("root"), seed=data.get("seed", 0))
    for split in args.split:
        _report(model, ds, spec, split, seed=args.seed)
    return 0


def _sample_panels(
    model: torch.nn.Module, spec: dict[str, Any], n: int, *, seed: int, inverse: str
) -> dict[str, Tensor]:
    """Samples from the same latents through the exact inverse and/or, for self-normalizing
    models, through the learned inverses R, keyed by a panel title (with the time per sample)."""
    learned = spec.get("gradient") == "selfnorm"
    if inverse == "learned" and not learned:
        raise ValueError("--inverse learned needs a model trained with --gradient selfnorm.")
    ways = {"exact": False, "learned": True}
    chosen = [inverse] if inverse != "both" else (list(ways) if learned else ["exact"])
    panels: dict[str, Tensor] = {}
    for way in chosen:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        t0 = time.perf_counter()
        x = model.sample(n, generator=gen, approximate=ways[way])
        ms = 1e3 * (time.perf_counter() - t0) / n
        name = "exact inverse" if way == "exact" else "learned inverse R"
        panels[f"{name} ({ms:.2f} ms/sample)"] = data_output(x, spec).cpu()
    return panels


def _class_panels(
    model: torch.nn.Module, spec: dict[str, Any], per_class: int, *, seed: int
) -> dict[str, Tensor]:
    """``per_class`` samples of every class of a label-conditional model, class by class (one
    row per class in a grid of ``per_class`` columns)."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    labels = torch.arange(spec["context_classes"], device=device)
    t0 = time.perf_counter()
    x = model.sample(per_class, generator=gen, context=labels)  # (per_class, classes, ...)
    ms = 1e3 * (time.perf_counter() - t0) / (per_class * len(labels))
    x = x.transpose(0, 1).flatten(0, 1)
    title = f"classes 0..{len(labels) - 1}, one per row ({ms:.2f} ms/sample)"
    return {title: data_output(x, spec).cpu()}


def cmd_sample(args: argparse.Namespace) -> int:
    device = _device(args.device)
    model, spec, data = _load_run(args.run, args.which, device)
    if spec.get("conditional"):
        return _sample_conditional(args, model, spec, data)
    panels = _sample_panels(model, spec, args.n, seed=args.seed, inverse=args.inverse)
    for name in panels:
        print(f"sampled {args.n} through the {name}")
    if len(panels) == 2:
        a, b = panels.values()
        print(f"mean |exact − learned| = {float((a - b).abs().mean()):.4g} (same latents)")
    out = args.out or ((args.run if args.run.is_dir() else args.run.parent) / "samples.png")
    if len(spec["data_shape"]) == 3:
        from . import plots

        plots.image_grids(panels, out, spec.get("levels"), title=f"{args.n} samples")
        print(f"wrote {out}")
    else:
        out = out.with_suffix(".csv")
        out.parent.mkdir(parents=True, exist_ok=True)
        for k, samples in enumerate(panels.values()):
            path = out if k == 0 else out.with_name(out.stem + "-learned.csv")
            lines = [",".join(f"{v:.6g}" for v in row) for row in samples.flatten(1).tolist()]
            path.write_text("\n".join(lines) + "\n")
            print(f"wrote {path}")
    return 0


def _sample_conditional(
    args: argparse.Namespace, model: torch.nn.Module, spec: dict[str, Any], data: dict
) -> int:
    """Class-conditional grid (one row per class, ``-n`` per class), or for a column context a
    CSV of samples at the contexts of the first ``-n`` test rows (the column put back)."""
    out = args.out or ((args.run if args.run.is_dir() else args.run.parent) / "samples.png")
    if "context_classes" in spec:
        panels = _class_panels(model, spec, args.n, seed=args.seed)
        print(f"sampled {args.n} per class for {spec['context_classes']} classes")
        if len(spec["data_shape"]) == 3:
            from . import plots

            plots.image_grids(panels, out, spec.get("levels"), title="", cols=args.n)
            print(f"wrote {out} (one row per class)")
            return 0
        x = next(iter(panels.values())).flatten(1)
        labels = torch.arange(spec["context_classes"]).repeat_interleave(args.n)[:, None]
        rows = torch.cat([labels.to(x.dtype), x], 1)
    else:
        ds = load(data["name"], root=data.get("root"), seed=data.get("seed", 0))
        context = ds.split("test")[: args.n, spec["context_column"]][:, None]
        gen = torch.Generator(device=context.device).manual_seed(args.seed)
        device = next(model.parameters()).device
        x = model.sample(1, generator=gen, context=context.to(device))[0].cpu()
        k = spec["context_column"]
        rows = torch.cat([x[:, :k], context.to(x.dtype), x[:, k:]], 1)
        print(f"sampled {len(rows)} at the column-{k} values of the first test rows")
    out = out.with_suffix(".csv")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(",".join(f"{v:.6g}" for v in row) for row in rows.tolist()) + "\n")
    print(f"wrote {out}")
    return 0


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="run folder (or checkpoint file) from `jacfree train`")
    p.add_argument("--which", choices=["best", "last"], default="best", help="checkpoint to use")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling / dequantisation")


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jacfree",
        description="Train deep density models without paying for their Jacobian terms.",
    )
    parser.add_argument("--version", action="version", version=f"jacfree {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model; writes checkpoints, metrics and plots")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="exact test NLL (nats, bits/dim) with its standard error")
    add_run_arguments(p)
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--root", default=None, help="folder holding user-supplied dataset files")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw samples; writes an image grid (or a CSV)")
    add_run_arguments(p)
    p.add_argument("-n", "--n", type=int, default=64, help="number of samples")
    p.add_argument("--out", type=Path, default=None, help="output file (default: in the run)")
    p.add_argument(
        "--inverse",
        choices=["both", "exact", "learned"],
        default="both",
        help="sample through the exact inverse, the learned inverses R of a selfnorm model, or "
        "both from the same latents, side by side (default: both where R exists)",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bench", help="benchmarks that reproduce the papers' speed claims")
    bench_cli.add_arguments(p)
    p.set_defaults(func=bench_cli.run)

    p = sub.add_parser("data", help="list the datasets and show what one holds")
    data_cli.add_arguments(p)
    p.set_defaults(func=data_cli.run)
    return parser


def config_arguments(path: Path) -> list[str]:
    """Command-line options equivalent to a TOML run config (``jacfree train --config FILE``).

    Keys are the long option names of ``jacfree train`` (``batch-size`` or ``batch_size``);
    ``true`` switches a flag on, ``false`` leaves it off, and a ``[set]`` table gives model
    options (``--set KEY=VALUE``). Options given on the command line override the file.
    """
    try:
        table = tomllib.loads(path.read_text())
    except FileNotFoundError as err:
        raise ValueError(f"no config file at {path}; check the path.") from err
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path} is not valid TOML: {err}") from err
    known = {
        opt
        for action in _train_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--")
    }
    argv: list[str] = []
    for key, value in table.items():
        if key == "set":
            if not isinstance(value, dict):
                raise ValueError(f"{path}: [set] must be a table of model options.")
            argv += [a for k, v in value.items() for a in ("--set", f"{k}={json.dumps(v)}")]
            continue
        opt = "--" + key.replace("_", "-")
        if opt not in known or opt in ("--config", "--help"):
            raise ValueError(f"{path}: unknown option {key!r}; see `jacfree train --help`.")
        if value is True:
            argv.append(opt)
        elif value is not False:
            argv += [opt, str(value)]
    return argv


def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jacfree train", add_help=False)
    add_train_arguments(p)
    return p


def _expand_config(argv: list[str]) -> list[str]:
    """Replace ``--config FILE`` of ``jacfree train`` by the options the file holds."""
    if not argv or argv[0] != "train":
        return argv
    out, rest = [argv[0]], argv[1:]
    from_file: list[str] = []
    while rest:
        a = rest.pop(0)
        if a == "--config" and rest:
            from_file += config_arguments(Path(rest.pop(0)))
        elif a.startswith("--config="):
            from_file += config_arguments(Path(a.split("=", 1)[1]))
        else:
            out.append(a)
    return [out[0], *from_file, *out[1:]]


def main(argv: Sequence[str] | None = None) -> int:
    try:
        argv = _expand_config(list(sys.argv[1:] if argv is None else argv))
    except ValueError as err:
        print(f"jacfree: error: {err}", file=sys.stderr)
        return 2
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        CheckpointError,
        DatasetUnavailableError,
        FileExistsError,
        FloatingPointError,
        ValueError,
        KeyError,
        ImportError,
    ) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jacfree: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

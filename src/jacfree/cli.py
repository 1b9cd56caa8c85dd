"""The ``jacfree`` command line: ``train``, ``eval``, ``sample``, ``bench`` and ``data``.

Every run folder holds ``checkpoint.pt`` (last epoch, for ``--resume``), ``best.pt`` (best
validation epoch), ``metrics.jsonl``, ``results.json`` and the plots; ``eval`` and ``sample``
rebuild the model from the spec stored in the checkpoint.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser as the tomli package
    import tomli as tomllib

from . import __version__
from ._checks import resolve_device
from .bench import cli as bench_cli
from .data import DatasetUnavailableError, load
from .data import cli as data_cli
from .kinds import (
    build_model,
    data_output,
    evaluate,
    kinds,
    model_data,
    model_kind,
    model_samples,
    model_score_fn,
    option,
    option_type_name,
    parse_option,
)
from .train import (
    GECO,
    CheckpointError,
    ReconstructionWatch,
    TrainNLL,
    distributed,
    fit,
    load_checkpoint,
    make_optimizer,
)
from .train.checkpoint import write_json_atomic
from .train.fit import BEST, COMPILE_MODES, LAST, METRICS, RESULTS

RUNS = Path("runs")
# Epochs for `jacfree train` when --epochs is not given: small data sets need many passes.
DEFAULT_EPOCHS = {"digits": 1500}


def _fresh_folder(base: Path) -> Path:
    """``base`` if it holds no run yet, else ``base-2``, ``base-3``, … (never overwrite)."""
    candidate, k = base, 1
    while (candidate / LAST).exists() or (candidate / BEST).exists():
        k += 1
        candidate = base.with_name(f"{base.name}-{k}")
    return candidate


# -- train --------------------------------------------------------------------------------------


def _spec_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _positive(kind: type) -> Any:
    """An argparse type: a finite number > 0 of ``kind``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"
    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


# Model options of `jacfree train` with an option of their own; each goes into the model spec
# when given, and only for a model kind that reads it (`jacfree models` lists them per kind).
SPEC_OPTIONS: dict[str, tuple[Any, str]] = {
    "gradient": (
        str,
        "how a flow's log-det gradient is computed: exact, relative or selfnorm "
        "(default: the model kind's, relative for fc, selfnorm for cnn and glow)",
    ),
    "layers": (int, "number of layers / blocks of the model"),
    "alpha": (float, "smooth leaky ReLU slope (default 0.3)"),
    "hidden": (int, "hidden width of the model's networks"),
    "objective": (str, "training objective of a score-matching model (e.g. fd_ssm, ssm, dsm)"),
    "eps": (float, "finite-difference step ε (norm of the direction)"),
    "sigma": (float, "noise level σ of denoising score matching"),
    "recon_weight": (float, "λ, the reconstruction weight of self-normalizing layers"),
    "logit_alpha": (float, "margin α of the logit transform of quantised data (default 1e-6)"),
}
# Settings a resumed run may change freely; the others only with --allow-changes, and the data
# and model never.
FREE_ON_RESUME = (
    "epochs", "patience", "recon_warn", "device", "threads", "compile", "no_progress",
    "no_plots", "out", "resume", "overwrite", "allow_changes", "config",
)  # fmt: skip
NEVER_ON_RESUME = ("data", "data_seed", "root", "model")
RUN_FILES = (LAST, BEST, METRICS, RESULTS)
# options of `jacfree train` that are arguments of `fit` by the same name
FIT_ARGUMENTS = (
    "batch_size",
    "lr",
    "patience",
    "warmup_epochs",
    "seed",
    "resume",
    "overwrite",
    "allow_changes",
    "compile",
)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The options of `jacfree train` (a --config TOML file takes the same), in four groups."""
    _add_data_model_arguments(p)
    _add_optimisation_arguments(p)
    _add_selfnorm_arguments(p)
    _add_run_arguments(p)


def _add_data_model_arguments(p: argparse.ArgumentParser) -> None:
    """--config, the data, the model kind and its options."""
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default="digits", help="dataset name (see `jacfree data list`)")
    g.add_argument("--root", default=None, help="folder holding user-supplied dataset files")
    g.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file of options (keys = long option names, [set] = model options); "
        "options on the command line override it",
    )
    g.add_argument(
        "--model",
        default="fc",
        help="model kind (see `jacfree models` for each kind's options): "
        + "; ".join(f"{name}: {kind.description}" for name, kind in kinds().items()),
    )
    for name, (kind, help_text) in SPEC_OPTIONS.items():
        g.add_argument("--" + name.replace("_", "-"), type=kind, default=None, help=help_text)
    g.add_argument(
        "--set",
        type=_spec_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any other model option of the chosen kind (see `jacfree models`), typed by the "
        "option, e.g. --set paper_bias_rule=true",
    )
    g.add_argument(
        "--conditional",
        default=None,
        metavar="label|column:K",
        help="train a conditional flow p(x | c): 'label' conditions on the class labels of the "
        "data (digits, fashion-mnist, mnist-5k, ...), 'column:K' on column K of a table "
        "(models fc, cnn, glow)",
    )


def _add_optimisation_arguments(p: argparse.ArgumentParser) -> None:
    """Epochs, batches, learning rate, early stopping, clipping, warm-up."""
    g = p.add_argument_group("optimisation")
    g.add_argument(
        "--epochs",
        type=_positive(int),
        default=None,
        help="epochs (default: 1500 for digits, else 100)",
    )
    g.add_argument("--batch-size", type=_positive(int), default=100, help="mini-batch size")
    g.add_argument("--lr", type=_positive(float), default=1e-3, help="Adam learning rate")
    g.add_argument(
        "--patience", type=_positive(int), default=100, help="early-stopping patience (epochs)"
    )
    g.add_argument(
        "--clip", type=_positive(float), default=None, help="clip the gradient norm to this"
    )
    g.add_argument(
        "--optimizer",
        choices=("default", "adam", "relative-adam"),
        default="default",
        help="default: relative-adam for fully connected flows in relative mode, adam otherwise; "
        "relative-adam: RelativeAdam, Adam's statistics in the relative gradient's "
        "multiplicative coordinates; adam: plain Adam",
    )
    g.add_argument(
        "--warmup-epochs",
        type=_non_negative,
        default=0.0,
        help="raise the learning rate linearly from 0 over this many epochs, per batch",
    )


def _add_selfnorm_arguments(p: argparse.ArgumentParser) -> None:
    """GECO and the reconstruction watch of selfnorm models."""
    g = p.add_argument_group("self-normalizing flows")
    g.add_argument(
        "--geco-lr", type=_positive(float), default=1e-3, help="selfnorm: GECO step of log λ"
    )
    g.add_argument(
        "--geco-target",
        type=_non_negative,
        default=None,
        help="selfnorm: adapt λ by GECO to hold the reconstruction error near this value",
    )
    g.add_argument(
        "--recon-warn",
        type=_positive(float),
        default=1e-2,
        help="selfnorm: warn when an epoch's relative reconstruction error ‖RWh−h‖²/‖h‖² "
        "exceeds this",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Seeds, the run folder, resuming, device, compilation, output."""
    g = p.add_argument_group("run")
    g.add_argument("--seed", type=int, default=0, help="seed of initialisation, shuffling, noise")
    g.add_argument("--data-seed", type=int, default=0, help="seed of the dataset split")
    g.add_argument("--out", type=Path, default=None, help="run folder (default runs/<data>-...)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out")
    g.add_argument(
        "--allow-changes",
        action="store_true",
        help="with --resume: continue although settings other than --epochs/--patience changed "
        "(learning rate, batch size, ...; no longer an exact continuation)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace the run in --out")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if any)")
    g.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=None,
        choices=list(COMPILE_MODES),
        help="compile the training objective with torch.compile in this mode (default mode "
        "when given without one)",
    )
    g.add_argument(
        "--threads",
        type=_positive(int),
        default=None,
        help="CPU threads of torch (default: torch's choice; use 1 per process on a shared or "
        "busy machine)",
    )
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    g.add_argument("--no-plots", action="store_true", help="do not write PNG plots")


def _given_options(args: argparse.Namespace) -> dict[str, Any]:
    """The model options given on the command line (their own options, then --set)."""
    given = {k: getattr(args, k) for k in SPEC_OPTIONS if getattr(args, k) is not None}
    for key, value in args.set:
        if key in given:
            raise ValueError(f"option {key} is given twice (as --{key} and in --set).")
        given[key] = value
    return given


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-") if key in SPEC_OPTIONS else f"--set {key}=..."


def train_spec(args: argparse.Namespace, ds: Any) -> dict[str, Any]:
    """The model spec of a `jacfree train` run: data facts and the given options, each checked
    against the options the model kind reads and converted to its type."""
    kind = model_kind(args.model)
    spec: dict[str, Any] = {"kind": args.model, "data_shape": list(ds.shape), "levels": ds.levels}
    given = _given_options(args)
    if args.conditional is not None:  # data facts of the context, not options of the kind
        spec.update(conditional_spec(args.conditional, ds))
    if kind.options is None:  # a kind that declares no options: accept them unchecked
        spec.update(given)
        return spec
    for key, value in given.items():
        if key not in kind.options:
            valid = ", ".join(sorted(kind.options)) or "none"
            raise ValueError(
                f"{_flag(key)} does not apply to model kind {args.model!r}, which would ignore "
                f"it; its options are: {valid} (see `jacfree models`). Drop the option or choose "
                "a model kind that has it."
            )
        spec[key] = parse_option(key, value, kind.options[key])
    return spec


def train_settings(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    """Every setting of a `jacfree train` run (stored in the checkpoint and results.json)."""
    settings = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in vars(args).items()
        if k not in ("func", "command", "set", *SPEC_OPTIONS)
    }
    settings["epochs"] = _epochs(args)
    settings["spec"] = spec
    return settings


def _epochs(args: argparse.Namespace) -> int:
    return DEFAULT_EPOCHS.get(args.data, 100) if args.epochs is None else args.epochs


def _check_resume(out: Path, settings: dict[str, Any], allow_changes: bool) -> None:
    """Refuse to resume a run with another dataset or model, and name every changed setting."""
    saved = load_checkpoint(out / LAST).get("settings")
    if saved is None:
        return  # written by an older jacfree: fit still checks the data and its own settings
    old_spec, new_spec = saved.get("spec", {}), settings["spec"]
    never = {k: (saved.get(k), settings.get(k)) for k in NEVER_ON_RESUME}
    never.update({f"spec.{k}": (old_spec.get(k), new_spec.get(k)) for k in {*old_spec, *new_spec}})
    never = {k: v for k, v in never.items() if v[0] != v[1]}
    if never:
        details = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in sorted(never.items()))
        raise CheckpointError(
            f"cannot resume {out}: the data or the model differ from the saved run ({details}). "
            "Resume with the saved data and model options, or start a new run (another --out, "
            "or --overwrite)."
        )
    changed = {
        k: (saved.get(k), v)
        for k, v in settings.items()
        if k not in (*FREE_ON_RESUME, *NEVER_ON_RESUME, "spec") and saved.get(k) != v
    }
    if changed and not allow_changes:
        details = "; ".join(
            f"--{k.replace('_', '-')}: saved {a!r}, now {b!r}"
            for k, (a, b) in sorted(changed.items())
        )
        raise CheckpointError(
            f"cannot resume {out} exactly: settings differ ({details}). Resume with the saved "
            "settings (only --epochs and --patience may change), or pass --allow-changes to "
            "continue with the new ones anyway."
        )


def _clear_run(out: Path) -> None:
    """Remove what a previous run wrote into ``out`` (--overwrite): its checkpoints, metrics,
    results and plots, so that nothing of it is mistaken for the new run's."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for plot in out.glob("*.png"):
        plot.unlink()


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


def cmd_train(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.resume and args.out is None:
        raise ValueError("--resume needs the run folder: pass --out RUN_FOLDER.")
    if args.allow_changes and not args.resume:
        raise ValueError("--allow-changes only applies with --resume.")
    # under torchrun: join the process group (DDP); only rank 0 prints and writes
    cluster = distributed.init_from_env(resolve_device(args.device))
    device = distributed.local_device(resolve_device(args.device))
    kind = model_kind(args.model)
    ds = load(args.data, root=args.root, seed=args.data_seed)
    spec = train_spec(args, ds)
    data_info = {"name": args.data, "seed": args.data_seed, "root": args.root}
    torch.manual_seed(args.seed)
    model = build_model(spec).to(device)  # fills in the kind's defaults (e.g. the objective)
    if kind.options is not None and "gradient" in kind.options:
        spec["gradient"] = getattr(model, "gradient", None)
    if args.geco_target is not None and option(spec, "gradient") != "selfnorm":
        raise ValueError("--geco-target needs a model trained with --gradient selfnorm.")
    if args.out is None:
        out = _fresh_folder(RUNS / f"{args.data}-{args.model}-{kind.run_tag(spec)}")
    else:
        out = args.out
    out = distributed.broadcast_object(out, cluster)
    settings = train_settings(args, spec)
    settings["out"] = str(out)
    if args.resume:
        _check_resume(out, settings, args.allow_changes)
    elif args.overwrite and cluster.is_main and (out / LAST).exists():
        _clear_run(out)
    n_params = sum(p.numel() for p in model.parameters())
    if not cluster.is_main:  # another DDP rank: train its shard, rank 0 reports
        _fit(args, model, ds, spec, kind, out, data_info, settings)
        return 0
    print(f"jacfree {__version__}: {ds!r}")
    where = f", {cluster.world} processes (DDP)" if cluster.active else ""
    print(f"model {args.model} ({n_params:,} parameters, {_describe(spec)}{where}) -> {out}")
    t0 = time.perf_counter()
    result = _fit(args, model, ds, spec, kind, out, data_info, settings)
    wall = time.perf_counter() - t0
    test = _report(model, ds, spec, "test")
    summary = {
        "data": data_info,
        "spec": spec,
        "settings": settings,
        **result.summary(),
        "wall_time_s": wall,
        "test": test,
    }
    write_json_atomic(out / RESULTS, summary)
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
    settings: dict[str, Any],
) -> Any:
    train = model_data(ds, "train", model, spec)
    optimizer = None  # fit's default: RelativeAdam for relative fully connected flows, else Adam
    if args.optimizer != "default":
        optimizer = make_optimizer(args.optimizer, model, args.lr)
    return fit(
        model,
        train,
        model_data(ds, "val", model, spec),
        epochs=_epochs(args),
        optimizer=optimizer,
        clip_grad_norm=args.clip,
        out_dir=out,
        progress=not args.no_progress,
        checkpoint_extra={"spec": spec, "data": data_info, "settings": settings},
        callbacks=_callbacks(args, model, spec, kind, train),
        **kind.fit_options(spec),
        **{name: getattr(args, name) for name in FIT_ARGUMENTS},
    )


def _callbacks(
    args: argparse.Namespace, model: torch.nn.Module, spec: dict, kind: Any, train: Tensor
) -> list[Any]:
    """The exact NLL of a training subset (comparable with the validation NLL) for density
    models validated by their NLL; GECO and the reconstruction watch for selfnorm models."""
    callbacks: list[Any] = []
    if kind.has_density and kind.validation_name(spec) == "nll":
        callbacks.append(TrainNLL(train))
    if getattr(model, "recon_weight", None) is not None and option(spec, "gradient") == "selfnorm":
        callbacks.append(ReconstructionWatch(args.recon_warn))
        if args.geco_target is not None:
            callbacks.append(GECO(args.geco_target, lr=args.geco_lr))
    return callbacks


def _describe(spec: dict[str, Any]) -> str:
    """How the run is trained, for the start-up line: its objective if the spec names one."""
    if option(spec, "objective"):
        return f"objective={spec['objective']}"
    return f"gradient={option(spec, 'gradient')}"


def _report(
    model: torch.nn.Module, ds: Any, spec: dict[str, Any], split: str, seed: int = 0
) -> dict[str, float]:
    """Evaluate (:func:`jacfree.evaluate`), print and return the metrics of a split."""
    result = evaluate(model, ds, split, spec=spec, seed=seed)
    print(result)
    return result.as_dict()


def _plots(model: torch.nn.Module, ds: Any, spec: dict, history: list, out: Path) -> None:
    kind = model_kind(spec)
    try:
        from . import plots

        objective = {
            "relative": "relative-gradient training loss: not the NLL (Σ log|det W| left out)",
            "selfnorm": "selfnorm training loss: not the NLL (no log|det W|; + λ·recon)",
        }.get(kind.run_tag(spec), f"training objective ({kind.run_tag(spec)})")
        unit = "nats per example" if kind.has_density else "per example"
        plots.loss_curve(
            history,
            out / "loss.png",
            title=f"{ds.name}: {args_tag(spec)}",
            objective=objective,
            unit=unit,
        )
        torch.manual_seed(0)
        if option(spec, "conditional"):
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


def args_tag(spec: dict[str, Any]) -> str:
    """``<kind>, <objective or gradient mode>`` for plot titles."""
    return f"{spec['kind']}, {model_kind(spec).run_tag(spec)}"


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
    model, spec, data = _load_run_arguments(args)
    name = args.data or data.get("name")
    if not name:
        raise ValueError("the checkpoint does not name its dataset; pass --data NAME.")
    ds = load(name, root=args.root or data.get("root"), seed=data.get("seed", 0))
    if list(ds.shape) != list(spec["data_shape"]):
        raise ValueError(
            f"{args.run} was trained on data of per-sample shape {tuple(spec['data_shape'])} "
            f"({data.get('name', 'its dataset')}), but {name} has shape {tuple(ds.shape)}; "
            "evaluate it on data of the same shape (e.g. --data "
            f"{data.get('name', 'NAME')})."
        )
    for split in args.split:
        _report(model, ds, spec, split, seed=args.seed)
    run_dir = args.run if args.run.is_dir() else args.run.parent
    if args.ood:
        from .scorematching.ood import ood_report

        ood_report(
            *model_score_fn(model, spec),
            ds,
            args.ood,
            n=args.ood_n,
            statistic=args.ood_statistic,
            seed=args.seed,
            out=run_dir,
            root=args.root,
        )
    if args.frechet:
        from .scorematching.frechet import frechet_report

        if not ds.is_image:
            raise ValueError("--frechet needs an image dataset (a classifier is trained on it).")
        samples = model_samples(model, spec, args.frechet, seed=args.seed)
        r = frechet_report(samples.cpu(), ds, draws=args.frechet_draws)
        print(
            f"classifier-feature Fréchet distance to the {ds.name} test split: "
            f"{r['cfd']:.3f} ± {r['cfd_stderr']:.3f} ({args.frechet_draws} draws of "
            f"{int(r['cfd_samples_per_draw'])} samples); real training images, same size: "
            f"{r['cfd_real']:.3f} ± {r['cfd_real_stderr']:.3f}; classifier test accuracy "
            f"{r['classifier_test_accuracy']:.4f}"
        )
    return 0


def _sample_panels(
    model: torch.nn.Module, spec: dict[str, Any], n: int, *, seed: int, inverse: str
) -> dict[str, Tensor]:
    """Samples from the same latents through the exact inverse and/or, for self-normalizing
    models, through the learned inverses R, keyed by a panel title (with the time per sample).
    Models without an exact sampler (energies) are named by how they sample (Langevin)."""
    learned = option(spec, "gradient") == "selfnorm"
    sampler = model_kind(spec).sampler
    if inverse == "learned" and not learned:
        raise ValueError("--inverse learned needs a model trained with --gradient selfnorm.")
    ways: dict[str, dict[str, bool]] = {"exact": {}, "learned": {"approximate": True}}
    chosen = [inverse] if inverse != "both" else (list(ways) if learned else ["exact"])
    panels: dict[str, Tensor] = {}
    for way in chosen:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        t0 = time.perf_counter()
        x = model.sample(n, generator=gen, **ways[way])
        ms = 1e3 * (time.perf_counter() - t0) / n
        name = sampler if way == "exact" else "through the learned inverse R"
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
    model, spec, data = _load_run_arguments(args)
    if option(spec, "conditional"):
        return _sample_conditional(args, model, spec, data)
    panels = _sample_panels(model, spec, args.n, seed=args.seed, inverse=args.inverse)
    for name in panels:
        print(f"sampled {args.n} {name}")
    if len(panels) == 2:
        a, b = panels.values()
        print(f"mean |exact − learned| = {float((a - b).abs().mean()):.4g} (same latents)")
    # never the training run's own samples.png: a name that says what was drawn
    folder = args.run if args.run.is_dir() else args.run.parent
    out = args.out or folder / f"sampled-{args.which}-n{args.n}-seed{args.seed}.png"
    if len(spec["data_shape"]) == 3:
        from . import plots

        plots.image_grids(panels, out, option(spec, "levels"), title=f"{args.n} samples")
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

            plots.image_grids(panels, out, option(spec, "levels"), title="", cols=args.n)
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
    p.add_argument(
        "--threads",
        type=_positive(int),
        default=None,
        help="CPU threads of torch (default: torch's choice)",
    )


def _load_run_arguments(
    args: argparse.Namespace,
) -> tuple[torch.nn.Module, dict[str, Any], dict[str, Any]]:
    """Apply ``--threads`` and ``--device``, then load the model of ``args.run``."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return _load_run(args.run, args.which, resolve_device(args.device))


# -- models -------------------------------------------------------------------------------------


def cmd_models(args: argparse.Namespace) -> int:
    """List the model kinds of `jacfree train --model`, with their options and types."""
    for name, kind in kinds().items():
        if args.kind and name not in args.kind:
            continue
        print(f"{name}: {kind.description}")
        density = "exact NLL" if kind.has_density else "no normalised density"
        print(f"  {density}; samples {kind.sampler}")
        if kind.options is None:
            print("  options: not declared (any --set KEY=VALUE is passed on)")
        else:
            opts = ", ".join(
                f"{k} ({option_type_name(t)})" for k, t in sorted(kind.options.items())
            )
            print(f"  options: {opts}")
        print()
    print(
        "Options with an option of their own: "
        + ", ".join("--" + k.replace("_", "-") for k in SPEC_OPTIONS)
        + "; the others: --set KEY=VALUE."
    )
    return 0


# -- entry point --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jacfree",
        description="Train deep density models without paying for their Jacobian terms.",
    )
    parser.add_argument("--version", action="version", version=f"jacfree {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model; writes checkpoints, metrics and plots",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="exact test NLL (nats, bits/dim) with its standard error")
    add_run_arguments(p)
    p.add_argument("--split", nargs="+", default=["test"], choices=["train", "val", "test"])
    p.add_argument("--data", default=None, help="dataset (default: the one it was trained on)")
    p.add_argument("--root", default=None, help="folder holding user-supplied dataset files")
    p.add_argument(
        "--ood",
        nargs="+",
        default=None,
        metavar="DATASET",
        help="AUROC of the model's energy or -log p, its test split vs each DATASET's (same "
        "image format) or noise-uniform / noise-gaussian; ROC curves in ood.png",
    )
    p.add_argument("--ood-n", type=_positive(int), default=2000, help="inputs per side for --ood")
    p.add_argument(
        "--ood-statistic",
        choices=["score", "deviation"],
        default="score",
        help="the score itself, or |score - its mean on training inputs| (the FD-SM reference)",
    )
    p.add_argument(
        "--frechet",
        type=_positive(int),
        default=None,
        metavar="N",
        help="draw N samples and report their Fréchet distance to the test split in the "
        "features of a small classifier trained once on the dataset (cached)",
    )
    p.add_argument(
        "--frechet-draws", type=_positive(int), default=5, help="groups of --frechet samples"
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="draw samples; writes an image grid (or a CSV)")
    add_run_arguments(p)
    p.add_argument("-n", "--n", type=_positive(int), default=64, help="number of samples")
    p.add_argument("--out", type=Path, default=None, help="output file (default: in the run)")
    p.add_argument(
        "--inverse",
        choices=["both", "exact", "learned"],
        default="both",
        help="sample through the exact inverse, the learned inverses R of a selfnorm model, or "
        "both from the same latents, side by side (default: both where R exists)",
    )
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("models", help="list the model kinds with their options")
    p.add_argument("kind", nargs="*", help="only these kinds")
    p.set_defaults(func=cmd_models)

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
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # --help, or a usage error argparse has printed
        return int(done.code or 0)
    try:
        return int(args.func(args))
    except KeyboardInterrupt as err:
        print(f"\njacfree: {err.args[0] if err.args else 'interrupted.'}", file=sys.stderr)
        return 130
    except (
        CheckpointError,
        DatasetUnavailableError,
        FileExistsError,
        FloatingPointError,
        OSError,
        TypeError,
        ValueError,
        KeyError,
        ImportError,
    ) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"jacfree: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

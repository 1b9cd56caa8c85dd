"""``fit``: the training loop shared by every model in jacfree.

Adam on mini-batches, an exact validation metric after every epoch (by default the exact NLL from
``model.log_prob``), early stopping that keeps the **best** parameters (the relative-gradient
reference code overwrote them), a tqdm progress bar with the live loss and throughput, a JSONL
metrics file, and checkpoints from which a resumed run continues exactly as an uninterrupted one
(same shuffling, same dequantisation noise, same optimiser state, same callback state).

Models may report per-step quantities through ``model.training_diagnostics() -> {name: tensor}``
(self-normalizing flows report their reconstruction error ``recon``); their batch-weighted epoch
means appear in the metrics as ``train_<name>``. Callbacks (:class:`Callback`) see every step and
every epoch, e.g. :class:`jacfree.train.GECO`, which adapts the reconstruction weight λ.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._checks import all_finite, check_positive_int
from . import distributed
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .evaluate import evaluate_nll
from .optim import make_adam

Objective = Callable[[nn.Module, Tensor], Tensor]
ValMetric = Callable[[nn.Module, Tensor], float]

LAST = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"


class Callback(Protocol):
    """Hooks called by :func:`fit`; the state is checkpointed so a resumed run is exact."""

    def on_step(self, model: nn.Module, loss: float, diagnostics: dict[str, Tensor]) -> None:
        """After every optimiser step, with the step's loss value and model diagnostics."""

    def on_epoch_end(self, model: nn.Module, row: dict[str, Any]) -> None:
        """After every epoch; may add entries to the epoch's metrics ``row``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class FitResult:
    """What :func:`fit` returns.

    Attributes:
        history: one dict of metrics per epoch (also written to ``metrics.jsonl``).
        best_epoch: epoch (1-based) with the lowest validation metric, ``None`` without ``val``.
        best_val: that metric's value.
        stopped_early: whether early stopping ended the run.
        out_dir: the folder holding checkpoints and metrics, if any.
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    out_dir: Path | None = None


def _validate_data(model: nn.Module, data: Tensor | tuple[Tensor, Tensor], name: str) -> None:
    """Check a dataset once, before epoch 1: the training step itself reads no value on the host.

    Uses the model's own ``validate_data`` (flows: shape, dtype, finite values, pre-processing
    range; with ``(x, context)`` pairs also the contexts) if it has one, else a finite-value scan
    of floating-point data.
    """
    check = getattr(model, "validate_data", None)
    if isinstance(data, tuple):
        x, context = data
        if check is not None:
            for chunk, c in zip(x.split(10_000), context.split(10_000), strict=True):
                check(chunk, name, context=c)
            return
        data = x
    if check is not None:
        for chunk in data.split(10_000):
            check(chunk, name)
    elif data.is_floating_point() and not all_finite(data):
        bad = int((~torch.isfinite(data)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); clean or impute the data before training."
        )


def _default_objective(model: nn.Module, x: Tensor | tuple[Tensor, Tensor]) -> Tensor:
    if isinstance(x, tuple):  # (x, context) pairs: a conditional flow
        return model.loss(x[0], context=x[1])
    return model.loss(x)


def _default_val_metric(model: nn.Module, x: Tensor) -> float:
    return evaluate_nll(model, x).mean


def fit(
    model: nn.Module,
    train: Tensor,
    val: Tensor | None = None,
    *,
    epochs: int = 100,
    batch_size: int = 100,
    lr: float = 1e-3,
    patience: int | None = 30,
    objective: Objective | None = None,
    val_metric: ValMetric | None = None,
    val_name: str = "nll",
    optimizer: torch.optim.Optimizer | None = None,
    clip_grad_norm: float | None = None,
    warmup_epochs: float = 0.0,
    seed: int = 0,
    out_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    restore_best: bool = True,
    progress: bool = True,
    checkpoint_extra: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` on the rows of ``train``.

    Args:
        model: any module; by default trained on ``model.loss(x)`` and validated with the exact
            NLL from ``model.log_prob`` (in eval mode, under ``no_grad``).
        train, val: tensors with samples first (kept where they are; batches move to the
            model's device), or ``(x, context)`` pairs of such tensors for a conditional flow
            (then the batches given to ``objective`` and ``val_metric`` are pairs too, and the
            defaults use ``model.loss(x, context=c)`` and ``model.log_prob(x, context=c)``).
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: mini-batch size; the last, smaller batch of an epoch is kept.
        lr: Adam learning rate (ignored if ``optimizer`` is given).
        patience: stop after this many epochs without a better validation metric
            (``None`` disables early stopping).
        objective: ``objective(model, x) -> scalar loss``; default ``model.loss(x)``.
        val_metric: ``val_metric(model, val) -> float`` (lower is better); default exact NLL.
        val_name: name of the validation metric in the history (``val_<name>``).
        optimizer: an optimizer over ``model``'s parameters; default fused Adam.
        clip_grad_norm: clip the global gradient norm to this value.
        warmup_epochs: raise the learning rate linearly from 0 to its value over this many
            epochs, batch by batch: step s (from 1) uses ``lr · min(1, s / (warmup_epochs ·
            batches per epoch))`` (Keller et al.'s code warms up over 10 epochs). 0: no warm-up.
        seed: seeds the shuffling and the global torch RNG (dequantisation noise).
        out_dir: folder for ``checkpoint.pt`` (last epoch, for resuming), ``best.pt`` (best
            validation epoch) and ``metrics.jsonl``. ``None`` keeps everything in memory.
        resume: continue the run saved in ``out_dir/checkpoint.pt``.
        overwrite: allow starting a new run in an ``out_dir`` that already holds one.
        restore_best: load the best parameters into ``model`` at the end.
        progress: show a tqdm progress bar.
        checkpoint_extra: extra entries stored in every checkpoint (e.g. a model spec).
        callbacks: objects with ``on_step``, ``on_epoch_end``, ``state_dict`` and
            ``load_state_dict`` (see :class:`Callback`), called in order.

    Raises:
        FloatingPointError: the training loss became NaN/Inf; the last good checkpoint is kept.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
    """
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    if patience is not None:
        check_positive_int(patience, "patience")
    if not (isinstance(warmup_epochs, int | float) and math.isfinite(warmup_epochs)) or (
        warmup_epochs < 0
    ):
        raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs!r}.")
    pairs = isinstance(train, tuple)
    if pairs:
        _check_pairs(train, "train")
        if val is not None:
            _check_pairs(val, "val")
    elif not isinstance(train, Tensor) or train.dim() < 2 or len(train) == 0:
        raise ValueError(
            "train must be a non-empty tensor with samples first, shape (n, ...); "
            f"got {type(train).__name__} {tuple(getattr(train, 'shape', ()))}."
        )
    _validate_data(model, train, "train")
    if val is not None:
        _validate_data(model, val, "val")
    objective = objective or _default_objective
    val_metric = val_metric or _default_val_metric
    val_key = f"val_{val_name}"
    out = Path(out_dir) if out_dir is not None else None
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    opt = optimizer or make_adam(model.parameters(), lr)
    for group in opt.param_groups:  # the learning rate the warm-up rises to
        group.setdefault("initial_lr", group["lr"])
    shuffle = torch.Generator().manual_seed(seed)
    cluster = distributed.current()
    config = {
        "batch_size": batch_size,
        "seed": seed,
        "n_train": len(train[0]) if pairs else len(train),
        "world_size": cluster.world,
        "warmup_epochs": warmup_epochs,
    }
    if cluster.active and batch_size < cluster.world:
        raise ValueError(
            f"batch_size {batch_size} is smaller than the {cluster.world} processes; the "
            "global batch is split between them: use batch_size >= the number of processes."
        )
    writes = out is not None and cluster.is_main

    result = FitResult(out_dir=out)
    best_state: dict[str, Tensor] | None = None
    bad_epochs = 0
    start = 0
    if out is not None and resume:
        state = load_checkpoint(out / LAST, map_location=device)
        _check_resumable(state, config, out / LAST)
        model.load_state_dict(state["model_state"])
        opt.load_state_dict(state["optimizer_state"])
        if optimizer is None:
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] = lr
        rng = state["rng"]["ranks"][cluster.rank] if cluster.active else state["rng"]
        torch.set_rng_state(rng["torch"])
        if device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        shuffle.set_state(state["rng"]["shuffle"])
        start = int(state["epoch"])
        result.history = list(state["history"])
        result.best_epoch = state["best_epoch"]
        result.best_val = state["best_val"]
        best_state = state.get("best_state")
        bad_epochs = int(state["bad_epochs"])
        saved_callbacks = state.get("callbacks", [])
        if len(saved_callbacks) != len(callbacks):
            raise CheckpointError(
                f"cannot resume {out / LAST} exactly: it was saved with {len(saved_callbacks)} "
                f"callback(s), this run has {len(callbacks)}; pass the same callbacks."
            )
        for cb, cb_state in zip(callbacks, saved_callbacks, strict=True):
            cb.load_state_dict(cb_state)
    else:
        if out is not None and (out / LAST).exists() and not overwrite:
            raise FileExistsError(
                f"{out} already holds a training run ({LAST}); pass resume=True "
                "(CLI: --resume) to continue it, overwrite=True (CLI: --overwrite) to replace "
                "it, or choose another folder."
            )
        torch.manual_seed(seed + cluster.rank)  # each rank draws its own noise

    step_model: Callable[[Tensor], Tensor]
    if cluster.active:
        step_model = distributed.data_parallel(model, objective, device)
    else:
        step_model = lambda x: objective(model, x)  # noqa: E731

    diagnose = getattr(model, "training_diagnostics", None)
    n_train = len(train[0]) if pairs else len(train)
    batches_per_epoch = _global_batches(n_train, batch_size, cluster.world)
    steps_per_epoch = batches_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=start * steps_per_epoch,
        unit="step",
        desc="train",
        disable=not (progress and cluster.is_main),
        dynamic_ncols=True,
    )
    try:
        for epoch in range(start + 1, epochs + 1):
            if patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
            model.train()
            t0 = time.perf_counter()
            total, count = 0.0, 0
            diag_sums: dict[str, Tensor] = {}
            order = torch.randperm(n_train, generator=shuffle)
            for i, idx in enumerate(order.split(batch_size)[:batches_per_epoch]):
                if warmup_steps:
                    step = (epoch - 1) * steps_per_epoch + i + 1
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * min(1.0, step / warmup_steps)
                mine = idx[cluster.rank :: cluster.world]
                if pairs:
                    x = tuple(t[mine].to(device, non_blocking=True) for t in train)
                else:
                    x = train[mine].to(device, non_blocking=True)
                opt.zero_grad(set_to_none=True)
                loss = step_model(x)
                # this rank's share of the global batch; the global loss and diagnostics are the
                # share-weighted sums over ranks (one all-reduce; nothing to do without DDP)
                weight = len(mine) / len(idx)
                diagnostics = diagnose() if diagnose is not None else {}
                value, *diag = distributed.sum_tensors(
                    [t.detach() * weight for t in (loss, *diagnostics.values())], cluster
                )
                value = float(value)
                diagnostics = dict(zip(diagnostics, diag, strict=True))
                if cluster.active:  # DDP averages gradients over ranks: scale to the share
                    loss = loss * (weight * cluster.world)
                if not math.isfinite(value):
                    where = f"; the last good checkpoint is kept in {out}" if out else ""
                    raise FloatingPointError(
                        f"training loss became {value} at epoch {epoch}{where}. Lower the "
                        "learning rate, clip gradients (clip_grad_norm / --clip), or check the "
                        "data for extreme values."
                    )
                loss.backward()
                if clip_grad_norm is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
                opt.step()
                for k, v in diagnostics.items():
                    diag_sums[k] = diag_sums.get(k, 0) + v * len(idx)
                for cb in callbacks:
                    cb.on_step(model, value, diagnostics)
                total += value * len(idx)
                count += len(idx)
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{value:.4g}", refresh=False)
            train_time = time.perf_counter() - t0
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": total / count,
                "epoch_time_s": train_time,
                "samples_per_s": count / train_time,
                "lr": opt.param_groups[0]["lr"],
                **{f"train_{k}": float(v) / count for k, v in diag_sums.items()},
            }
            for cb in callbacks:
                cb.on_epoch_end(model, row)
            if val is not None:
                t1 = time.perf_counter()
                score = float(val_metric(model, val))
                row[val_key] = score
                row["val_time_s"] = time.perf_counter() - t1
                if math.isfinite(score) and (result.best_val is None or score < result.best_val):
                    result.best_val, result.best_epoch, bad_epochs = score, epoch, 0
                    best_state = _cpu_state(model)
                    if writes:
                        save_checkpoint(
                            _model_payload(best_state, epoch, checkpoint_extra), out / BEST
                        )
                else:
                    bad_epochs += 1
                row["best_" + val_key] = result.best_val
            result.history.append(row)
            bar.set_postfix(
                epoch=epoch,
                loss=f"{row['train_loss']:.4g}",
                **({"val": f"{row[val_key]:.4g}"} if val is not None else {}),
                samples_s=f"{row['samples_per_s']:.0f}",
            )
            if out is not None:
                rng = distributed.gather_objects(_rng_state(device), cluster)
                if writes:
                    _save_run(
                        out,
                        model,
                        opt,
                        epoch,
                        shuffle,
                        rng[0] if not cluster.active else {"ranks": rng},
                        result,
                        best_state,
                        bad_epochs,
                        config,
                        checkpoint_extra,
                        callbacks,
                    )
                distributed.barrier(cluster)
    finally:
        bar.close()

    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    if writes and val is None:
        save_checkpoint(
            _model_payload(_cpu_state(model), len(result.history), checkpoint_extra), out / BEST
        )
    distributed.barrier(cluster)
    return result


def _check_pairs(data: tuple, name: str) -> None:
    """``(x, context)``: two tensors with samples first and the same number of samples."""
    ok = len(data) == 2 and all(isinstance(t, Tensor) for t in data)
    if not ok or data[0].dim() < 2 or len(data[0]) == 0 or len(data[0]) != len(data[1]):
        shapes = [tuple(getattr(t, "shape", ())) for t in data]
        raise ValueError(
            f"{name} as a tuple must be an (x, context) pair of tensors with the same number "
            f"of samples, x of shape (n, ...) with n > 0; got shapes {shapes}."
        )


def _global_batches(n: int, batch_size: int, world: int) -> int:
    """Batches per epoch; with several processes a last batch smaller than the number of
    processes is dropped (a rank would have no data)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= world else 0)


def _rng_state(device: torch.device) -> dict[str, Any]:
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def _cpu_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _model_payload(state: dict[str, Tensor], epoch: int, extra: dict[str, Any] | None) -> dict:
    return {"model_state": state, "epoch": epoch, **(extra or {})}


def _save_run(
    out: Path,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    epoch: int,
    shuffle: torch.Generator,
    rng: dict[str, Any],
    result: FitResult,
    best_state: dict[str, Tensor] | None,
    bad_epochs: int,
    config: dict[str, Any],
    extra: dict[str, Any] | None,
    callbacks: Sequence[Callback],
) -> None:
    save_checkpoint(
        {
            "model_state": _cpu_state(model),
            "optimizer_state": copy.deepcopy(opt.state_dict()),
            "epoch": epoch,
            "rng": {**rng, "shuffle": shuffle.get_state()},
            "history": result.history,
            "best_epoch": result.best_epoch,
            "best_val": result.best_val,
            "best_state": best_state,
            "bad_epochs": bad_epochs,
            "config": config,
            "callbacks": [cb.state_dict() for cb in callbacks],
            **(extra or {}),
        },
        out / LAST,
    )
    _write_metrics(out / METRICS, result.history)


def _write_metrics(path: Path, history: list[dict[str, Any]]) -> None:
    """Rewrite the JSONL metrics file atomically (it always matches the checkpoint)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)


def _check_resumable(state: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    saved = {"world_size": 1, "warmup_epochs": 0, **state.get("config", {})}
    diff = {k: (saved.get(k), v) for k, v in config.items() if saved.get(k) != v}
    if diff:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"cannot resume {path} exactly: settings differ ({details}). Resume with the saved "
            "settings and the same training data, or start a new run in another folder."
        )

"""``fit``: the training loop shared by every model in jacfree.

Adam on mini-batches, an exact validation metric after every epoch (by default the exact NLL from
``model.log_prob``), early stopping that keeps the **best** parameters (the relative-gradient
reference code overwrote them), a progress bar with the live loss and throughput (periodic lines
when the output is not a terminal), a JSONL metrics file, and checkpoints from which a resumed run
continues exactly as an uninterrupted one (same shuffling, same dequantisation noise, same
optimiser state, same callback state).

The data is validated once, where it enters (shape, dtype, finite values). A training step then
reads no tensor value on the host: the epoch's loss sum, the diagnostics, the largest gradient
norm and a non-finite flag are accumulated on the device and read once per logging interval
(``log_every`` steps) and at the end of every epoch. A NaN/Inf loss or gradient norm, a gradient
norm that explodes, or a validation metric that blows up stops training within one interval with
a :class:`FloatingPointError`; the parameters of the last good epoch are restored and no bad
parameters reach ``best.pt`` or ``checkpoint.pt``.

Each epoch's metrics row holds the mean training loss, the time and throughput, the learning rate,
the largest gradient norm of the epoch (``grad_norm_max``, before clipping) and the validation
metric. Models may report per-step quantities through
``model.training_diagnostics() -> {name: tensor}`` (self-normalizing flows report their
reconstruction error ``recon``); their batch-weighted epoch means appear in the metrics as
``train_<name>``. Callbacks (:class:`Callback`) see every step and
every epoch, e.g. :class:`jacfree.train.GECO`, which adapts the reconstruction weight λ.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .. import sample_noise
from .._checks import (
    all_finite,
    check_choice,
    check_dtype,
    check_positive,
    check_positive_int,
    check_samples,
)
from . import distributed
from .checkpoint import (
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
    write_json_atomic,
    write_text_atomic,
)
from .evaluate import evaluate_nll
from .relative_adam import default_optimizer

Objective = Callable[[nn.Module, Tensor], Tensor]
ValMetric = Callable[[nn.Module, Tensor], float]

LAST = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
LINE_EVERY_S = 10.0  # progress lines when stderr is no terminal: first, last, then this often
# settings a resumed run may change without breaking the exact continuation
RESUMABLE_CHANGES = ("epochs", "patience")


class Callback(Protocol):
    """Hooks called by :func:`fit`; the state is checkpointed so a resumed run is exact."""

    def on_step(self, model: nn.Module, loss: Tensor, diagnostics: dict[str, Tensor]) -> None:
        """After every optimiser step, with the step's loss (a detached scalar tensor on the
        model's device) and model diagnostics. Read no value on the host here (``float(loss)``
        would synchronise every step); work with tensor operations."""

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
        settings: every setting of the call (JSON values; functions and objects by name).
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    out_dir: Path | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What ``results.json`` records of the run: the settings (``"fit"``), the epochs run,
        the best epoch and its validation metric, early stopping, the mean training time per
        epoch."""
        times = [row["epoch_time_s"] for row in self.history]
        return {
            "fit": self.settings,
            "epochs_run": len(self.history),
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "val_metric": f"val_{self.settings.get('val_name', 'nll')}",
            "best_val": self.best_val,
            "train_time_per_epoch_s": sum(times) / max(len(times), 1),
        }


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
    allow_changes: bool = False,
    restore_best: bool = True,
    progress: bool = True,
    log_every: int = 25,
    divergence_factor: float | None = 1e4,
    compile: str | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` on the rows of ``train``.

    Args:
        model: any module; by default trained on ``model.loss(x)`` and validated with the exact
            NLL from ``model.log_prob`` (in eval mode, under ``no_grad``).
        train, val: floating-point tensors with samples first, of the model's per-sample shape
            (``model.event_shape`` where it has one) and dtype, with finite values (checked once,
            here). They stay where they are; batches move to the model's device. For a
            conditional flow, ``(x, context)`` pairs of such tensors (then the batches given to
            ``objective`` and ``val_metric`` are pairs too, and the defaults use
            ``model.loss(x, context=c)`` and ``model.log_prob(x, context=c)``).
        epochs: total number of epochs (a resumed run continues up to this number).
        batch_size: mini-batch size; the last, smaller batch of an epoch is kept.
        lr: Adam learning rate, > 0 (ignored if ``optimizer`` is given).
        patience: stop after this many epochs without a better validation metric
            (``None`` disables early stopping).
        objective: ``objective(model, x) -> scalar loss``; default ``model.loss(x)``.
        val_metric: ``val_metric(model, val) -> float`` (lower is better); default exact NLL.
        val_name: name of the validation metric in the history (``val_<name>``).
        optimizer: an optimizer over ``model``'s parameters; default
            :func:`~jacfree.train.relative_adam.default_optimizer`: for a fully connected flow
            in relative mode :class:`~jacfree.train.RelativeAdam` (which keeps pace with exact
            training epoch for epoch), Adam (fused on CUDA) for every other model. Pass
            ``jacfree.train.make_adam(model.parameters(), lr)`` for plain Adam.
        clip_grad_norm: clip the global gradient norm to this value (> 0).
        warmup_epochs: raise the learning rate linearly from 0 to its value over this many
            epochs, batch by batch: step s (from 1) uses ``lr · min(1, s / (warmup_epochs ·
            batches per epoch))`` (Keller et al.'s code warms up over 10 epochs). 0: no warm-up.
        seed: seeds the shuffling, the per-sample noise of :mod:`jacfree.sample_noise`
            (dequantisation) and the global torch RNG (other randomness of the objective).
        out_dir: folder for ``checkpoint.pt`` (last epoch, for resuming), ``best.pt`` (best
            validation epoch), ``metrics.jsonl`` and, at the end, ``results.json``
            (:meth:`FitResult.summary`: every setting and the best epoch), all written
            atomically. ``None`` keeps everything in memory.
        resume: continue the run saved in ``out_dir/checkpoint.pt``. The training data must be
            the same (its fingerprint is stored); of the settings only ``epochs`` and
            ``patience`` may change, unless ``allow_changes``.
        overwrite: allow starting a new run in an ``out_dir`` that already holds one.
        allow_changes: let a resumed run change other settings (learning rate, batch size,
            clipping, warm-up, seed, number of processes); it is then no exact continuation.
        restore_best: load the best parameters into ``model`` at the end.
        progress: show a progress bar; when stderr is not a terminal (a log file), a line for
            the first and the last epoch and at most one every 10 s between them.
        log_every: read the accumulated loss, diagnostics and guards on the host every this many
            steps (and at the end of every epoch); a NaN/Inf stops training within that many.
        divergence_factor: stop when a step's gradient norm exceeds this many times the first
            step's (measured: a diverging run exceeds it by 10¹³ and more, healthy runs grow
            their norm by at most ~100×), or when the validation metric exceeds the best one by
            more than ``10 · max(|best|, 1)``. ``None``: only NaN/Inf stop training.
        compile: compile the objective with ``torch.compile(objective, mode=compile)``:
            ``"default"``, ``"reduce-overhead"`` (CUDA graphs) or ``"max-autotune"``; ``None``
            runs it eagerly.
        checkpoint_extra: extra entries stored in every checkpoint (e.g. a model spec).
        callbacks: objects with ``on_step``, ``on_epoch_end``, ``state_dict`` and
            ``load_state_dict`` (see :class:`Callback`), called in order.

    Raises:
        FloatingPointError: training diverged (NaN/Inf, or an exploding gradient norm or
            validation metric); the last good checkpoint is kept and its parameters restored.
        FileExistsError: ``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` is set.
        CheckpointError: ``resume`` with other training data, or with changed settings.
        PermissionError: ``out_dir`` cannot be written.
        KeyboardInterrupt: Ctrl-C; the message says where the last checkpoint is.
    """
    call = dict(locals())  # the arguments of this call, by name
    call.update(_check_settings(call))  # epochs, batch_size, log_every: the checked integers
    _check_datasets(model, train, val)
    run = _Run.from_call(call)
    run.result.settings = _recorded_settings(run, call)
    if run.writes and not resume:
        _check_writable(run.out)
    state: dict[str, Any] = {}
    if run.out is not None and resume:
        state = run.restore(allow_changes)
    else:
        run.start_fresh(overwrite)
    return run.train_epochs(state, divergence_factor, progress, restore_best)


@dataclass
class _Run:
    """One call of :func:`fit`: its validated settings and the state a checkpoint holds."""

    model: nn.Module
    train: Tensor | tuple[Tensor, Tensor]
    val: Tensor | tuple[Tensor, Tensor] | None
    opt: torch.optim.Optimizer
    objective: Objective
    val_metric: ValMetric
    val_key: str
    epochs: int
    batch_size: int
    patience: int | None
    clip_grad_norm: float | None
    warmup_epochs: float
    seed: int
    out: Path | None
    log_every: int
    checkpoint_extra: dict[str, Any] | None
    callbacks: Sequence[Callback]
    config: dict[str, Any]
    cluster: Any
    device: torch.device
    result: FitResult = field(default_factory=FitResult)
    best_state: dict[str, Tensor] | None = None
    bad_epochs: int = 0
    start: int = 0

    @classmethod
    def from_call(cls, call: dict[str, Any]) -> _Run:
        """The run of a :func:`fit` call (its checked arguments by name): the objective
        (compiled if asked), the optimiser, the process group."""
        model, optimizer = call["model"], call["optimizer"]
        objective = call["objective"] or _default_objective
        if call["compile"] is not None:
            objective = torch.compile(objective, mode=call["compile"])
        opt = optimizer or default_optimizer(model, call["lr"])
        for group in opt.param_groups:  # the learning rate the warm-up rises to
            group.setdefault("initial_lr", group["lr"])
        cluster, batch_size = distributed.current(), call["batch_size"]
        if cluster.active and batch_size < cluster.world:
            raise ValueError(
                f"batch_size {batch_size} is smaller than the {cluster.world} processes; the "
                "global batch is split between them: use batch_size >= the number of processes."
            )
        same = ("train", "val", "epochs", "batch_size", "patience", "clip_grad_norm", "seed")
        return cls(
            **{name: call[name] for name in same},
            model=model,
            opt=opt,
            objective=objective,
            val_metric=call["val_metric"] or _default_val_metric,
            val_key=f"val_{call['val_name']}",
            warmup_epochs=call["warmup_epochs"],
            out=Path(call["out_dir"]) if call["out_dir"] is not None else None,
            log_every=call["log_every"],
            checkpoint_extra=call["checkpoint_extra"],
            callbacks=call["callbacks"],
            config=_run_config(call, cluster.world),
            cluster=cluster,
            device=next((p.device for p in model.parameters()), torch.device("cpu")),
        )

    def __post_init__(self) -> None:
        self.result.out_dir = self.out
        self.shuffle = torch.Generator().manual_seed(self.seed)
        self.rows = self.train[0] if isinstance(self.train, tuple) else self.train
        self.writes = self.out is not None and self.cluster.is_main
        self.batches_per_epoch = _global_batches(
            len(self.rows), self.batch_size, self.cluster.world
        )
        self.warmup_steps = self.warmup_epochs * self.batches_per_epoch

    # -- restore ---------------------------------------------------------------------------

    def restore(self, allow_changes: bool) -> dict[str, Any]:
        """Load ``out/checkpoint.pt``: parameters, optimiser, RNG streams, history, callbacks
        (the default Adam's learning rate replaces the saved one)."""
        out, cluster = self.out, self.cluster
        state = load_checkpoint(out / LAST, map_location=self.device)
        _check_resumable(state, self.config, out / LAST, allow_changes)
        if self.writes:
            _check_writable(out)
        self.model.load_state_dict(state["model_state"])
        self.opt.load_state_dict(state["optimizer_state"])
        lr = self.config["lr"]
        if lr is not None:
            for group in self.opt.param_groups:
                group["lr"] = group["initial_lr"] = lr
        rng = state["rng"]["ranks"][cluster.rank] if cluster.active else state["rng"]
        torch.set_rng_state(rng["torch"])
        if self.device.type == "cuda" and rng.get("cuda") is not None:
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.shuffle.set_state(state["rng"]["shuffle"])
        self.start = int(state["epoch"])
        self.result.history = list(state["history"])
        self.result.best_epoch = state["best_epoch"]
        self.result.best_val = state["best_val"]
        self.best_state = state.get("best_state")
        self.bad_epochs = int(state["bad_epochs"])
        saved_callbacks = state.get("callbacks", [])
        if len(saved_callbacks) != len(self.callbacks):
            raise CheckpointError(
                f"cannot resume {out / LAST} exactly: it was saved with {len(saved_callbacks)} "
                f"callback(s), this run has {len(self.callbacks)}; pass the same callbacks."
            )
        for cb, cb_state in zip(self.callbacks, saved_callbacks, strict=True):
            cb.load_state_dict(cb_state)
        return state

    def start_fresh(self, overwrite: bool) -> None:
        """A new run: refuse a folder that holds one (unless ``overwrite``), seed the RNG."""
        if self.out is not None and (self.out / LAST).exists() and not overwrite:
            raise FileExistsError(
                f"{self.out} already holds a training run ({LAST}); pass resume=True "
                "(CLI: --resume) to continue it, overwrite=True (CLI: --overwrite) to replace "
                "it, or choose another folder."
            )
        torch.manual_seed(self.seed + self.cluster.rank)  # each rank its own stream

    # -- the loop --------------------------------------------------------------------------

    def train_epochs(
        self, state: dict[str, Any], divergence_factor: float | None, progress: bool, best: bool
    ) -> FitResult:
        """Epochs ``start + 1 .. epochs`` with early stopping, then the best parameters."""
        model, cluster, start = self.model, self.cluster, self.start
        if start == 0:  # data-dependent initialisation on the first global batch, every rank
            world = cluster.world
            first = order_batches(_copy(self.shuffle), len(self.rows), self.batch_size, world)[0]
            keys = sample_noise.row_keys(first.to(self.device), self.seed, 1)
            _initialize_data_dependent(model, _take(self.train, first, self.device), keys)
        if cluster.active:
            self.step_model = distributed.data_parallel(model, self.objective, self.device)
        else:
            self.step_model = lambda x: self.objective(model, x)
        self.diagnose = getattr(model, "training_diagnostics", None)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.guard = _Guard(divergence_factor, self.out, saved_epoch=start if start else None)
        if start:
            self.guard.reference = state.get("reference_grad_norm")
        self.good_state = _cpu_state(model)  # what a divergence falls back to
        log = _Progress(self.epochs, self.batches_per_epoch, start, progress and cluster.is_main)
        epoch = start
        try:
            for epoch in range(start + 1, self.epochs + 1):
                if self.patience is not None and self.bad_epochs >= self.patience:
                    self.result.stopped_early = True
                    break
                row = self.run_epoch(epoch, log)
                for cb in self.callbacks:
                    cb.on_epoch_end(model, row)
                if self.val is not None:
                    self.validate(epoch, row)
                self.result.history.append(row)
                self.good_state = _cpu_state(model)
                log.epoch_done(epoch, row, self.val_key if self.val is not None else None)
                if self.out is not None:
                    self.checkpoint(epoch)
        except FloatingPointError:
            model.load_state_dict(self.good_state)  # the parameters of the last good epoch
            raise
        except KeyboardInterrupt:
            raise KeyboardInterrupt(self.guard.interrupted(epoch)) from None
        finally:
            log.close()
        return self.finish(best)

    def run_epoch(self, epoch: int, log: _Progress) -> dict[str, Any]:
        """One pass over the training data; its metrics row (guards read every ``log_every``)."""
        self.model.train()
        t0 = time.perf_counter()
        count = 0
        sums = _Sums(self.device)
        order = order_batches(self.shuffle, len(self.rows), self.batch_size, self.cluster.world)
        for i, idx in enumerate(order):
            self.step(epoch, i, idx, sums)
            count += len(idx)
            log.update()
            if (i + 1) % self.log_every == 0 and i + 1 < self.batches_per_epoch:
                interval = self.guard.check(sums.read(), epoch)
                log.bar.set_postfix(epoch=epoch, loss=f"{interval / count:.4g}", refresh=False)
        loss_sum = self.guard.check(sums.read(), epoch)
        train_time = time.perf_counter() - t0
        return {
            "epoch": epoch,
            "train_loss": loss_sum / count,
            "epoch_time_s": train_time,
            "samples_per_s": count / train_time,
            "lr": self.opt.param_groups[0]["lr"],
            "grad_norm_max": sums.last["norm_max"],
            **{f"train_{k}": v / count for k, v in sums.last["diag"].items()},
        }

    def step(self, epoch: int, i: int, idx: Tensor, sums: _Sums) -> None:
        """One optimiser step on global batch ``i`` (rows ``idx``; this rank's share of them)."""
        cluster, opt, device = self.cluster, self.opt, self.device
        if self.warmup_steps:
            step = (epoch - 1) * self.batches_per_epoch + i + 1
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * min(1.0, step / self.warmup_steps)
        mine = idx[cluster.rank :: cluster.world]
        x = _take(self.train, mine, device)
        keys = sample_noise.row_keys(mine.to(device, non_blocking=True), self.seed, epoch)
        opt.zero_grad(set_to_none=True)
        with sample_noise.indexed(keys):
            loss = self.step_model(x)
        # this rank's share of the global batch; the global loss and diagnostics are the
        # share-weighted sums over ranks (one all-reduce; nothing to do without DDP)
        weight = len(mine) / len(idx)
        diagnostics = self.diagnose() if self.diagnose is not None else {}
        value, *diag = distributed.sum_tensors(
            [t.detach() * weight for t in (loss, *diagnostics.values())], cluster
        )
        diagnostics = dict(zip(diagnostics, diag, strict=True))
        if cluster.active:  # DDP averages gradients over ranks: scale to the share
            loss = loss * (weight * cluster.world)
        loss.backward()
        norm = _grad_norm(self.params, device)
        if self.clip_grad_norm is not None:
            nn.utils.clip_grads_with_norm_(self.params, self.clip_grad_norm, norm)
        opt.step()
        if self.guard.reference is None:
            self.guard.reference = norm.detach().double()  # read at the first check
        sums.add(value, norm, diagnostics, len(idx))
        for cb in self.callbacks:
            cb.on_step(self.model, value, diagnostics)

    # -- validate, checkpoint ----------------------------------------------------------------

    def validate(self, epoch: int, row: dict[str, Any]) -> None:
        """The validation metric into ``row``; a new best is kept (and saved as ``best.pt``)."""
        result = self.result
        t1 = time.perf_counter()
        score = float(self.val_metric(self.model, self.val))
        row[self.val_key] = score
        row["val_time_s"] = time.perf_counter() - t1
        self.guard.check_val(score, result.best_val, self.val_key, epoch)
        if result.best_val is None or score < result.best_val:
            result.best_val, result.best_epoch, self.bad_epochs = score, epoch, 0
            self.best_state = _cpu_state(self.model)
            if self.writes:
                payload = _model_payload(self.best_state, epoch, self.checkpoint_extra)
                save_checkpoint(payload, self.out / BEST)
        else:
            self.bad_epochs += 1
        row["best_" + self.val_key] = result.best_val

    def checkpoint(self, epoch: int) -> None:
        """``checkpoint.pt`` and ``metrics.jsonl`` after an epoch (RNG streams of every rank)."""
        cluster = self.cluster
        rng = distributed.gather_objects(_rng_state(self.device), cluster)
        if self.writes:
            extra = {"reference_grad_norm": self.guard.reference, **(self.checkpoint_extra or {})}
            _save_run(
                self.out,
                self.good_state,
                self.opt,
                epoch,
                self.shuffle,
                rng[0] if not cluster.active else {"ranks": rng},
                self.result,
                self.best_state,
                self.bad_epochs,
                self.config,
                extra,
                self.callbacks,
            )
        self.guard.saved_epoch = epoch
        distributed.barrier(cluster)

    def finish(self, restore_best: bool) -> FitResult:
        """The best parameters back into the model; ``best.pt`` of a run without validation."""
        if restore_best and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        if self.writes and self.val is None:
            payload = _model_payload(
                _cpu_state(self.model), len(self.result.history), self.checkpoint_extra
            )
            save_checkpoint(payload, self.out / BEST)
        if self.writes:
            write_json_atomic(self.out / RESULTS, self.result.summary())
        distributed.barrier(self.cluster)
        return self.result


class _Progress:
    """The progress bar, or (stderr not a terminal) a line for the first and last epoch and at
    most one every :data:`LINE_EVERY_S` seconds between them."""

    def __init__(self, epochs: int, steps_per_epoch: int, start: int, show: bool) -> None:
        self.show, self.terminal = show, sys.stderr.isatty()
        self.epochs, self.start = epochs, start
        self.bar = tqdm(
            total=epochs * steps_per_epoch,
            initial=start * steps_per_epoch,
            unit="step",
            desc="train",
            disable=not (show and self.terminal),
            dynamic_ncols=True,
        )
        self.last_line = time.perf_counter()

    def update(self) -> None:
        self.bar.update(1)

    def epoch_done(self, epoch: int, row: dict[str, Any], val_key: str | None) -> None:
        summary = {
            "epoch": epoch,
            "loss": f"{row['train_loss']:.4g}",
            **({"val": f"{row[val_key]:.4g}"} if val_key is not None else {}),
            "samples_s": f"{row['samples_per_s']:.0f}",
        }
        self.bar.set_postfix(**summary)
        now = time.perf_counter()
        due = epoch in (self.start + 1, self.epochs) or now - self.last_line >= LINE_EVERY_S
        if self.show and not self.terminal and due:  # a log file: periodic lines, no bar
            line = ", ".join(f"{k} {v}" for k, v in summary.items() if k != "epoch")
            print(f"epoch {epoch}/{self.epochs}: {line}", file=sys.stderr, flush=True)
            self.last_line = now

    def close(self) -> None:
        self.bar.close()


def _check_settings(call: dict[str, Any]) -> dict[str, int]:
    """Validate :func:`fit`'s scalar arguments; return ``epochs``, ``batch_size`` and
    ``log_every`` as checked integers."""
    checked = {k: check_positive_int(call[k], k) for k in ("epochs", "batch_size", "log_every")}
    if call["patience"] is not None:
        check_positive_int(call["patience"], "patience")
    warmup = call["warmup_epochs"]
    if not (isinstance(warmup, int | float) and math.isfinite(warmup)) or warmup < 0:
        raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup!r}.")
    if call["optimizer"] is None:
        check_positive(call["lr"], "lr", "the learning rate; 0 would train nothing")
    if call["clip_grad_norm"] is not None:
        check_positive(call["clip_grad_norm"], "clip_grad_norm", "the largest gradient norm kept")
    if call["divergence_factor"] is not None:
        check_positive(call["divergence_factor"], "divergence_factor", "or None to disable")
    if call["compile"] is not None:
        check_choice(call["compile"], "compile mode", COMPILE_MODES)
    return checked


def _recorded_settings(run: _Run, call: dict[str, Any]) -> dict[str, Any]:
    """The settings of a :func:`fit` call as plain JSON values (:attr:`FitResult.settings`)."""
    n_val = None if run.val is None else len(run.val[0] if isinstance(run.val, tuple) else run.val)
    return {
        "epochs": run.epochs,
        "batch_size": run.batch_size,
        "lr": run.config["lr"],
        "optimizer": type(run.opt).__name__,
        "patience": run.patience,
        "objective": _name(run.objective, "model.loss"),
        "val_metric": _name(call["val_metric"], "exact NLL") if run.val is not None else None,
        "val_name": call["val_name"],
        "clip_grad_norm": run.clip_grad_norm,
        "warmup_epochs": run.warmup_epochs,
        "seed": run.seed,
        "log_every": run.log_every,
        "divergence_factor": call["divergence_factor"],
        "compile": call["compile"],
        "restore_best": call["restore_best"],
        "callbacks": [type(cb).__name__ for cb in run.callbacks],
        "world_size": run.cluster.world,
        "n_train": run.config["n_train"],
        "n_val": n_val,
        "data_fingerprint": run.config["data_fingerprint"],
    }


def _name(fn: object, default: str) -> str:
    """How a function reads in the recorded settings (its qualified name)."""
    if fn is None or fn is _default_objective:
        return default
    inner = inspect.unwrap(fn)  # type: ignore[arg-type]  # a compiled objective: the original
    if inner is _default_objective:
        return default
    return getattr(inner, "__qualname__", type(inner).__name__)


def _run_config(call: dict[str, Any], world_size: int) -> dict[str, Any]:
    """The settings a resumed run must share, ``n_train`` and the data's fingerprint."""
    train = call["train"]
    pairs = isinstance(train, tuple)
    return {
        "batch_size": call["batch_size"],
        "seed": call["seed"],
        "n_train": len(train[0]) if pairs else len(train),
        "world_size": world_size,
        "warmup_epochs": call["warmup_epochs"],
        "lr": call["lr"] if call["optimizer"] is None else None,
        "clip_grad_norm": call["clip_grad_norm"],
        "data_fingerprint": "-".join(map(data_fingerprint, train))
        if pairs
        else data_fingerprint(train),
    }


def _check_datasets(
    model: nn.Module,
    train: Tensor | tuple[Tensor, Tensor],
    val: Tensor | tuple[Tensor, Tensor] | None,
) -> None:
    """Both data sets (or ``(x, context)`` pairs of them), once, before training."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    pairs = isinstance(train, tuple)
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        if pairs:
            _check_pairs(data, name)
        _check_data(*(data if pairs else (data, None)), name, model, dtype)


def order_batches(
    shuffle: torch.Generator, n: int, batch_size: int, world: int = 1
) -> list[Tensor]:
    """The global batches of one epoch: a permutation from ``shuffle`` cut into ``batch_size``
    rows (with several processes, a last batch smaller than their number is dropped)."""
    order = torch.randperm(n, generator=shuffle)
    return list(order.split(batch_size)[: _global_batches(n, batch_size, world)])


def _copy(gen: torch.Generator) -> torch.Generator:
    copy_ = torch.Generator()
    copy_.set_state(gen.get_state())
    return copy_


def _initialize_data_dependent(
    model: nn.Module, x: Tensor | tuple[Tensor, Tensor], keys: Tensor
) -> None:
    """Initialise the model's ActNorm layers (Glow) on the first global batch before training.

    They would otherwise initialise inside the first training step, on each process's own
    shard, and data-parallel training would start from different parameters on every rank.
    The same batch and noise make this the initialisation one-process training had anyway.
    """
    from ..flows.actnorm import ActNorm, initialize_actnorm

    if any(isinstance(m, ActNorm) and not m.is_initialized for m in model.modules()):
        x, context = x if isinstance(x, tuple) else (x, None)
        with sample_noise.indexed(keys):
            initialize_actnorm(model, x, context=context)


def data_fingerprint(x: Tensor) -> str:
    """A hash of a tensor's shape, dtype and values (which training data a run saw)."""
    flat = x.detach().reshape(-1).contiguous().cpu()
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{tuple(x.shape)} {x.dtype}".encode())
    h.update(flat.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class _Sums:
    """Per-epoch sums kept on the device: loss, diagnostics, largest gradient norm, a
    non-finite flag; :meth:`read` copies them to the host in one transfer."""

    def __init__(self, device: torch.device) -> None:
        zero = torch.zeros((), dtype=torch.float64, device=device)
        self.loss, self.norm_max, self.norm_first = zero, zero.clone(), zero.clone()
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.diag: dict[str, Tensor] = {}
        self.steps = 0
        self.last: dict[str, Any] = {}

    def add(self, value: Tensor, norm: Tensor, diag: dict[str, Tensor], n: int) -> None:
        value, norm = value.double(), norm.double()
        self.loss = self.loss + value * n
        self.bad = self.bad | ~torch.isfinite(value) | ~torch.isfinite(norm)
        self.norm_max = torch.maximum(self.norm_max, norm)
        self.steps += 1
        for k, v in diag.items():
            self.diag[k] = self.diag.get(k, 0) + v.double() * n

    def read(self) -> dict[str, Any]:
        names = list(self.diag)
        flat = torch.stack([self.loss, self.norm_max, self.bad.double(), *self.diag.values()])
        loss, norm_max, bad, *diag = flat.tolist()  # the one host read of the interval
        self.last = {
            "loss": loss,
            "norm_max": norm_max,
            "bad": bool(bad),
            "diag": dict(zip(names, diag, strict=True)),
            "steps": self.steps,
        }
        return self.last


class _Guard:
    """Divergence checks on values read at the logging interval, with the messages they raise."""

    def __init__(self, factor: float | None, out: Path | None, saved_epoch: int | None) -> None:
        self.factor, self.out, self.saved_epoch = factor, out, saved_epoch
        self.reference: Tensor | float | None = None  # the first step's gradient norm

    def _where(self) -> str:
        if self.out is None:
            return "; the model keeps the parameters of the last good epoch"
        if self.saved_epoch is None:
            return (
                f"; it diverged in its first epoch, so nothing was saved in {self.out} and the "
                "model keeps its initial parameters"
            )
        return f"; the last good checkpoint (epoch {self.saved_epoch}) is kept in {self.out}"

    def _fail(self, what: str, epoch: int) -> FloatingPointError:
        return FloatingPointError(
            f"{what} at epoch {epoch}{self._where()}. Lower the learning rate, clip gradients "
            "(clip_grad_norm / --clip), or check the data for extreme values."
        )

    def check(self, sums: dict[str, Any], epoch: int) -> float:
        """Raise if the steps so far went non-finite or exploded; return the loss sum."""
        if sums["bad"]:
            loss = sums["loss"]
            what = f"training loss became {loss}" if not math.isfinite(loss) else None
            raise self._fail(what or "the gradient norm became non-finite", epoch)
        if isinstance(self.reference, Tensor):
            self.reference = float(self.reference)  # once per run
        limit = self.factor * self.reference if self.factor and self.reference else math.inf
        if sums["norm_max"] > limit:
            raise self._fail(
                f"training diverged: the gradient norm reached {sums['norm_max']:.3g}, "
                f"over {self.factor:g} times the first step's {self.reference:.3g}",
                epoch,
            )
        return sums["loss"]

    def check_val(self, score: float, best: float | None, name: str, epoch: int) -> None:
        """Raise if the validation metric is non-finite or blew up against the best one."""
        if not math.isfinite(score):
            raise self._fail(f"the validation metric {name} became {score}", epoch)
        if self.factor is None or best is None:
            return
        limit = best + 10 * max(abs(best), 1.0)
        if score > limit:
            raise self._fail(
                f"training diverged: {name} rose to {score:.4g} from its best {best:.4g}", epoch
            )

    def interrupted(self, epoch: int) -> str:
        if self.out is None:
            return f"training interrupted in epoch {epoch}."
        if self.saved_epoch is None:
            return f"training interrupted in epoch {epoch}; no epoch had finished, nothing saved."
        return (
            f"training interrupted in epoch {epoch}; the last checkpoint (epoch "
            f"{self.saved_epoch}) is in {self.out}: continue it with resume=True (CLI: the same "
            "command with --resume)."
        )


def _grad_norm(params: list[nn.Parameter], device: torch.device) -> Tensor:
    """The global L2 norm of the gradients, as a tensor (no host read)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return nn.utils.get_total_norm(grads)


def _check_data(
    x: object, context: Tensor | None, name: str, model: nn.Module, dtype: torch.dtype | None
) -> None:
    """Shape, dtype and finite values of a data set, once, before training (the training step
    itself reads no value on the host), then the model's own ``validate_data`` if it has one
    (flows: the value range each leading pre-processing layer expects, e.g. ``Dequantize``)."""
    if not isinstance(x, Tensor) or x.dim() < 1 or len(x) == 0:
        raise ValueError(
            f"{name} must be a non-empty tensor with samples first, shape (n, ...); "
            f"got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}."
        )
    event_shape = getattr(model, "event_shape", None)
    if event_shape is not None:
        check_samples(x, tuple(event_shape), name=name, finite=False)
    elif x.dim() < 2:
        raise ValueError(f"{name} must have samples first, shape (n, ...); got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has dtype {x.dtype}; training needs floating-point data: convert it with "
            f"{name}.float() (or .double() for a float64 model)."
        )
    check_dtype(x, dtype, name)
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); clean or impute the data before training "
            "(for example drop rows with ~torch.isfinite(x).flatten(1).all(1))."
        )
    check = getattr(model, "validate_data", None)  # flows: also the pre-processing's range
    if check is not None:
        if context is None:
            for chunk in x.split(10_000):
                check(chunk, name)
        else:
            for chunk, c in zip(x.split(10_000), context.split(10_000), strict=True):
                check(chunk, name, context=c)


def _take(data: Tensor | tuple[Tensor, ...], idx: Tensor, device: torch.device) -> Any:
    """Rows ``idx`` of the data (of each tensor of an ``(x, context)`` pair) on ``device``."""
    if isinstance(data, tuple):
        return tuple(t[idx].to(device, non_blocking=True) for t in data)
    return data[idx].to(device, non_blocking=True)


def _check_pairs(data: object, name: str) -> None:
    """``(x, context)``: two tensors with samples first and the same number of samples."""
    ok = isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)
    if not ok or data[0].dim() < 2 or len(data[0]) == 0 or len(data[0]) != len(data[1]):
        shapes = [tuple(getattr(t, "shape", ())) for t in (data if isinstance(data, tuple) else ())]
        raise ValueError(
            f"{name} as a tuple must be an (x, context) pair of tensors with the same number "
            f"of samples, x of shape (n, ...) with n > 0; got shapes {shapes}."
        )


def _check_writable(out: Path) -> None:
    """Fail before training, not after the first epoch, when ``out`` cannot be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(
            f"cannot write to the run folder {out} ({err.strerror or err}); choose a writable "
            "folder (CLI: --out) or fix its permissions."
        ) from None


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
    model_state: dict[str, Tensor],
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
            "model_state": model_state,
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
    write_text_atomic(path, "".join(json.dumps(row) + "\n" for row in history))


def _check_resumable(
    state: dict[str, Any], config: dict[str, Any], path: Path, allow_changes: bool
) -> None:
    saved = {"world_size": 1, "warmup_epochs": 0, **state.get("config", {})}
    if "data_fingerprint" in saved and (
        saved["data_fingerprint"] != config["data_fingerprint"]
        or saved.get("n_train") != config["n_train"]
    ):
        raise CheckpointError(
            f"cannot resume {path}: it was trained on other data (n_train {saved.get('n_train')}, "
            f"now {config['n_train']}; the data's fingerprint differs). Resume with the same "
            "training data, or start a new run in another folder."
        )
    diff = {
        k: (saved.get(k), v)
        for k, v in config.items()
        if k in saved and k != "data_fingerprint" and saved[k] != v
    }
    if diff and not allow_changes:
        details = ", ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"cannot resume {path} exactly: settings differ ({details}). Resume with the saved "
            f"settings (only {' and '.join(RESUMABLE_CHANGES)} may change), pass "
            "allow_changes=True (CLI: --allow-changes) to continue with the new ones anyway, or "
            "start a new run in another folder."
        )

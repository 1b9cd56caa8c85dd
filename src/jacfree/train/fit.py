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
from .._checks import all_finite, check_choice, check_dtype, check_positive_int, check_samples
from . import distributed
from .checkpoint import CheckpointError, file_mode, load_checkpoint, save_checkpoint
from .evaluate import evaluate_nll
from .relative_adam import default_optimizer

Objective = Callable[[nn.Module, Tensor], Tensor]
ValMetric = Callable[[nn.Module, Tensor], float]

LAST = "checkpoint.pt"
BEST = "best.pt"
METRICS = "metrics.jsonl"
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
    """

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    best_val: float | None = None
    stopped_early: bool = False
    out_dir: Path | None = None


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
            validation epoch) and ``metrics.jsonl``. ``None`` keeps everything in memory.
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
    epochs = check_positive_int(epochs, "epochs")
    batch_size = check_positive_int(batch_size, "batch_size")
    log_every = check_positive_int(log_every, "log_every")
    if patience is not None:
        check_positive_int(patience, "patience")
    if not (isinstance(warmup_epochs, int | float) and math.isfinite(warmup_epochs)) or (
        warmup_epochs < 0
    ):
        raise ValueError(f"warmup_epochs must be a finite number >= 0, got {warmup_epochs!r}.")
    if optimizer is None:
        _check_positive(lr, "lr", "the learning rate; 0 would train nothing")
    if clip_grad_norm is not None:
        _check_positive(clip_grad_norm, "clip_grad_norm", "the largest gradient norm kept")
    if divergence_factor is not None:
        _check_positive(divergence_factor, "divergence_factor", "or None to disable")
    if compile is not None:
        check_choice(compile, "compile mode", COMPILE_MODES)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    pairs = isinstance(train, tuple)
    for name, data in (("train", train), ("val", val)):
        if data is None:
            continue
        if pairs:
            _check_pairs(data, name)
        _check_data(*(data if pairs else (data, None)), name, model, dtype)
    rows = train[0] if pairs else train  # what indexes the samples
    objective = objective or _default_objective
    if compile is not None:
        objective = torch.compile(objective, mode=compile)
    val_metric = val_metric or _default_val_metric
    val_key = f"val_{val_name}"
    out = Path(out_dir) if out_dir is not None else None
    opt = optimizer or default_optimizer(model, lr)
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
        "lr": lr if optimizer is None else None,
        "clip_grad_norm": clip_grad_norm,
        "data_fingerprint": data_fingerprint(rows)
        if not pairs
        else "-".join(map(data_fingerprint, train)),
    }
    if cluster.active and batch_size < cluster.world:
        raise ValueError(
            f"batch_size {batch_size} is smaller than the {cluster.world} processes; the "
            "global batch is split between them: use batch_size >= the number of processes."
        )
    writes = out is not None and cluster.is_main
    if writes and not resume:
        _check_writable(out)

    result = FitResult(out_dir=out)
    best_state: dict[str, Tensor] | None = None
    bad_epochs = 0
    start = 0
    if out is not None and resume:
        state = load_checkpoint(out / LAST, map_location=device)
        _check_resumable(state, config, out / LAST, allow_changes)
        if writes:
            _check_writable(out)
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
        torch.manual_seed(seed + cluster.rank)  # other randomness: each rank its own stream

    if start == 0:  # data-dependent initialisation on the first global batch, on every rank
        first = order_batches(_copy(shuffle), len(rows), batch_size, cluster.world)[0]
        keys = sample_noise.row_keys(first.to(device), seed, 1)
        _initialize_data_dependent(model, _take(train, first, device), keys)

    step_model: Callable[[Tensor], Tensor]
    if cluster.active:
        step_model = distributed.data_parallel(model, objective, device)
    else:
        step_model = lambda x: objective(model, x)  # noqa: E731

    diagnose = getattr(model, "training_diagnostics", None)
    params = [p for p in model.parameters() if p.requires_grad]
    batches_per_epoch = _global_batches(len(rows), batch_size, cluster.world)
    steps_per_epoch = batches_per_epoch
    warmup_steps = warmup_epochs * steps_per_epoch
    guard = _Guard(divergence_factor, out, saved_epoch=start if start else None)
    if start:
        guard.reference = state.get("reference_grad_norm")
    good_state = _cpu_state(model)  # what a divergence falls back to
    show = progress and cluster.is_main
    terminal = sys.stderr.isatty()
    bar = tqdm(
        total=epochs * steps_per_epoch,
        initial=start * steps_per_epoch,
        unit="step",
        desc="train",
        disable=not (show and terminal),
        dynamic_ncols=True,
    )
    epoch = start
    last_line = time.perf_counter()
    try:
        for epoch in range(start + 1, epochs + 1):
            if patience is not None and bad_epochs >= patience:
                result.stopped_early = True
                break
            model.train()
            t0 = time.perf_counter()
            count = 0
            sums = _Sums(device)
            for i, idx in enumerate(order_batches(shuffle, len(rows), batch_size, cluster.world)):
                if warmup_steps:
                    step = (epoch - 1) * steps_per_epoch + i + 1
                    for group in opt.param_groups:
                        group["lr"] = group["initial_lr"] * min(1.0, step / warmup_steps)
                mine = idx[cluster.rank :: cluster.world]
                x = _take(train, mine, device)
                keys = sample_noise.row_keys(mine.to(device, non_blocking=True), seed, epoch)
                opt.zero_grad(set_to_none=True)
                with sample_noise.indexed(keys):
                    loss = step_model(x)
                # this rank's share of the global batch; the global loss and diagnostics are the
                # share-weighted sums over ranks (one all-reduce; nothing to do without DDP)
                weight = len(mine) / len(idx)
                diagnostics = diagnose() if diagnose is not None else {}
                value, *diag = distributed.sum_tensors(
                    [t.detach() * weight for t in (loss, *diagnostics.values())], cluster
                )
                diagnostics = dict(zip(diagnostics, diag, strict=True))
                if cluster.active:  # DDP averages gradients over ranks: scale to the share
                    loss = loss * (weight * cluster.world)
                loss.backward()
                norm = _grad_norm(params, device)
                if clip_grad_norm is not None:
                    nn.utils.clip_grads_with_norm_(params, clip_grad_norm, norm)
                opt.step()
                if guard.reference is None:
                    guard.reference = norm.detach().double()  # read at the first check
                sums.add(value, norm, diagnostics, len(idx))
                for cb in callbacks:
                    cb.on_step(model, value, diagnostics)
                count += len(idx)
                bar.update(1)
                if (i + 1) % log_every == 0 and i + 1 < batches_per_epoch:
                    interval = guard.check(sums.read(), epoch)
                    bar.set_postfix(epoch=epoch, loss=f"{interval / count:.4g}", refresh=False)
            loss_sum = guard.check(sums.read(), epoch)
            train_time = time.perf_counter() - t0
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": loss_sum / count,
                "epoch_time_s": train_time,
                "samples_per_s": count / train_time,
                "lr": opt.param_groups[0]["lr"],
                "grad_norm_max": sums.last["norm_max"],
                **{f"train_{k}": v / count for k, v in sums.last["diag"].items()},
            }
            for cb in callbacks:
                cb.on_epoch_end(model, row)
            if val is not None:
                t1 = time.perf_counter()
                score = float(val_metric(model, val))
                row[val_key] = score
                row["val_time_s"] = time.perf_counter() - t1
                guard.check_val(score, result.best_val, val_key, epoch)
                if result.best_val is None or score < result.best_val:
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
            good_state = _cpu_state(model)
            summary = {
                "epoch": epoch,
                "loss": f"{row['train_loss']:.4g}",
                **({"val": f"{row[val_key]:.4g}"} if val is not None else {}),
                "samples_s": f"{row['samples_per_s']:.0f}",
            }
            bar.set_postfix(**summary)
            now = time.perf_counter()
            due = epoch in (start + 1, epochs) or now - last_line >= LINE_EVERY_S
            if show and not terminal and due:  # a log file: periodic lines instead of a bar
                line = ", ".join(f"{k} {v}" for k, v in summary.items() if k != "epoch")
                print(f"epoch {epoch}/{epochs}: {line}", file=sys.stderr, flush=True)
                last_line = now
            if out is not None:
                rng = distributed.gather_objects(_rng_state(device), cluster)
                if writes:
                    _save_run(
                        out,
                        good_state,
                        opt,
                        epoch,
                        shuffle,
                        rng[0] if not cluster.active else {"ranks": rng},
                        result,
                        best_state,
                        bad_epochs,
                        config,
                        {"reference_grad_norm": guard.reference, **(checkpoint_extra or {})},
                        callbacks,
                    )
                guard.saved_epoch = epoch
                distributed.barrier(cluster)
    except FloatingPointError:
        model.load_state_dict(good_state)  # the parameters of the last good epoch
        raise
    except KeyboardInterrupt:
        raise KeyboardInterrupt(guard.interrupted(epoch)) from None
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


def _check_positive(value: object, name: str, meaning: str) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0 ({meaning}), got {value!r}.")


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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.chmod(tmp, file_mode())
    os.replace(tmp, path)


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

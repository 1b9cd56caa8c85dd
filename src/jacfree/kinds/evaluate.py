r"""``evaluate``: the test metrics of a trained model, as ``jacfree train`` / ``eval`` report them.

For a model with a normalised density the NLL is reported **on the data's original scale**. A
dataset served pre-processed (a table standardised per column, ``x_loaded = A x + b``) has a
density on the loaded scale ``p_loaded``; the change of variables gives

.. math::  -\log p_{orig}(x) = -\log p_{loaded}(A x + b) - \log|\det A|,

and ``log|det A|`` is the dataset's ``logdet`` (:class:`jacfree.data.Dataset`). Flows on
quantised data already include dequantisation and the logit transform in ``log_prob``
(:func:`jacfree.kinds.preprocess_layers`), so their NLL is on the [0, levels)^D scale, and bits
per dimension, ``NLL / (D ln 2)``, apply. A model kind's own metrics (exact score-matching loss,
``log Z`` and its NLL for dkef, ...) come from its :attr:`~jacfree.kinds.ModelKind.test_metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..data import Dataset
from ..estimate import Estimate
from ..train.evaluate import evaluate_nll
from .registry import ModelSpec, model_data, model_input, model_kind

__all__ = ["Evaluation", "evaluate", "stat_table"]


@dataclass(frozen=True)
class Evaluation:
    """The metrics of one split.

    Attributes:
        split: which split (``"test"``, ``"val"``, ``"train"``, or ``"data"`` for a tensor).
        nll: the NLL in nats per example on the data's original scale, or ``None`` for models
            without a normalised density.
        nll_preprocessed: the NLL on the scale the data was loaded in, when that differs.
        bits_per_dim: the NLL in bits per dimension (quantised data), or ``None``.
        metrics: the model kind's own metrics (``{name: value}``).
        conditional: what a conditional model conditions on (for the report line), or ``None``.
    """

    split: str
    nll: Estimate | None = None
    nll_preprocessed: float | None = None
    bits_per_dim: Estimate | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    conditional: str | None = None

    def as_dict(self) -> dict[str, float]:
        """Flat ``{name: value}`` (``nll_nats``, ``nll_stderr_nats``, ``n``,
        ``nll_nats_preprocessed``, ``bits_per_dim``, ``bits_per_dim_stderr``, then the kind's
        metrics): the ``test`` entry of a run's ``results.json``."""
        out: dict[str, float] = {}
        if self.nll is not None:
            out.update(nll_nats=self.nll.mean, nll_stderr_nats=self.nll.stderr, n=self.nll.n)
        if self.nll_preprocessed is not None:
            out.update(nll_nats_preprocessed=self.nll_preprocessed)
        if self.bits_per_dim is not None:
            out.update(bits_per_dim=self.bits_per_dim.mean)
            out.update(bits_per_dim_stderr=self.bits_per_dim.stderr)
        out.update(self.metrics)
        return out

    def __str__(self) -> str:
        """The report lines ``jacfree train`` / ``eval`` print."""
        lines = []
        if self.nll is not None:
            given = f" given {self.conditional}" if self.conditional else ""
            nll = self.nll
            line = f"{self.split} NLL{given} {nll.mean:.3f} ± {nll.stderr:.3f} nats (n={nll.n})"
            if self.nll_preprocessed is not None:
                line += f"; {self.nll_preprocessed:.3f} on the pre-processed scale"
            if self.bits_per_dim is not None:
                bpd = self.bits_per_dim
                line += f" = {bpd.mean:.4f} ± {bpd.stderr:.4f} bits/dim"
            lines.append(line)
        if self.metrics:
            lines.append(stat_table(self.split, self.metrics))
        return "\n".join(lines)


def evaluate(
    model: nn.Module,
    data: Any,
    split: str = "test",
    *,
    spec: ModelSpec | None = None,
    seed: int = 0,
    batch_size: int = 1000,
) -> Evaluation:
    """The test metrics of ``model`` on a split of ``data``.

    Args:
        model: a trained model (e.g. ``build_model(spec)`` after :func:`jacfree.fit`, or the
            model of a ``jacfree train`` checkpoint).
        data: a :class:`jacfree.data.Dataset` (``jacfree.data.load(name)``: its split
            ``split`` is evaluated, and its ``logdet`` brings the NLL to the original scale), or
            a tensor of rows (or an ``(x, context)`` pair) already on the scale to report.
        split: ``"test"``, ``"val"`` or ``"train"`` of a dataset.
        spec: the model's spec (a ``jacfree train`` checkpoint stores it as ``"spec"``): then
            the data is shaped as its kind takes it (conditional flows: ``(x, context)``), the
            kind's own metrics are added, and models without a normalised density report those
            only. ``None``: the exact NLL of ``model.log_prob``.
        seed: seeds any randomness of the evaluation (dequantisation noise, estimators).
        batch_size: rows per batch of the NLL.

    The NLL equals :func:`jacfree.evaluate_nll` on the loaded data minus the dataset's
    ``logdet`` (conditioning on a column of a table keeps the loaded scale); bits/dim are given
    for quantised data (a dataset with ``levels``, or a spec with ``levels``).
    """
    x, logdet, levels, dim = _rows(model, data, split, spec)
    split = split if isinstance(data, Dataset) else "data"
    kind = model_kind(spec) if spec is not None else None
    result: dict[str, Any] = {"split": split, "conditional": (spec or {}).get("conditional")}
    if kind is None or kind.has_density:
        loaded = evaluate_nll(model, x, batch_size=batch_size, seed=seed)
        nll = Estimate(loaded.mean - logdet, loaded.stderr, loaded.n)
        result.update(nll=nll, nll_preprocessed=loaded.mean if logdet else None)
        if levels:
            result["bits_per_dim"] = Estimate(*nll.bits_per_dim(dim), nll.n)
    if kind is not None and kind.test_metrics:
        result["metrics"] = kind.test_metrics(spec)(model, x)
    return Evaluation(**result)


def _rows(
    model: nn.Module, data: Any, split: str, spec: ModelSpec | None
) -> tuple[Any, float, int | None, int]:
    """The rows to evaluate as the model takes them (``(x, context)`` for a conditional flow),
    the log-det back to the original scale, the quantisation levels and the dimension."""
    if isinstance(data, Dataset):
        logdet, levels, dim = float(data.logdet), data.levels, data.dim
        if spec is not None and "context_column" in spec:
            logdet = 0.0  # conditioning on a column of a standardised table: the loaded scale
        if spec is not None:
            return model_data(data, split, model, spec), logdet, levels, dim
        data = data.split(split)
    else:
        levels = (spec or {}).get("levels")
        logdet = 0.0
    if isinstance(data, tuple):
        return data, logdet, levels, data[0][0].numel()
    if getattr(model, "event_shape", None) is not None:
        data = model_input(data, model)
    return data, logdet, levels, data[0].numel()


def stat_table(split: str, metrics: dict[str, float]) -> str:
    """The metrics of a model kind as a table: one row per quantity with its standard error and
    sample count where the metrics hold them (``<name>_stderr``, ``<name>_n``)."""
    used: set[str] = set()
    rows = []
    for key, value in metrics.items():
        if key in used:
            continue
        base = key[: -len("_nats")] if key.endswith("_nats") else key
        stderr_keys = (f"{key}_stderr", f"{base}_stderr_nats", f"{base}_stderr")
        stderr_key = next((k for k in stderr_keys if k in metrics and k != key), None)
        n_key = next(
            (k for k in (f"{key}_n", f"{base}_n", f"{base}_samples") if k in metrics), None
        )
        used.update(k for k in (key, stderr_key, n_key) if k)
        stderr = f"± {metrics[stderr_key]:.4g}" if stderr_key else ""
        n = f"{int(metrics[n_key])}" if n_key else ""
        rows.append((key, f"{value:.6g}", stderr, n))
    head = (f"{split} metric", "value", "stderr", "n")
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(4)]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in (head, *rows)
    ]
    return "\n".join(line.rstrip() for line in lines)

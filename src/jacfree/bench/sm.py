r"""``jacfree bench sm``: time and memory of a training step, autograd vs finite-difference SM.

Reproduces the efficiency study of Pang, Xu, Li, Song, Ermon, Zhu, "Efficient Learning of Generative
Models via Finite-Difference Score Matching" (NeurIPS 2020, Figure 3): each score-matching
objective that needs a gradient of a gradient when computed by autograd is timed side by side with
its finite-difference (FD) form, which needs function evaluations only — run as ONE concatenated
batch (*parallel*) or one forward call per stencil point (*sequential*, the paper's "non-parallel"
variant, which isolates how much of the gain comes from batching).

Pairs (autograd baseline → FD forms; the FD objectives are §1.7 of the project notes)
-------------------------------------------------------------------------------------
``ssm`` (energy models)
    SSM, ``E_v[vᵀ∇²log p̃ v + ½(vᵀ∇log p̃)²]`` — a ``create_graph`` backward for the score, a second
    one for ``Hv``, then the parameter backward through both (:func:`jacfree.sm.ssm`), vs FD-SSM,
    ``(d/ε²)[f(x+v) + f(x−v) − 2f(x) + ⅛(f(x+v) − f(x−v))²]`` on ``[x, x+v, x−v]``
    (:func:`jacfree.sm.fd_ssm`). SSM-VR (:func:`jacfree.sm.ssm` with ``vr=True``, same graph)
    is timed alongside as a second autograd reference; the FD form of the energy objective is
    the non-VR one (the VR form would need ``‖∇f‖²``, i.e. ``d`` evaluations).
``dsm`` (energy models)
    DSM ``½‖∇log p̃(x̃) + (x̃ − x)/σ²‖²`` — the score by a ``create_graph`` backward, so the
    parameter gradient is a gradient of a gradient (:func:`jacfree.sm.dsm`), vs FD-DSM
    ``(d/2ε²)(½(f(x̃+v) − f(x̃−v)) + vᵀ(x̃−x)/σ²)²`` on ``[x̃+v, x̃−v]`` (:func:`jacfree.sm.fd_dsm`).
``mdsm`` (the deep energy model ``ebm``)
    multiscale DSM ``½‖∇log p̃(x̃_b) + (x̃_b − x_b)/σ0²‖²/σ_b²`` with per-sample
    ``σ_b = linspace(0.05, 1.2)`` and ``σ0 = 0.1`` (:func:`jacfree.sm.mdsm`, a gradient of a
    gradient) vs FD-MDSM on ``[x̃+v, x̃−v]`` with ε = 0.05 (:func:`jacfree.sm.fd_mdsm`); the
    paper's deep-EBM setting; target: not slower (as for DSM).
``ssm_vr`` (score networks ``s(x) ≈ ∇log p``)
    SSM-VR ``E_v[vᵀ∇s v] + ½‖s‖²`` — one ``create_graph`` backward of ``vᵀs``
    (:func:`jacfree.sm.ssm_scorenet`), vs FD-SSM-VR ``⅛‖s₊ + s₋‖² + (d/2ε²)vᵀ(s₊ − s₋)`` on
    ``[x+v, x−v]`` (:func:`jacfree.sm.fd_ssm_vr`).

Models (``--models``; widths and batches are the paper's)
---------------------------------------------------------
``mlp``       MLP energy ``D → H → H → 1`` (softplus; :class:`jacfree.MLPEnergy`), D = 784,
              H = 1000, B = 128 — the deep-EBM timing network; pairs ``ssm``, ``dsm``; Gaussian
              SSM projections (the reference code's choice for deep EBMs).
``mlp-ref``   the same network and batch with the four objectives written out in plain PyTorch
              as in the reference code (no argument checks, no library code): the yardstick for
              the library's overhead and the setting of the reference figures in docs/bench-sm.md.
``scorenet``  MLP score network ``D → H → H → D`` (softplus), B = 128; pair ``ssm_vr`` (the
              implicit-encoder VAE/WAE setting of the paper, at D = 784); Gaussian projections.
``ncsn``      :class:`jacfree.NCSN` (the small noise-conditional U-Net for 28×28, 16 channels),
              B = 128, the σ²-weighted annealed objective with one random level per sample (the
              paper's NCSN setting); pair ``ssm_vr``.
``nice``      :class:`jacfree.NICE` at D = 784 (4 additive couplings, MLPs with 4 hidden layers
              of width H = 1000, softplus), trained on its energy ``−log p`` in logit space,
              B = 128; pairs ``ssm``, ``dsm``; Rademacher projections (the reference's choice).
``ebm``       :class:`jacfree.ResEBM` on 28×28 images (base width 16, one residual block per
              stage after each down-sampling block; the paper's Res18 has 128 and 2), B = 128;
              pair ``mdsm``.
``dkef``      :class:`jacfree.DKEF` on ``wine-red`` (D = 11; 200 inducing points, 3 kernels on
              width-30 feature nets), B = 200: each step solves α in closed form on one half of
              the batch and scores the other half (α's solve is the same for both forms, so only
              part of the step changes — the paper's caveat); pairs ``ssm``, ``dsm``.

``--dim`` and ``--hidden`` change D and H of the D-dimensional models (``--data gaussian`` for a D
other than 784: standard normal data; ``ncsn`` needs a square D); ε = 0.1 and σ = 0.1 throughout
(the cost does not depend on them).

What is measured
----------------
**Time**: the wall-clock time of one full training step — ``zero_grad``, the objective, ``backward``
and the Adam step (``jacfree.train.make_adam``, fused) — exactly as ``jacfree train`` runs it, with
:class:`jacfree.bench.scaling.TrainingStep`. All variants of one model train the SAME model
instance with one optimiser; before every step (untimed) the parameters are restored, so every
timed step runs on identical weights. The variants are interleaved — one step of each per round,
the order rotated every round (:func:`jacfree.bench.timing.time_interleaved`) — so a drift of the
machine's speed hits them alike and the ratios stay meaningful. Reported: the median over the
timed rounds (min, max, quartiles in the CSV); ``speed-up`` = baseline median / variant median.
By default one thread (``--threads``) and wall-clock time; ``--clock process`` times the CPU time
of the process instead, which on a busy machine leaves out the waits for a core.

**Memory** (one extra, untimed step per variant; deterministic — it depends on the shapes, not on
the machine's load):

``peak MiB``
    the peak, during the step, of the total size of the live tensors *allocated by that step*:
    activations, everything the autograd graph keeps for the backward, temporaries, the gradients
    — on top of what is alive before the step (parameters, optimiser state, data), which every
    variant of a model shares. Measured by a ``TorchDispatchMode`` that sees every ATen op of the
    step (forward and backward), counts each new storage's bytes when an op creates it and
    subtracts them when a weak reference reports the storage freed (:class:`LiveTensorMemory`;
    the technique of ``torch.distributed._tools.MemTracker``). This is the CPU counterpart of
    ``torch.cuda.max_memory_allocated() − memory_allocated()`` before the step, without the
    caching allocator's rounding; on CUDA that allocator figure is reported as well
    (``cuda_peak_mib``).
``graph MiB``
    the peak total size of the tensors created during the step that the autograd graph saves for
    the backward pass (``torch.autograd.graph.saved_tensors_hooks``; parameters and the data batch,
    which exist anyway, are not counted; each storage once) — the "computing graph" the paper
    contrasts: the double-backward graph of SSM/DSM versus the plain forward graph of FD
    (:class:`SavedTensorMemory`).

Both exclude the Python-side objects, allocator slack and a kernel's internal scratch buffers;
they measure tensors, which is what the paper's GPU memory figures are made of. What every variant
of a model holds anyway — parameters and Adam's two moments — is reported once per model as
``state_mib``; a GPU-style total is ``state_mib + peak_mib`` (plus the data batch).

Targets: FD-SSM ≥ 1.7× faster than SSM, FD-SSM-VR ≥ 1.3× faster than SSM-VR, FD-DSM at
least as fast as DSM, each with a lower peak memory; checked for the parallel FD form of every model
and printed after the table (``--strict`` makes a missed target the exit status).

Outputs (in ``--out``, default ``bench-results/sm/``): ``sm.csv`` (one row per model and variant),
``environment.json`` (versions, threads, CPU, the run's settings, the memory definitions, the
target checks) and ``sm.png`` (time and peak memory per variant, one panel pair per model).
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from ..data import load
from ..plots import pyplot, save_figure
from ..scorematching import DKEF, NCSN, NICE, MLPEnergy
from ..scorematching.ebm import ResEBM
from ..scorematching.ncsn import annealed_loss
from ..scorematching.objectives import LABELS, ModelType, Settings, objective
from .common import (
    DTYPES,
    PLOT_HINT,
    PROFILE_COLUMNS,
    add_timing_arguments,
    apply_timing_arguments,
    choice_list,
    describe_setup,
    environment_info,
    flatten,
    profile_columns,
    resolve_device,
    write_csv,
    write_json,
)
from .scaling import TrainingStep
from .timing import CLOCKS, time_interleaved

__all__ = [
    "CSV_COLUMNS",
    "MODELS",
    "PAIRS",
    "TARGETS",
    "VARIANTS",
    "BenchCase",
    "LiveTensorMemory",
    "MLPScoreNet",
    "SavedTensorMemory",
    "Variant",
    "build_case",
    "check_targets",
    "format_table",
    "measure_memory",
    "sm_benchmark",
    "write_outputs",
]

DEFAULT_OUT = Path("bench-results") / "sm"
CSV_NAME = "sm.csv"
PLOT_NAME = "sm.png"
ENV_NAME = "environment.json"
MIB = 2**20

EPS = 0.1  # FD step (L2 norm of the direction), the paper's DKEF/NICE/NCSN value
SIGMA = 0.1  # DSM noise level

#: model name -> one-line description (see the module docs)
MODELS: dict[str, str] = {
    "mlp": "MLP energy D->H->H->1 (softplus)",
    "mlp-ref": "MLP energy D->H->H->1 (softplus), objectives in plain PyTorch (reference code)",
    "scorenet": "MLP score network D->H->H->D (softplus)",
    "ncsn": "NCSN U-Net score network (16 channels), annealed sigma^2-weighted objective",
    "nice": "NICE energy -log p (4 additive couplings, 4 hidden layers of width H, softplus)",
    "dkef": "DKEF on wine-red (200 inducing points, 3 kernels, width-30 features), alpha solved "
    "per step",
    "ebm": "ResEBM deep energy on 28x28 images (base width 16, 1 block per stage; the paper's "
    "128 and 2), multiscale DSM",
}
DEFAULT_MODELS: tuple[str, ...] = ("mlp", "mlp-ref", "scorenet", "nice", "dkef", "ncsn", "ebm")

#: autograd baseline of each pair -> (the FD objective, the model type it applies to)
PAIRS: dict[str, tuple[str, str]] = {
    "ssm": ("fd_ssm", "energy"),
    "dsm": ("fd_dsm", "energy"),
    "ssm_vr": ("fd_ssm_vr", "score"),
    "mdsm": ("fd_mdsm", "ebm"),
}
#: minimum speed-up of the parallel FD form over the pair's baseline (the library's targets)
TARGETS: dict[str, float] = {"ssm": 1.7, "ssm_vr": 1.3, "dsm": 1.0, "mdsm": 1.0}


@dataclass(frozen=True)
class Variant:
    """One timed objective: ``objective`` (a :mod:`jacfree.sm` estimator name) in a ``pair``.

    ``name`` is the CSV key: the objective, with ``_seq`` for the sequential FD form.
    ``parallel`` is the FD evaluation mode (``None`` for autograd objectives).
    """

    objective: str
    pair: str
    parallel: bool | None = None

    @property
    def name(self) -> str:
        return self.objective + ("_seq" if self.parallel is False else "")

    @property
    def fd(self) -> bool:
        return self.objective.startswith("fd_")

    @property
    def is_baseline(self) -> bool:
        return self.objective == self.pair

    @property
    def label(self) -> str:
        base = LABELS[self.objective]
        if self.parallel is None:
            return base
        return f"{base} ({'parallel' if self.parallel else 'sequential'})"


def _pair_variants(pair: str, extra: Sequence[str] = ()) -> tuple[Variant, ...]:
    fd = PAIRS[pair][0]
    return (
        Variant(pair, pair),
        *(Variant(e, pair) for e in extra),
        Variant(fd, pair, True),
        Variant(fd, pair, False),
    )


ENERGY_VARIANTS = (*_pair_variants("ssm", ("ssm_vr",)), *_pair_variants("dsm"))
SCORE_VARIANTS = _pair_variants("ssm_vr")
EBM_VARIANTS = _pair_variants("mdsm")
#: variants timed per model kind
VARIANTS: dict[str, tuple[Variant, ...]] = {
    "energy": ENERGY_VARIANTS,
    "score": SCORE_VARIANTS,
    "ebm": EBM_VARIANTS,
}

#: columns of ``sm.csv``, in order
CSV_COLUMNS: tuple[str, ...] = (
    "model",
    "pair",
    "variant",
    "label",
    "objective",
    "fd",
    "parallel",
    "median_ms",
    "min_ms",
    "max_ms",
    "q1_ms",
    "q3_ms",
    "iqr_ms",
    "mean_ms",
    "repeats",
    "speedup",
    "peak_mib",
    "graph_mib",
    "peak_ratio",
    "graph_ratio",
    "cuda_peak_mib",
    "target_speedup",
    "meets_target",
    "dim",
    "batch",
    "hidden",
    "params",
    "state_mib",
    "data",
    "warmup",
    "optimizer",
    "device",
    "dtype",
    "threads",
    "clock",
    "description",
    *PROFILE_COLUMNS,
)


# -- memory -----------------------------------------------------------------------------------


class LiveTensorMemory(TorchDispatchMode):
    """Peak bytes of the live tensors allocated while the mode is active (any device).

    Every ATen op of the region — forward, ``autograd.grad`` and ``backward`` alike (the dispatch
    mode is part of the thread-local state the autograd engine carries along) — passes through
    :meth:`__torch_dispatch__`. Storages seen first as an op's *input* existed before (parameters,
    optimiser state, data) and count zero; a storage first seen as an op's *output* is a new
    allocation: its ``nbytes`` are added to :attr:`current` and a weak reference subtracts them
    when the storage is freed. :attr:`peak` is the maximum of :attr:`current`; :attr:`allocated`
    the total ever allocated. Views and in-place results share their base's storage and count
    once. Tensor storages keep their Python object alive exactly as long as the C++ storage lives,
    so the weak reference fires when the memory is released, not when a Python name goes.

    Example:
        >>> import torch
        >>> with LiveTensorMemory() as mem:
        ...     a = torch.ones(1000)      # +4000 bytes
        ...     b = a * 2                 # +4000
        ...     del a                     # -4000
        >>> mem.peak, mem.current
        (8000, 4000)
    """

    def __init__(self) -> None:
        super().__init__()
        self.current = 0
        self.peak = 0
        self.allocated = 0
        self._bytes: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: dict[int, weakref.ref] = {}

    def bytes_of(self, storage: torch.UntypedStorage) -> int:
        """Bytes counted for ``storage``: its size if allocated in the region, else 0."""
        return int(self._bytes.get(storage, 0))

    def _freed(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._refs.pop(key, None)

    def _see(self, t: Tensor, output: bool) -> None:
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # pragma: no cover - storage-less tensors
            return
        if st in self._bytes:
            return
        n = int(st.nbytes()) if output else 0
        self._bytes[st] = n
        if n:
            key = id(st)
            self._refs[key] = weakref.ref(st, lambda _ref, k=key, b=n: self._freed(k, b))
            self.current += n
            self.allocated += n
            self.peak = max(self.peak, self.current)

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, Tensor):
                self._see(t, output=False)
        out = func(*args, **kwargs)
        for t in tree_flatten(out)[0]:
            if isinstance(t, Tensor):
                self._see(t, output=True)
        return out


class SavedTensorMemory:
    """Peak bytes of the tensors that the autograd graph saves for backward, within a region.

    A context manager around ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd
    saves (in the forward pass and in ``create_graph`` backward passes) is passed to the pack hook,
    which counts its storage once if ``live`` (an active :class:`LiveTensorMemory`) saw it being
    allocated in the region — parameters and the data batch, which exist anyway, count zero. The
    bytes are subtracted when the storage is freed; :attr:`peak` is the maximum. The hooks keep
    the saved tensor itself (identity pack/unpack), so double backward works unchanged.
    """

    def __init__(self, live: LiveTensorMemory) -> None:
        self.live = live
        self.current = 0
        self.peak = 0
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self._refs: dict[int, weakref.ref] = {}
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _freed(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._refs.pop(key, None)

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st not in self._seen:
            n = self.live.bytes_of(st)
            self._seen[st] = n
            if n:
                key = id(st)
                self._refs[key] = weakref.ref(st, lambda _ref, k=key, b=n: self._freed(k, b))
                self.current += n
                self.peak = max(self.peak, self.current)
        return t

    @staticmethod
    def _unpack(t: Tensor) -> Tensor:
        return t

    def __enter__(self) -> SavedTensorMemory:
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


@dataclass(frozen=True)
class MemoryStats:
    """Bytes of one training step (see the module docs): ``peak``, ``graph`` and, on CUDA, the
    caching allocator's ``cuda_peak`` (``None`` elsewhere)."""

    peak: int
    graph: int
    cuda_peak: int | None = None


def measure_memory(step: TrainingStep, device: torch.device | str = "cpu") -> MemoryStats:
    """Peak live-tensor bytes and autograd-graph bytes of one ``step.step()`` (after a reset).

    Two untimed steps: one under :class:`LiveTensorMemory` alone, for the peak (identity pack
    hooks may hold a saved output in a reference cycle with its node and so delay its release),
    one under it together with :class:`SavedTensorMemory`; on CUDA a third without either, between
    ``torch.cuda.reset_peak_memory_stats`` and ``max_memory_allocated``.
    """
    device = torch.device(device)
    step.reset()
    with LiveTensorMemory() as live:
        step.step()
    peak = live.peak
    step.reset()
    with LiveTensorMemory() as live2, SavedTensorMemory(live2) as saved:
        step.step()
    graph = saved.peak
    cuda_peak = None
    if device.type == "cuda":
        step.reset()
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step.step()
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device) - before
    return MemoryStats(peak, graph, cuda_peak)


# -- models -----------------------------------------------------------------------------------


class MLPScoreNet(nn.Module):
    r"""A score network ``s(x) = MLP(x) ∈ R^D`` (``D → H → … → H → D``, smooth activation).

    The MLP score model of the paper's implicit-encoder VAE/WAE experiments (there on the latent,
    d = 32, width 256), at D = 784 here so that it matches the MLP energy's size. Row-wise, so
    the FD batch ``[x + v, x − v]`` may be concatenated.
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (1000, 1000)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.Softplus()]
            width = h
        layers.append(nn.Linear(width, dim))
        self.dim = dim
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@dataclass
class BenchCase:
    """One model of the benchmark: the module, its batches and one loss per variant."""

    name: str
    module: nn.Module
    batches: list[Tensor]
    losses: dict[str, Callable[[Tensor], Tensor]]
    variants: tuple[Variant, ...]
    dim: int
    batch: int
    hidden: int | None
    data: str
    lr: float = 1e-4
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def params(self) -> int:
        return sum(p.numel() for p in self.module.parameters() if p.requires_grad)


def _library_losses(
    variants: Sequence[Variant],
    model: ModelType,
    settings: Settings,
    prepare: Callable[[Tensor], tuple[Callable[..., Tensor], Tensor]],
) -> dict[str, Callable[[Tensor], Tensor]]:
    """One loss per variant from the objective registry: ``prepare(x) -> (model, points)``
    (DKEF solves α on half the batch and scores the other half; others return ``x``)."""

    def make(v: Variant) -> Callable[[Tensor], Tensor]:
        loss = objective(v.objective, model).bind(
            replace(settings, parallel=v.parallel is not False)
        )

        def run(x: Tensor) -> Tensor:
            return loss(*prepare(x))

        return run

    return {v.name: make(v) for v in variants}


def _energy_losses(
    prepare: Callable[[Tensor], tuple[Callable[..., Tensor], Tensor]], projection: str
) -> dict[str, Callable[[Tensor], Tensor]]:
    """Losses of :data:`ENERGY_VARIANTS` (ε = 0.1, σ = 0.1)."""
    settings = Settings(eps=EPS, sigma=SIGMA, projection=projection)
    return _library_losses(ENERGY_VARIANTS, "energy", settings, prepare)


def _score_losses(net: nn.Module) -> dict[str, Callable[[Tensor], Tensor]]:
    """Losses of :data:`SCORE_VARIANTS`; for an :class:`NCSN`, its annealed form
    (:func:`~jacfree.scorematching.ncsn.annealed_loss`): every sample draws a level σ_b, is
    perturbed to ``x + σ_b n`` and weighted by ``σ_b²``."""
    if not isinstance(net, NCSN):
        settings = Settings(eps=EPS, projection="gaussian")
        return _library_losses(SCORE_VARIANTS, "score", settings, lambda x: (net, x))
    return {
        v.name: lambda x, v=v: annealed_loss(
            net, x, v.objective, eps=EPS, projection="gaussian", parallel=v.parallel is not False
        )
        for v in SCORE_VARIANTS
    }


# plain-PyTorch objectives, written as in the reference code (no checks, no library helpers)


def _plain_ssm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    v = torch.randn_like(x)
    logp = -f(x)
    (s,) = torch.autograd.grad(logp.sum(), x, create_graph=True)
    sv = (s * v).sum(-1)
    (hv,) = torch.autograd.grad(sv.sum(), x, create_graph=True)
    return ((hv * v).sum(-1) + 0.5 * sv**2).mean()


def _plain_sphere(x: Tensor) -> Tensor:
    g = torch.randn_like(x)
    return g * (EPS / g.norm(dim=-1, keepdim=True))


def _plain_fd_ssm(f: Callable[[Tensor], Tensor], x: Tensor, parallel: bool) -> Tensor:
    v = _plain_sphere(x)
    if parallel:
        e0, ep, em = f(torch.cat([x, x + v, x - v])).chunk(3)
    else:
        e0, ep, em = f(x), f(x + v), f(x - v)
    d = x.shape[-1]
    return (d / EPS**2 * ((ep - em) ** 2 / 8 + 2 * e0 - ep - em)).mean()


def _plain_dsm(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    n = torch.randn_like(x)
    xt = (x + SIGMA * n).requires_grad_(True)
    (s,) = torch.autograd.grad(-f(xt).sum(), xt, create_graph=True)
    return 0.5 * (s + n / SIGMA).square().sum(-1).mean()


def _plain_fd_dsm(f: Callable[[Tensor], Tensor], x: Tensor, parallel: bool) -> Tensor:
    n = torch.randn_like(x)
    xt = x + SIGMA * n
    v = _plain_sphere(x)
    if parallel:
        ep, em = f(torch.cat([xt + v, xt - v])).chunk(2)
    else:
        ep, em = f(xt + v), f(xt - v)
    proj = 0.5 * (em - ep) + (v * n).sum(-1) / SIGMA
    d = x.shape[-1]
    return (d / (2 * EPS**2) * proj**2).mean()


def _plain_losses(net: nn.Module) -> dict[str, Callable[[Tensor], Tensor]]:
    def f(y: Tensor) -> Tensor:
        return net(y).squeeze(-1)

    out: dict[str, Callable[[Tensor], Tensor]] = {}
    for v in ENERGY_VARIANTS:
        if v.objective == "ssm_vr":
            continue
        if v.objective == "ssm":
            out[v.name] = lambda x: _plain_ssm(f, x)
        elif v.objective == "dsm":
            out[v.name] = lambda x: _plain_dsm(f, x)
        elif v.objective == "fd_ssm":
            out[v.name] = lambda x, p=bool(v.parallel): _plain_fd_ssm(f, x, p)
        else:
            out[v.name] = lambda x, p=bool(v.parallel): _plain_fd_dsm(f, x, p)
    return out


def _image_data(
    data: str, dim: int, n: int, generator: torch.Generator
) -> tuple[Tensor, tuple[int, ...], int | None]:
    """``n`` training rows for the D-dimensional models: ``(x, per-sample shape, levels)``."""
    if data == "gaussian":
        return torch.randn(n, dim, generator=generator), (dim,), None
    ds = load(data)
    if ds.dim != dim:
        raise ValueError(
            f"dataset {data!r} has D = {ds.dim}, but --dim {dim} was asked for; use --dim "
            f"{ds.dim}, or --data gaussian for synthetic data of any dimension."
        )
    x = ds.train[:n].to(torch.float32)
    return x, tuple(x.shape[1:]), ds.levels


def _unit_scale(x: Tensor, levels: int | None, generator: torch.Generator) -> Tensor:
    """Quantised values → ``(x + u)/levels ∈ [0, 1)`` (uniform dequantisation)."""
    if not levels:
        return x
    return (x + torch.rand(x.shape, generator=generator)) / levels


def build_case(
    name: str,
    *,
    dim: int = 784,
    hidden: int = 1000,
    batch: int = 128,
    data: str = "mnist-5k",
    dkef_batch: int = 200,
    n_batches: int = 4,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> BenchCase:
    """Build the model, the pre-generated batches and the losses of benchmark model ``name``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}.")
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "dkef":
        ds = load("wine-red")
        rows = ds.train
        B = dkef_batch
        if not 4 <= B <= len(rows):
            raise ValueError(
                f"--dkef-batch must be between 4 and {len(rows)} (the wine-red training rows), "
                f"got {B}."
            )
        model: nn.Module = DKEF(ds.dim)
        perm = torch.randperm(len(rows), generator=gen)
        order = perm[torch.arange(n_batches * B) % len(rows)]  # wraps round if too few rows
        batches = list(rows[order].split(B))
        model.remember(batches[0])  # inducing points from the data (first batch), as in training
        dkef = model
        assert isinstance(dkef, DKEF)

        def energy_of(x: Tensor) -> tuple[Callable[[Tensor], Tensor], Tensor]:
            half = x.shape[0] // 2
            alpha = dkef.solve_alpha(x[:half])
            return (lambda y: dkef.energy(y, alpha)), x[half:]

        losses = _energy_losses(energy_of, "rademacher")
        case = BenchCase(
            name,
            model,
            batches,
            losses,
            ENERGY_VARIANTS,
            ds.dim,
            B,
            30,
            "wine-red",
            lr=1e-2,
            description=MODELS[name],
        )
        return _to(case, device, dtype)

    for value, what in ((dim, "--dim"), (hidden, "--hidden"), (batch, "--batch")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{what} must be a positive integer, got {value!r}.")
    raw, shape, levels = _image_data(data, dim, batch * n_batches, gen)
    x = _unit_scale(raw, levels, gen)
    batches = list(x.split(batch))[:n_batches]
    if len(batches[-1]) < batch:
        raise ValueError(
            f"{data!r} holds too few rows for {n_batches} batches of {batch}; lower --batch."
        )
    flat = [b.reshape(len(b), -1) for b in batches]
    H = hidden
    if name in ("mlp", "mlp-ref"):
        energy = MLPEnergy(dim, hidden=(H, H))
        if name == "mlp":
            losses = _energy_losses(lambda y: (energy, y), "gaussian")
            variants = ENERGY_VARIANTS
        else:
            losses = _plain_losses(energy.net)
            variants = tuple(v for v in ENERGY_VARIANTS if v.name in losses)
        case = BenchCase(name, energy, flat, losses, variants, dim, batch, H, data)
    elif name == "scorenet":
        net = MLPScoreNet(dim, (H, H))
        case = BenchCase(name, net, flat, _score_losses(net), SCORE_VARIANTS, dim, batch, H, data)
    elif name == "nice":
        nice = NICE(dim, couplings=4, hidden=H, hidden_layers=4)
        if levels:  # logit space of the dequantised images, as NICE is trained on MNIST
            flat = [torch.logit(b.clamp(1e-3, 1 - 1e-3)) for b in flat]
        losses = _energy_losses(lambda y: (nice.energy, y), "rademacher")
        case = BenchCase(name, nice, flat, losses, ENERGY_VARIANTS, dim, batch, H, data)
    elif name == "ebm":
        side = math.isqrt(dim)
        if side * side != dim or side < 4:
            raise ValueError(f"ebm models square images: --dim must be a square >= 16, got {dim}.")
        img = (1, side, side) if len(shape) != 3 else shape
        ebm = ResEBM(img, width=16, depth=1)
        imgs = [b.reshape(len(b), *img) for b in batches]
        # the paper's deep-EBM settings: σ_b = linspace(0.05, 1.2), σ0 = 0.1, ε = 0.05
        losses = _library_losses(EBM_VARIANTS, "energy", Settings(eps=0.05), lambda x: (ebm, x))
        case = BenchCase(name, ebm, imgs, losses, EBM_VARIANTS, dim, batch, 16, data)
    else:  # ncsn
        side = math.isqrt(dim)
        if side * side != dim or side < 4:
            raise ValueError(
                f"ncsn models square images: --dim must be a square >= 16 (784 = 28x28), got {dim}."
            )
        img = (1, side, side) if len(shape) != 3 else shape
        ncsn = NCSN(img, channels=16)
        imgs = [b.reshape(len(b), *img) for b in batches]
        losses = _score_losses(ncsn)
        case = BenchCase(name, ncsn, imgs, losses, SCORE_VARIANTS, dim, batch, 16, data)
    case.description = MODELS[name]
    return _to(case, device, dtype)


def _to(case: BenchCase, device: torch.device | str, dtype: torch.dtype) -> BenchCase:
    case.module.to(device=device, dtype=dtype)
    case.batches = [b.to(device=device, dtype=dtype) for b in case.batches]
    return case


# -- the benchmark ----------------------------------------------------------------------------


def _check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def sm_benchmark(
    models: Sequence[str] = DEFAULT_MODELS,
    *,
    dim: int = 784,
    hidden: int = 1000,
    batch: int = 128,
    dkef_batch: int = 200,
    data: str = "mnist-5k",
    repeats: int | None = None,
    warmup: int = 2,
    budget: float = 20.0,
    min_repeats: int = 7,
    max_repeats: int = 200,
    memory: bool = True,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    n_batches: int = 4,
    clock: str = "wall",
    progress: bool = True,
    compile: str | None = None,
) -> list[dict[str, Any]]:
    """Time (and measure the memory of) one full training step per model and variant.

    Args:
        models: names from :data:`MODELS`.
        dim, hidden, batch: D, the hidden width H and B of the D-dimensional models.
        dkef_batch: B of ``dkef`` (half solves α, half is scored).
        data: ``"mnist-5k"`` (or another dataset of dimension ``dim``) or ``"gaussian"``.
        repeats: timed rounds per model; ``None`` fits them in ``budget`` seconds per model
            (at least ``min_repeats``, at most ``max_repeats``).
        warmup: untimed rounds per model first.
        memory: also measure the memory of every variant (two untimed steps each).
        device, dtype: where and in which precision the models and data live.
        seed: seeds the weights and the data.
        clock: ``"wall"`` (wall-clock time, for a quiet machine) or ``"process"`` (CPU time of
            the process: with one thread it leaves out the waits for a core on a busy machine).
        compile: ``torch.compile`` mode of every variant's loss, or ``None`` (eager). Memory is
            measured on eager steps only (its saved-tensor hooks see no compiled graph).

    Returns:
        One dict per (model, variant) with the columns of :data:`CSV_COLUMNS`; times in ms,
        memory in MiB; ``speedup`` is the pair baseline's median over the variant's, the
        ``*_ratio`` columns the variant's memory over the baseline's.
    """
    models = list(models)
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise ValueError(f"unknown or no models {bad or models}; choose from {', '.join(MODELS)}.")
    if len(set(models)) != len(models):
        raise ValueError(f"models must be distinct, got {models}.")
    for value, what in ((warmup, "warmup"), (n_batches, "n_batches")):
        _check_int(value, what, 0 if what == "warmup" else 1)
    if repeats is not None:
        _check_int(repeats, "repeats")
    if not (isinstance(budget, int | float) and budget > 0):
        raise ValueError(f"budget must be a positive number of seconds, got {budget!r}.")
    if clock not in CLOCKS:
        raise ValueError(f"unknown clock {clock!r}; choose from {', '.join(CLOCKS)}.")
    device = resolve_device(device)
    if dtype not in DTYPES.values():
        raise ValueError(
            f"dtype must be torch.float32 or torch.float64, got {dtype} (the FD forms refuse "
            "half precision: the differences cancel leading digits)."
        )
    rows: list[dict[str, Any]] = []
    for name in models:
        case = build_case(
            name,
            dim=dim,
            hidden=hidden,
            batch=batch,
            data=data,
            dkef_batch=dkef_batch,
            n_batches=n_batches,
            seed=seed,
            device=device,
            dtype=dtype,
        )
        rows += _run_case(
            case,
            repeats=repeats,
            warmup=warmup,
            budget=budget,
            min_repeats=min_repeats,
            max_repeats=max_repeats,
            memory=memory,
            device=device,
            dtype=dtype,
            clock=clock,
            progress=progress,
            compile=compile,
        )
        del case
        gc.collect()
    return rows


def _run_case(
    case: BenchCase,
    *,
    repeats: int | None,
    warmup: int,
    budget: float,
    min_repeats: int,
    max_repeats: int,
    memory: bool,
    device: torch.device,
    dtype: torch.dtype,
    clock: str,
    progress: bool,
    compile: str | None = None,
) -> list[dict[str, Any]]:
    first: TrainingStep | None = None
    steps: dict[str, TrainingStep] = {}
    for v in case.variants:
        steps[v.name] = TrainingStep(
            case.module,
            v.name,
            case.batches,
            case.lr,
            loss_fn=case.losses[v.name],
            optimizer=None if first is None else first.optimizer,
            initial=None if first is None else first.initial,
            compile=compile,
        )
        first = first or steps[v.name]
    if progress:
        print(
            f"[sm] {case.name}: D={case.dim}, B={case.batch}, {case.params:,} parameters; "
            f"timing {', '.join(steps)} ...",
            file=sys.stderr,
        )
    stats = time_interleaved(
        {k: s.step for k, s in steps.items()},
        setup={k: s.reset for k, s in steps.items()},
        repeats=repeats,
        warmup=warmup,
        device=device,
        budget=budget,
        min_repeats=min_repeats,
        max_repeats=max_repeats,
        clock=clock,
    )
    for k, s in steps.items():
        if s.last_loss is None or not bool(torch.isfinite(s.last_loss)):
            raise FloatingPointError(
                f"{k} on {case.name} produced a non-finite loss ({s.last_loss}); the timings "
                "would be meaningless. Try --dtype float64 or a smaller --hidden."
            )
    profiles = {k: profile_columns(s.step, device, compile) for k, s in steps.items()}
    mem: dict[str, MemoryStats] = {}
    if memory and compile is None:
        if progress:
            print(f"[sm] {case.name}: measuring memory ...", file=sys.stderr)
        mem = {k: measure_memory(s, device) for k, s in steps.items()}
    if first is not None:
        first.reset()
    state_mib = _state_bytes(first) / MIB if first is not None else None
    rows = []
    by_name = {v.name: v for v in case.variants}
    for v in case.variants:
        base = v.pair
        summary = stats[v.name].summary("ms")
        m, mb = mem.get(v.name), mem.get(base)
        target = TARGETS[v.pair] if v.fd and v.parallel else None
        speedup = stats[base].median / stats[v.name].median
        row: dict[str, Any] = {
            "model": case.name,
            "pair": v.pair,
            "variant": v.name,
            "label": by_name[v.name].label,
            "objective": v.objective,
            "fd": v.fd,
            "parallel": v.parallel,
            **{k: summary[k] for k in CSV_COLUMNS if k in summary},
            "repeats": stats[v.name].n,
            "speedup": speedup,
            "peak_mib": None if m is None else m.peak / MIB,
            "graph_mib": None if m is None else m.graph / MIB,
            "peak_ratio": None if m is None or mb is None or not mb.peak else m.peak / mb.peak,
            "graph_ratio": None if m is None or mb is None or not mb.graph else m.graph / mb.graph,
            "cuda_peak_mib": None if m is None or m.cuda_peak is None else m.cuda_peak / MIB,
            "target_speedup": target,
            "meets_target": None,
            "dim": case.dim,
            "batch": case.batch,
            "hidden": case.hidden,
            "params": case.params,
            "state_mib": state_mib,
            "data": case.data,
            "warmup": warmup,
            "optimizer": steps[v.name].optimizer_name,
            "device": str(device),
            "dtype": str(dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(),
            "clock": clock,
            "description": case.description,
            **profiles[v.name],
        }
        if target is not None:
            ok = speedup >= target
            if m is not None and mb is not None:
                ok = ok and m.peak < mb.peak
            row["meets_target"] = ok
        rows.append(row)
    if progress:
        medians = ", ".join(f"{k} {stats[k].median * 1e3:.1f} ms" for k in steps)
        print(f"[sm] {case.name}: {stats[first.variant].n} rounds; {medians}", file=sys.stderr)
    return rows


def _state_bytes(step: TrainingStep) -> int:
    """Bytes alive before every step and shared by all variants: parameters and optimiser state
    (after the warm-up, Adam's two moments per parameter)."""
    seen: set[int] = set()
    total = 0
    tensors = list(step.params)
    for state in step.optimizer.state.values():
        tensors += [t for t in state.values() if isinstance(t, Tensor)]
    for t in tensors:
        st = t.untyped_storage()
        if st.data_ptr() not in seen:
            seen.add(st.data_ptr())
            total += st.nbytes()
    return total


# -- analysis and outputs ---------------------------------------------------------------------


def check_targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One line per parallel FD variant: its speed-up and peak memory against its target."""
    lines = []
    base_rows = {(r["model"], r["variant"]): r for r in rows}
    for r in rows:
        if r.get("target_speedup") is None:
            continue
        base = base_rows.get((r["model"], r["pair"]))
        mem = ""
        if r.get("peak_ratio") is not None and base is not None:
            mem = (
                f"; peak memory {r['peak_mib']:.3g} vs {base['peak_mib']:.3g} MiB "
                f"({r['peak_ratio']:.2f}x, target < 1)"
            )
        verdict = "met" if r["meets_target"] else "MISSED"
        lines.append(
            f"{r['model']:>8}  {r['label'].split(' (')[0]} vs {LABELS[r['pair']]}: "
            f"{r['speedup']:.2f}x faster (target >= {r['target_speedup']:g}){mem}  [{verdict}]"
        )
    return lines


def _fmt(value: object, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """Text table: per model, every variant's median ms, IQR, speed-up and memory."""
    header = [
        "model",
        "variant",
        "ms/step",
        "IQR ms",
        "speed-up",
        "peak MiB",
        "peak/base",
        "graph MiB",
        "graph/base",
    ]
    lines: list[list[str]] = []
    for r in rows:
        lines.append(
            [
                r["model"],
                r["label"],
                _fmt(r["median_ms"], ".2f"),
                _fmt(r["iqr_ms"], ".2f"),
                _fmt(r["speedup"], ".2f"),
                _fmt(r["peak_mib"], ".2f"),
                _fmt(r["peak_ratio"], ".2f"),
                _fmt(r["graph_mib"], ".2f"),
                _fmt(r["graph_ratio"], ".2f"),
            ]
        )
    widths = [max(len(h), *(len(c[i]) for c in lines)) for i, h in enumerate(header)]
    left = {0, 1}

    def fmt_row(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    out = [fmt_row(header)]
    previous = None
    for r, cells in zip(rows, lines, strict=True):
        key = (r["model"], r["pair"])
        if previous is not None and key != previous:
            out.append("")
        previous = key
        out.append(fmt_row(cells))
    return "\n".join(out)


def plot_sm(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Horizontal bars: median ms per step (left) and peak MiB (right), one row per variant."""
    plt = pyplot(PLOT_HINT)
    n = len(rows)
    fig, (ax_t, ax_m) = plt.subplots(
        1, 2, figsize=(11, 0.32 * n + 1.6), sharey=True, layout="constrained"
    )
    ys = list(range(n))[::-1]
    colors = []
    for r in rows:
        colors.append("C3" if not r["fd"] else ("C0" if r["parallel"] else "C2"))
    labels = [f"{r['model']}: {r['label']}" for r in rows]
    ax_t.barh(ys, [r["median_ms"] for r in rows], color=colors)
    ax_t.errorbar(
        [r["median_ms"] for r in rows],
        ys,
        xerr=[
            [r["median_ms"] - r["q1_ms"] for r in rows],
            [r["q3_ms"] - r["median_ms"] for r in rows],
        ],
        fmt="none",
        ecolor="k",
        lw=0.8,
    )
    for y, r in zip(ys, rows, strict=True):
        if r["fd"]:
            ax_t.text(r["median_ms"], y, f" {r['speedup']:.2f}x", va="center", fontsize=7)
    ax_t.set_xscale("log")
    ax_t.set_yticks(ys)
    ax_t.set_yticklabels(labels, fontsize=7)
    ax_t.set_xlabel("ms per training step (median; whiskers: IQR)\nlabels: speed-up vs baseline")
    peaks = [r["peak_mib"] for r in rows]
    if all(p is not None for p in peaks):
        ax_m.barh(ys, peaks, color=colors)
        for y, r in zip(ys, rows, strict=True):
            if r["fd"] and r["peak_ratio"] is not None:
                ax_m.text(r["peak_mib"], y, f" {r['peak_ratio']:.2f}x", va="center", fontsize=7)
        ax_m.set_xscale("log")
        ax_m.set_xlabel("peak MiB allocated by the step\nlabels: ratio to the baseline's")
    else:
        ax_m.text(0.5, 0.5, "memory not measured", ha="center", transform=ax_m.transAxes)
    for ax in (ax_t, ax_m):
        ax.grid(True, axis="x", which="both", alpha=0.3)
    from matplotlib.patches import Patch

    fig.legend(
        handles=[
            Patch(color="C3", label="autograd (the pair's baseline: its first bar)"),
            Patch(color="C0", label="FD, parallel"),
            Patch(color="C2", label="FD, sequential"),
        ],
        fontsize=7,
        loc="outside lower center",
        ncols=3,
    )
    fig.suptitle(title or "score matching: full training step", fontsize=10)
    return save_figure(fig, path, dpi=120)


MEMORY_DEFINITIONS = {
    "peak_mib": "peak during one training step of the total size of live tensors allocated by "
    "that step (activations, autograd-saved tensors, temporaries, gradients), above what was "
    "alive before it (parameters, optimiser state, data); counted per storage by a "
    "TorchDispatchMode over every ATen op, freed via weak references",
    "graph_mib": "peak total size of the tensors created during the step that autograd saves "
    "for the backward pass (saved_tensors_hooks; parameters and the data batch excluded)",
    "cuda_peak_mib": "CUDA only: torch.cuda.max_memory_allocated() during the step minus "
    "memory_allocated() before it",
    "state_mib": "parameters and Adam state of the model, alive before every step and shared by "
    "all its variants (not part of peak_mib)",
}


def write_outputs(
    rows: Sequence[dict[str, Any]],
    out: str | Path,
    *,
    config: dict[str, Any] | None = None,
    plot: bool = True,
    device: torch.device | str = "cpu",
) -> dict[str, Path]:
    """Write ``sm.csv``, ``environment.json`` and (unless ``plot=False``) ``sm.png``."""
    out = Path(out)
    paths = {"csv": write_csv(rows, out / CSV_NAME, CSV_COLUMNS)}
    env = {
        "environment": environment_info(device),
        "config": config or {},
        "memory_definitions": MEMORY_DEFINITIONS,
        "targets": {
            "speedup_of_parallel_fd": {f"fd_{k}_vs_{k}": v for k, v in TARGETS.items()},
            "peak_memory": "lower than the baseline's",
            "checks": check_targets(rows),
        },
    }
    paths["environment"] = write_json(env, out / ENV_NAME)
    if plot:
        first = rows[0] if rows else {}
        where = describe_setup(first.get("device"), first.get("dtype"), first.get("clock", "wall"))
        title = f"score matching, full training step (Adam): {where}"
        paths["plot"] = plot_sm(rows, out / PLOT_NAME, title)
    return paths


# -- command line -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``jacfree bench sm``."""
    parser.description = (
        "Time and memory of one full training step (zero_grad, objective, backward, Adam) of "
        "autograd score matching (SSM, SSM-VR, DSM) vs its finite-difference forms (Pang et al. "
        "2020), parallel and sequential, interleaved, per model."
    )
    parser.add_argument(
        "--models",
        type=choice_list(MODELS, "model(s)"),
        nargs="+",
        default=None,
        help="models, space- or comma-separated, among "
        + ", ".join(MODELS)
        + " (default: "
        + " ".join(DEFAULT_MODELS)
        + ")",
    )
    parser.add_argument("--batch", type=int, default=128, help="batch size B (default 128)")
    parser.add_argument(
        "--dkef-batch", type=int, default=200, help="batch of dkef (default 200 = 100 + 100)"
    )
    parser.add_argument(
        "--dim", type=int, default=784, help="D of mlp, scorenet, nice, ncsn (default 784)"
    )
    parser.add_argument(
        "--hidden", type=int, default=1000, help="hidden width H of mlp, scorenet, nice (1000)"
    )
    parser.add_argument(
        "--data",
        default="mnist-5k",
        help="data of the D-dimensional models: a dataset of dimension D (default mnist-5k) "
        "or 'gaussian'",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    add_timing_arguments(
        parser,
        budget=20.0,
        per="model",
        out=DEFAULT_OUT,
        outputs=f"{CSV_NAME}, {PLOT_NAME}, {ENV_NAME}",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if a parallel FD form misses its target",
    )


def run(args: argparse.Namespace) -> int:
    """Run ``jacfree bench sm``: benchmark, print the table and the target checks, write files."""
    models = flatten(args.models, DEFAULT_MODELS)
    for value, flag in ((args.batch, "--batch"), (args.dim, "--dim"), (args.hidden, "--hidden")):
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}.")
    apply_timing_arguments(args)
    config = {
        "models": models,
        "dim": args.dim,
        "hidden": args.hidden,
        "batch": args.batch,
        "dkef_batch": args.dkef_batch,
        "data": args.data,
        "eps": EPS,
        "sigma": SIGMA,
        "repeats": args.repeats,
        "warmup": args.warmup,
        "budget_s": args.budget,
        "min_repeats": args.min_repeats,
        "max_repeats": args.max_repeats,
        "memory": not args.no_memory,
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "clock": args.clock,
        "seed": args.seed,
        "optimizer": "jacfree.train.make_adam (lr 1e-4; 1e-2 for dkef)",
    }
    rows = sm_benchmark(
        models,
        dim=args.dim,
        hidden=args.hidden,
        batch=args.batch,
        dkef_batch=args.dkef_batch,
        data=args.data,
        repeats=args.repeats,
        warmup=args.warmup,
        budget=args.budget,
        min_repeats=args.min_repeats,
        max_repeats=args.max_repeats,
        memory=not args.no_memory,
        device=args.device,
        dtype=DTYPES[args.dtype],
        seed=args.seed,
        clock=args.clock,
        progress=not args.quiet,
        compile=args.compile,
    )
    print(
        f"score matching, {describe_setup(args.device, args.dtype, args.clock)}: "
        "median ms per full training step (zero_grad, objective, backward, Adam); speed-up = "
        "baseline ms / variant ms; memory: peak MiB allocated by the step, MiB saved by autograd"
    )
    for name in models:
        first = next(r for r in rows if r["model"] == name)
        print(
            f"  {name}: {first['description']}; D={first['dim']}, B={first['batch']}, "
            f"{first['params']:,} parameters ({_fmt(first['state_mib'], '.1f')} MiB with Adam's "
            f"state), data {first['data']}"
        )
    print(format_table(rows))
    checks = check_targets(rows)
    print("targets (parallel FD form vs its autograd baseline):")
    for line in checks:
        print("  " + line)
    paths = write_outputs(rows, args.out, config=config, plot=not args.no_plot, device=args.device)
    for path in paths.values():
        print(f"wrote {path}")
    missed = [r for r in rows if r.get("meets_target") is False]
    return 1 if args.strict and missed else 0

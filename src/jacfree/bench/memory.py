r"""Memory of one training step, on any device (one extra, untimed step; it depends on the shapes,
not on the machine's load): ``peak``, the live tensors the step allocates above what was alive
before it (:class:`LiveTensorMemory`), and ``graph``, the tensors autograd saves for the backward
pass (:class:`SavedTensorMemory`). Definitions and method: ``docs/bench-sm.md``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from .step import TrainingStep

MIB = 2**20

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


class _Freed:
    """Bytes of storages, each counted (:meth:`add`) until a weak reference reports it freed."""

    def __init__(self) -> None:
        self.current = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}

    def _freed(self, key: int, nbytes: int) -> None:
        self.current -= nbytes
        self._refs.pop(key, None)

    def add(self, st: torch.UntypedStorage, n: int) -> None:
        key = id(st)
        self._refs[key] = weakref.ref(st, lambda _ref, k=key, b=n: self._freed(k, b))
        self.current += n
        self.peak = max(self.peak, self.current)


class LiveTensorMemory(TorchDispatchMode, _Freed):
    """Peak bytes of the live tensors allocated while the mode is active (any device).

    Every ATen op of the region, forward and backward alike, passes through
    :meth:`__torch_dispatch__`: a storage first seen as an op's input existed before and counts
    zero; one first seen as an output is a new allocation, counted until a weak reference reports
    it freed. Views and in-place results share their base's storage and count once;
    :attr:`allocated` is the total ever allocated.

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
        TorchDispatchMode.__init__(self)
        _Freed.__init__(self)
        self.allocated = 0
        self._bytes: WeakIdKeyDictionary = WeakIdKeyDictionary()

    def bytes_of(self, storage: torch.UntypedStorage) -> int:
        """Bytes counted for ``storage``: its size if allocated in the region, else 0."""
        return int(self._bytes.get(storage, 0))

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
            self.add(st, n)
            self.allocated += n

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


class SavedTensorMemory(torch.autograd.graph.saved_tensors_hooks, _Freed):
    """Peak bytes of the tensors that the autograd graph saves for backward, within a region:
    a saved storage counts once, with the bytes ``live`` (an active :class:`LiveTensorMemory`)
    saw it allocated with — zero for parameters and the data batch. The identity hooks keep
    double backward unchanged."""

    def __init__(self, live: LiveTensorMemory) -> None:
        _Freed.__init__(self)
        self.live = live
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        super().__init__(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        st = t.untyped_storage()
        if st not in self._seen:
            self._seen[st] = n = self.live.bytes_of(st)
            if n:
                self.add(st, n)
        return t

    def __enter__(self) -> SavedTensorMemory:
        super().__enter__()
        return self


@dataclass(frozen=True)
class MemoryStats:
    """Bytes of one training step (module docs); ``cuda_peak``: CUDA's allocator, else ``None``."""

    peak: int
    graph: int
    cuda_peak: int | None = None


def measure_memory(step: TrainingStep, device: torch.device | str = "cpu") -> MemoryStats:
    """Peak live-tensor bytes and autograd-graph bytes of one ``step.step()`` (after a reset), in
    separate untimed steps (identity pack hooks may delay a saved output's release); on CUDA a
    third step gives ``torch.cuda.max_memory_allocated``'s figure."""
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


def state_bytes(step: TrainingStep) -> int:
    """Bytes alive before every step and shared by all variants: parameters and optimiser state
    (after the warm-up, Adam's two moments per parameter)."""
    states = step.optimizer.state.values()
    tensors = [*step.params, *(t for s in states for t in s.values() if isinstance(t, Tensor))]
    sizes = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(sizes.values())

r"""ActNorm: per-channel affine normalisation with data-dependent initialisation (Glow).

Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1×1 Convolutions", NeurIPS 2018, §3.1.
For an input of shape ``(B, C, *S)`` (images ``(B, C, H, W)``, vectors ``(B, C)``):

.. math::
    z_{c,s} = (x_{c,s} - m_c)\, e^{\ell_c}, \qquad
    \log|\det \partial z/\partial x| = |S| \textstyle\sum_c \ell_c ,

with ``|S|`` the number of spatial positions (H·W; 1 for vectors), ``m = loc`` and
``ℓ = log_scale`` the two parameters (one per channel).

**Data-dependent initialisation.** The first *training* batch — the first call in training mode
with gradients enabled (``flow.loss(x)`` or ``flow.log_prob(x)`` inside a training step) — sets
``loc`` to the per-channel mean and ``log_scale`` to minus the log of the per-channel standard
deviation of that batch (over batch and spatial positions), so the layer's outputs on it have zero
mean and unit variance per channel. Layers deeper in a flow are initialised on their own inputs,
in order. Afterwards they are ordinary parameters.

* The flag is the buffer ``initialized`` (saved in ``state_dict`` and in checkpoints), so a
  restored model is never re-initialised.
* Evaluation (``eval()`` mode or ``torch.no_grad()``) never initialises. Evaluating an
  uninitialised layer uses its current parameters (the identity) and warns once.
* Inside ``torch.func`` transforms (``vmap``, ``jacrev``) an uninitialised layer in training mode
  raises: there the batch statistics cannot be read.
* :func:`initialize_actnorm` initialises every layer of a model explicitly on a given batch, in any
  mode.
* Under ``torch.distributed`` the statistics are all-reduced over the processes, so every replica
  starts with the same parameters.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_int, values_visible
from .core import FlowLayer

__all__ = ["ActNorm", "initialize_actnorm"]

_FORCE_INIT = False
_UNINITIALISED_WARNING = (
    "ActNorm is used before its data-dependent initialisation (it is the identity until then). "
    "It initialises on the first training batch (train mode, gradients enabled); to initialise "
    "explicitly call jacfree.flows.initialize_actnorm(flow, x) with a representative batch."
)


@contextlib.contextmanager
def _forcing_init() -> Iterator[None]:
    global _FORCE_INIT
    previous, _FORCE_INIT = _FORCE_INIT, True
    try:
        yield
    finally:
        _FORCE_INIT = previous


class ActNorm(FlowLayer):
    """Per-channel affine map ``z = (x − loc)·exp(log_scale)`` with data-dependent init.

    Args:
        channels: C, the size of dimension 1 of the input ``(B, C, *spatial)``.
        eps: channels whose standard deviation on the initialisation batch is below ``eps`` keep
            ``log_scale = 0`` (a constant channel would otherwise get a huge scale).

    Parameters ``loc`` and ``log_scale`` have shape ``(C,)``; the buffer ``initialized`` (bool)
    records whether the data-dependent initialisation has run. See the module docstring for when
    it runs.
    """

    initialized: Tensor

    def __init__(self, channels: int, *, eps: float = 1e-6) -> None:
        super().__init__()
        self.channels = check_positive_int(channels, "channels")
        if not eps > 0:
            raise ValueError(f"eps must be positive, got {eps}.")
        self.eps = float(eps)
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))
        self.register_buffer("initialized", torch.tensor(False))
        # Python mirror of the buffer: read on every call without a device sync. Kept in step by
        # initialize() / mark_initialized() and by loading a state_dict (hook below).
        self._initialized = False
        self._warned = False
        self.register_load_state_dict_post_hook(_sync_flag)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, initialized={self.is_initialized}"

    @property
    def is_initialized(self) -> bool:
        """Whether the data-dependent initialisation has run (or was restored from a state)."""
        if not self._initialized:
            self._initialized = bool(self.initialized)
        return self._initialized

    def mark_initialized(self, value: bool = True) -> None:
        """Set the flag by hand (``False`` re-arms the data-dependent initialisation)."""
        self.initialized.fill_(bool(value))
        self._initialized = bool(value)
        self._warned = False

    # -- initialisation ----------------------------------------------------------------------

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set ``loc``/``log_scale`` so that the outputs on ``x`` have zero mean, unit variance.

        Statistics per channel over the batch and spatial positions (population variance, two
        passes), computed in float64 and summed over ``torch.distributed`` processes if the
        process group is initialised.
        """
        self._check_input(x)
        dims = [d for d in range(x.dim()) if d != 1]
        x64 = x.detach().double()
        stats = torch.cat([x64.sum(dims), x64.new_tensor([x.numel() // self.channels])])
        _sum_over_processes(stats)
        total = float(stats[-1])
        if total < 2:
            raise ValueError(
                "ActNorm's data-dependent initialisation needs at least 2 values per channel, got "
                f"{int(total)}; initialise with a larger batch "
                "(jacfree.flows.initialize_actnorm(flow, x))."
            )
        mean = stats[:-1] / total
        squares = (x64 - mean.view(self.channels, *([1] * (x.dim() - 2)))).square().sum(dims)
        _sum_over_processes(squares)
        std = (squares / total).sqrt()
        log_scale = torch.where(std > self.eps, -std.clamp_min(self.eps).log(), 0.0)
        self.loc.copy_(mean.to(self.loc.dtype))
        self.log_scale.copy_(log_scale.to(self.log_scale.dtype))
        self.mark_initialized(True)

    def _maybe_initialize(self, x: Tensor) -> None:
        if self.is_initialized:
            return
        if (self.training and torch.is_grad_enabled()) or _FORCE_INIT:
            if not values_visible(x):
                raise RuntimeError(
                    "ActNorm cannot run its data-dependent initialisation inside a torch.func "
                    "transform (vmap, jacrev, grad). Initialise it first: "
                    "jacfree.flows.initialize_actnorm(flow, x)."
                )
            self.initialize(x)
        elif not self._warned:
            self._warned = True
            warnings.warn(_UNINITIALISED_WARNING, UserWarning, stacklevel=3)

    # -- the layer protocol ------------------------------------------------------------------

    def _check_input(self, x: Tensor) -> None:
        if x.dim() < 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"ActNorm({self.channels}) expects input of shape (batch, {self.channels}, ...), "
                f"got {tuple(x.shape)}; build it with channels=x.shape[1]."
            )

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(self.channels, *([1] * (x.dim() - 2)))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._check_input(x)
        self._maybe_initialize(x)
        z = (x - self._view(self.loc, x)) * self._view(self.log_scale, x).exp()
        positions = math.prod(x.shape[2:])
        return z, (positions * self.log_scale.sum()).expand(x.shape[0])

    def inverse(self, z: Tensor) -> Tensor:
        self._check_input(z)
        if not self.is_initialized and not self._warned:
            self._warned = True
            warnings.warn(_UNINITIALISED_WARNING, UserWarning, stacklevel=2)
        return z * torch.exp(-self._view(self.log_scale, z)) + self._view(self.loc, z)


def _sum_over_processes(t: Tensor) -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)


def _sync_flag(module: nn.Module, incompatible_keys: Any) -> None:
    assert isinstance(module, ActNorm)
    module._initialized = bool(module.initialized)


def initialize_actnorm(
    module: nn.Module, x: Tensor, *, reinit: bool = False, context: Tensor | None = None
) -> int:
    """Run the data-dependent initialisation of every :class:`ActNorm` in ``module`` on ``x``.

    ``module`` is a :class:`~jacfree.flows.Flow` or a layer; one forward pass (no gradient) runs
    on ``x``, and each uninitialised ActNorm is initialised on its own input, in order, whatever
    the train/eval mode (with ``context`` for a conditional flow). ``reinit=True``
    re-initialises layers that already were. Returns the number of layers initialised.
    """
    layers = [m for m in module.modules() if isinstance(m, ActNorm)]
    if reinit:
        for m in layers:
            m.mark_initialized(False)
    todo = sum(not m.is_initialized for m in layers)
    with _forcing_init(), torch.no_grad():
        module(x) if context is None else module(x, context=context)
    return todo

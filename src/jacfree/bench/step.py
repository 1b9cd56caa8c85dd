"""One full training step of a model in one benchmark variant (``zero_grad``, loss, ``backward``,
the Adam step of ``jacfree.train.make_adam``, as ``jacfree train`` runs it), and its reset. A
flow's variants are its gradient modes and the no-log-det ``floor`` (:func:`floor_loss`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import check_choice
from ..flows import Flow, SquareAffine
from ..train import make_adam
from ..train.fit import COMPILE_MODES

#: the gradient modes a flow can be timed in (besides the no-log-det ``floor``)
FLOW_VARIANTS: tuple[str, ...] = ("exact", "relative", "selfnorm")


def normal_batches(
    shape: Sequence[int], n: int, seed: int, device: torch.device, dtype: torch.dtype
) -> list[Tensor]:
    """``n`` standard normal batches of ``shape`` (drawn in float64 from ``seed``: the same
    numbers in every dtype and on every device)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(*shape, generator=gen, dtype=torch.float64).to(device, dtype) for _ in range(n)
    ]


def floor_loss(flow: Flow, x: Tensor) -> Tensor:
    """The batch-mean NLL of ``flow`` **without** the log|det W| of its square affine layers
    (applied as plain ``F.linear``; the other layers' log-dets count): the exact loss plus
    Σ_k log|det W_k|, whose gradient w.r.t. W_k is the exact one plus W_k⁻ᵀ."""
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
    if variant in FLOW_VARIANTS:
        flow.set_gradient(variant)
        return flow.loss
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(FLOW_VARIANTS)}, floor.")


def compile_loss(loss_fn: Callable[[Tensor], Tensor], mode: str) -> Callable[[Tensor], Tensor]:
    """``torch.compile(loss_fn, mode=mode, fullgraph=True)``: the whole loss and its backward as
    one graph (jacfree's losses trace without a break). ``"reduce-overhead"`` also captures it as
    a CUDA graph on a GPU (static shapes: the benchmarks' batches all have one size)."""
    check_choice(mode, "compile mode", COMPILE_MODES)
    # a benchmark compiles one loss per variant, and variants built by one lambda share its code
    # object: allow a graph per variant instead of torch's default of eight per code object
    for name in ("recompile_limit", "cache_size_limit"):  # the name changed in torch 2.7
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 64))
    return torch.compile(loss_fn, mode=mode, fullgraph=True)


class TrainingStep:
    """``step()``: one full training step on the next pre-generated batch; ``reset()``
    (untimed): the parameters back to their values at construction.

    The loss is ``loss_fn(x)`` if given, else the variant's loss of a flow (:func:`variant_loss`).
    Steps that train ONE model share the first one's ``optimizer`` and ``initial`` snapshot.
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

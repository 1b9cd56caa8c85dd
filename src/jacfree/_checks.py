"""Argument checks shared by layers, flows and the training loop.

Every check raises an exception that names the problem *and* the fix, so a user never trains on
garbage silently.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor
from torch._C._functorch import is_functorch_wrapped_tensor

from ._compile import is_compiling


def values_visible(x: Tensor) -> bool:
    """False inside ``torch.func`` transforms (vmap, jacrev, ...) and while ``torch.compile``
    traces, where values cannot be read (or reading them would break the graph).

    Value checks (NaN/Inf, ranges) are skipped there; shape and dtype checks still run.
    """
    return not (is_compiling() or is_functorch_wrapped_tensor(x))


def all_finite(x: Tensor) -> bool:
    """Whether every value of the floating-point tensor ``x`` is finite (no NaN, no ±Inf).

    Exact, and one reduction in the common case: a sum is finite only if every term is (NaN and
    ±Inf propagate through it), so a finite ``x.sum()`` settles the question in one vectorised
    pass, without the four element-wise passes and boolean temporaries of
    ``torch.isfinite(x).all()`` (about 90x faster for a 384 x 784 float32 batch on one CPU core).
    Only a non-finite sum — a NaN/Inf in ``x``, or finite values whose sum overflows — falls back
    to the element-wise test. Not differentiated (the sum is taken of ``x.detach()``).
    """
    xd = x.detach()
    if bool(torch.isfinite(xd.sum())):
        return True
    return bool(torch.isfinite(xd).all())


def check_dtype(x: Tensor, dtype: torch.dtype | None, name: str = "x") -> Tensor:
    """Check that ``x`` has the dtype of the model's parameters (``None``: any)."""
    if dtype is not None and x.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {x.dtype} but the model's parameters are {dtype}; convert the "
            f"data with {name}.to({dtype}) or the model with model.to({x.dtype})."
        )
    return x


def check_samples(
    x: object,
    event_shape: tuple[int, ...],
    *,
    name: str = "x",
    finite: bool = True,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Check that ``x`` is a floating tensor of shape ``(batch, *event_shape)`` with finite values
    (and, if ``dtype`` is given, of that dtype: the model's).

    Returns ``x`` unchanged so the call can be used inline.
    """
    want = "(batch, " + ", ".join(map(str, event_shape)) + ")"
    if not isinstance(x, Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape {want}, got {type(x).__name__}; "
            f"convert it with torch.as_tensor({name}, dtype=torch.float32)."
        )
    if not x.is_floating_point():
        raise TypeError(
            f"{name} has integer/boolean dtype {x.dtype}; flows need floating-point input. "
            f"Convert it with {name}.float() (or .double()), and dequantise discrete data first "
            "(jacfree.flows.Dequantize)."
        )
    rank = len(event_shape) + 1
    if x.dim() != rank:
        if x.dim() == rank - 1:
            hint = f"add a batch dimension with {name}.unsqueeze(0)"
        elif rank == 2:
            hint = f"flatten each sample with {name}.flatten(1)"
        else:
            hint = f"reshape it with {name}.reshape(-1, {', '.join(map(str, event_shape))})"
        raise ValueError(
            f"{name} must have shape {want}, got rank {x.dim()} shape {tuple(x.shape)}; {hint}."
        )
    if tuple(x.shape[1:]) != tuple(event_shape):
        got = tuple(x.shape[1:])
        if rank == 2:
            raise ValueError(
                f"{name} has {got[0]} features but the model expects {event_shape[0]}; pass data "
                f"with {event_shape[0]} columns or build the model with features={got[0]}."
            )
        raise ValueError(
            f"{name} has per-sample shape {got} but the model expects {tuple(event_shape)}; "
            "reshape the data or build the model for this shape."
        )
    check_dtype(x, dtype, name)
    if finite and values_visible(x) and not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/Inf value(s); clean or impute the data before training "
            "(for example drop rows with ~torch.isfinite(x).all(1))."
        )
    return x


def check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """Check that ``value`` is an integer ≥ ``minimum`` and return it."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return value


def check_positive(value: object, name: str, meaning: str = "") -> float:
    """Check that ``value`` is a finite real number > 0 (not a bool) and return it as a float;
    ``meaning`` (what the number is) goes into the message."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        what = f" ({meaning})" if meaning else ""
        raise ValueError(f"{name} must be a finite number > 0{what}, got {value!r}.")
    return float(value)


def check_image_shape(shape: Sequence[int], name: str, advice: str = "") -> tuple[int, int, int]:
    """Check that ``shape`` is the event shape of one image, ``(channels, height, width)`` of
    positive integers, and return it as a tuple; ``name`` is what needs it, ``advice`` ends the
    message (default: an MNIST example)."""
    shape = tuple(shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(
            f"{name} needs image data, the event shape of one image (channels, height, width); "
            f"got {shape!r}. " + (advice or "E.g. (1, 28, 28) for MNIST.")
        )
    return shape  # type: ignore[return-value]


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    """Check that ``value`` is one of ``choices`` and return it."""
    if value not in choices:
        options = ", ".join(map(repr, choices))
        raise ValueError(f"unknown {name} {value!r}; choose one of {options}.")
    return value


def resolve_device(device: torch.device | str) -> torch.device:
    """``torch.device(device)``; ``"auto"`` is CUDA when available, else the CPU. A clear error
    when CUDA is asked for and absent (checked where the device enters, once)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device cuda was requested (--device cuda) but no CUDA device is available; use cpu."
        )
    return dev

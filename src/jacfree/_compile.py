"""Small shims for code that must also trace under ``torch.compile`` (torch ≥ 2.1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def is_compiling() -> bool:
    """Whether the caller is being traced by ``torch.compile`` (a Python constant there)."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling"):
        return compiler.is_compiling()
    return torch._dynamo.is_compiling()  # torch < 2.3


#: Marks a pure-Python helper whose result ``torch.compile`` takes as a constant: it is called
#: at trace time and never traced (torch ≥ 2.2; a no-op decorator before).
constant_result: Callable[[Callable[..., Any]], Callable[..., Any]] = getattr(
    torch.compiler, "assume_constant_result", lambda fn: fn
)

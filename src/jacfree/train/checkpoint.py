"""Checkpoint files: atomic writes, validated reads, clear errors.

A checkpoint is a ``torch.save`` dictionary of tensors and plain Python values (loadable with
``weights_only=True``), tagged with ``format = "jacfree-checkpoint"``. Writes go to a temporary
file in the same folder that is then renamed over the target, so an interrupted or failed run
never leaves a truncated file where a good checkpoint was. The file gets the permissions of
any new file under the user's umask (``0644`` under the usual ``022``), not the private ``0600``
of a temporary file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

FORMAT = "jacfree-checkpoint"
VERSION = 1
REQUIRED_KEYS = ("format", "version", "model_state")


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or not a jacfree checkpoint."""


def file_mode() -> int:
    """The permission bits of a new file under the current umask (``0o666 & ~umask``)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file in the same folder, which
    is flushed to disk and renamed over ``path``, so a reader (or a crash) never sees a half
    file. The file gets the permissions a new file has under the current umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write the UTF-8 ``text`` to ``path`` with :func:`write_atomic` (metrics, results)."""
    return write_atomic(path, lambda f: f.write(text.encode()))


def write_json_atomic(path: str | Path, value: Any) -> Path:
    """Write ``value`` as indented JSON (one trailing newline) with :func:`write_atomic`."""
    return write_text_atomic(path, json.dumps(value, indent=2) + "\n")


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Atomically write ``payload`` (plus format tags) to ``path``."""
    payload = {"format": FORMAT, "version": VERSION, **payload}
    return write_atomic(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint written by :func:`save_checkpoint`."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a folder; pass the checkpoint file inside it (best.pt or checkpoint.pt)."
        )
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}; check the path, or train a model first with "
            "`jacfree train --out <folder>`."
        )
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(err).__name__}: {err}); the file is "
            "damaged or truncated (for example by an interrupted copy). Restore it from a backup "
            "or retrain; jacfree itself writes checkpoints atomically."
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a jacfree checkpoint (no '{FORMAT}' tag); it was written by another "
            "program. Load plain state dicts with model.load_state_dict(torch.load(path))."
        )
    missing = [k for k in REQUIRED_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is incomplete: missing {', '.join(missing)}; retrain.")
    if payload["version"] > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload['version']}, newer than this jacfree "
            f"({VERSION}); upgrade jacfree to read it."
        )
    return payload

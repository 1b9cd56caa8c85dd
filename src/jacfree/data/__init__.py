"""Datasets: ``jf.data.names()``, ``jf.data.catalogue()``, ``jf.data.load(name, root=, seed=)``."""

from . import digits, toys  # noqa: F401  (registers the datasets)
from .registry import (
    Dataset,
    DatasetSpec,
    DatasetUnavailableError,
    catalogue,
    load,
    names,
    register,
    spec,
)

__all__ = [
    "Dataset",
    "DatasetSpec",
    "DatasetUnavailableError",
    "catalogue",
    "load",
    "names",
    "register",
    "spec",
]

"""Deprecated alias of :mod:`jacfree.kinds`, where model specs and kinds now live.

``from jacfree.models import build_model`` (and every other public name of
:mod:`jacfree.kinds`) keeps working, with a :class:`DeprecationWarning`; new code imports from
:mod:`jacfree.kinds`.
"""

import warnings

from . import kinds as _kinds
from .kinds import *  # noqa: F403  (the same public names)

__all__ = list(_kinds.__all__)

warnings.warn(
    "jacfree.models is deprecated; import from jacfree.kinds instead.",
    DeprecationWarning,
    stacklevel=2,
)

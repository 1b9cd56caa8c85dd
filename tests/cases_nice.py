"""Contract cases of NICE (Dinh et al. 2014): additive couplings and a diagonal scaling, alone,
and behind the dequantisation/logit pre-processing the image experiments use."""

from __future__ import annotations

from functools import partial

import jacfree as jf
from contract import LEVELS, Case, D

CASES = [
    Case("NICE", partial(jf.NICE, D, couplings=3, hidden=8, hidden_layers=2), "real"),
    Case(
        "NICE-dequantize-logit",
        lambda: jf.NICE(
            D,
            couplings=2,
            hidden=8,
            hidden_layers=1,
            preprocess=[jf.Dequantize(LEVELS), jf.LogitTransform(LEVELS, alpha=0.05)],
        ),
        "integer",
    ),
]

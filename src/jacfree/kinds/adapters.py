"""What the kind-agnostic reports of ``jacfree eval`` need from a trained model of any kind.

* :func:`model_samples` — samples on the data's scale, for the classifier-feature Fréchet
  distance (:func:`jacfree.scorematching.frechet.frechet_report`);
* :func:`model_score_fn` — the novelty score, for out-of-distribution detection
  (:func:`jacfree.scorematching.ood.ood_report`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .. import sample_noise
from .registry import data_output, model_input, model_kind, option
from .scorematching import ebm_samples

__all__ = ["model_samples", "model_score_fn"]


@torch.no_grad()
def model_samples(model: nn.Module, spec: dict[str, Any], n: int, *, seed: int = 0) -> Tensor:
    """``n`` samples of a ``jacfree train`` image model on the data's scale ``(n, C, H, W)``:
    the reference annealed Langevin sampler for ``ebm`` (spec options ``sample_*``), annealed
    Langevin for ``ncsn``, ``model.sample`` for flows."""
    levels = option(spec, "levels")
    if option(spec, "kind") == "ebm":
        unit = ebm_samples(model, spec, n, seed=seed)
        return (unit * levels - 0.5).clamp(0, levels - 1) if levels else unit
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    if option(spec, "kind") == "ncsn":
        x = model.sample(  # type: ignore[operator]
            n,
            n_steps_each=option(spec, "sample_steps", 20, int),
            step_lr=option(spec, "step_lr", 2e-5, float),
            generator=gen,
        )
    elif hasattr(model, "sample"):
        x = model.sample(n, generator=gen)  # type: ignore[operator]
    else:
        raise ValueError(f"model kind {option(spec, 'kind')!r} cannot draw samples")
    return data_output(x, spec)


def model_score_fn(
    model: nn.Module, spec: dict[str, Any]
) -> tuple[Callable[[Tensor], Tensor], str]:
    """The novelty score of a ``jacfree train`` model and its name: ``−log p(x)`` (nats) for
    models with a normalised density, the energy ``E`` of the (dequantised, unit-scaled) input for
    energy models (kinds ``ebm`` and ``energy-mlp``)."""
    kind = model_kind(spec)
    ref = next(model.parameters())
    if kind.has_density:

        def nll(b: Tensor) -> Tensor:
            return -model.log_prob(model_input(b.to(ref), model))  # type: ignore[operator]

        return nll, "-log p"
    if option(spec, "kind") in ("ebm", "energy-mlp"):
        levels = option(spec, "levels")

        def energy(b: Tensor) -> Tensor:
            b = b.to(ref)
            if levels:
                b = sample_noise.dequantise(b, levels)
            return model(b.reshape(len(b), *spec["data_shape"]))

        return energy, "energy"
    raise ValueError(
        f"model kind {option(spec, 'kind')!r} has neither a normalised density nor an energy; "
        "OOD scores need one (flows, nice, dkef, ebm, energy-mlp)."
    )

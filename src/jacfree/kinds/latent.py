r"""The ``vae-implicit`` and ``wae-implicit`` kinds of ``jacfree train``.

Implicit-encoder VAE / WAE (:class:`~jacfree.latent.implicit.ImplicitLatentModel`) on image data
``[0, levels)`` (e.g. ``mnist-5k``, ``fashion-mnist``). **What the model's density is of:** the
pixels are binarised, ``b = [u < x/(levels − 1)]`` with ``u ~ U(0, 1)`` — afresh for every training
step (dynamic binarisation, as the reference), once with a fixed seed for validation and test —
and the decoder is Bernoulli, so the model is a probability mass function on binary images
``{0, 1}^D``. Its test NLL (``ais_nll``, nats per image, by annealed importance sampling from the
prior to the posterior) is ``−log p(b)`` of the binarised test images; it is not a density of the
8-bit data, so no bits/dim on the original scale applies (``ais_bits_per_pixel`` is
``ais_nll / (D ln 2)``, bits per binary pixel).

Spec options (``--set KEY=VALUE``, ``--eps``, ``--hidden``, ``--layers``):

* ``objective`` — the score step's estimator, ``fd_ssm_vr`` (default) or ``ssm_vr``;
* ``eps`` (0.1), ``z_dim`` (32), ``hidden`` (256), ``layers`` (2 hidden layers per MLP), ``lam``
  (10, WAE only), ``time_score`` (true);
* validation (a short AIS on ``val_n`` = 100 validation images: ``val_ais_steps`` = 30 steps,
  2 chains, 5 leapfrog steps) and test (``ais_n`` = 100 test images, ``ais_chains`` = 16,
  ``ais_steps`` = 500, ``ais_leapfrog`` = 10, ``ais_step`` = 0.2 initial HMC step).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..latent.implicit import SCORE_OBJECTIVES, ImplicitLatentModel, binarize
from .registry import ModelKind, ModelSpec, option, register_model

__all__ = ["ais_report"]

OPTIONS = {
    "objective": SCORE_OBJECTIVES,
    "eps": float,
    "z_dim": int,
    "hidden": int,
    "layers": int,
    "time_score": bool,
    "val_n": int,
    "val_ais_steps": int,
    "ais_n": int | None,
    "ais_chains": int,
    "ais_steps": int,
    "ais_leapfrog": int,
    "ais_step": float,
}


def _builder(mode: str) -> Callable[[ModelSpec], nn.Module]:
    def build(spec: ModelSpec) -> nn.Module:
        if len(spec["data_shape"]) != 3:
            raise ValueError(
                f"{mode}-implicit models images (binarised pixels), e.g. --data mnist-5k; this "
                "dataset is not an image set."
            )
        spec["objective"] = option(spec, "objective", SCORE_OBJECTIVES[0])
        return ImplicitLatentModel(
            math.prod(spec["data_shape"]),
            option(spec, "z_dim", 32, int),
            mode=mode,  # type: ignore[arg-type]
            objective=spec["objective"],
            hidden=option(spec, "hidden", 256, int),
            layers=option(spec, "layers", 2, int),
            eps=option(spec, "eps", 0.1, float),
            lam=option(spec, "lam", 10.0, float),
            time_score=option(spec, "time_score", True, bool),
            data_shape=tuple(spec["data_shape"]),
            levels=option(spec, "levels"),
        )

    return build


def _objective(spec: ModelSpec) -> Callable[[nn.Module, Tensor], Tensor]:
    levels = option(spec, "levels")
    return lambda model, x: model.loss(binarize(x.flatten(1), levels))


def _fixed_binary(x: Tensor, levels: int | None, seed: int = 0) -> Tensor:
    gen = torch.Generator(device=x.device).manual_seed(seed)
    return binarize(x.flatten(1), levels, generator=gen)


def ais_report(
    model: nn.Module,
    x: Tensor,
    *,
    levels: int | None = None,
    n: int | None = None,
    chains: int = 16,
    steps: int = 500,
    batch_size: int = 100,
    seed: int = 0,
    **hmc: Any,
) -> dict[str, float]:
    """AIS NLL of the first ``n`` images of ``x``, binarised with a fixed seed (values in
    ``[0, levels)``, or in [0, 1] without ``levels``): the mean over images with its standard
    error over images, the Monte-Carlo standard error of that mean from the chains, and the mean
    acceptance rate. ``hmc``: the other keywords of the model's ``ais`` (``leapfrog``,
    ``step_size``)."""
    ref = next(model.parameters())
    x = x[:n] if n else x
    gen = torch.Generator(device=ref.device).manual_seed(seed)
    lp, se, acc = [], [], []
    model.eval()
    for chunk in x.split(batch_size):
        b = _fixed_binary(chunk.to(ref), levels, seed)
        res = model.ais(b, chains=chains, steps=steps, generator=gen, **hmc)
        lp.append(res.log_px.double().cpu())
        se.append(res.stderr.double().cpu())
        acc.append(res.accept.double().cpu())
    nll, mc = -torch.cat(lp), torch.cat(se)
    m, d = len(nll), x[0].numel()
    return {
        "ais_nll": float(nll.mean()),
        "ais_nll_stderr": float(nll.std() / math.sqrt(m)) if m > 1 else float("nan"),
        "ais_nll_n": m,
        "ais_mc_stderr": float(mc.pow(2).sum().sqrt() / m),
        "ais_bits_per_pixel": float(nll.mean()) / (d * math.log(2)),
        "ais_accept": float(torch.cat(acc).mean()),
        "ais_chains": chains,
        "ais_steps": steps,
    }


def _val(spec: ModelSpec) -> Callable[[nn.Module, Tensor], float]:
    levels = option(spec, "levels")
    n, steps = option(spec, "val_n", 100, int), option(spec, "val_ais_steps", 30, int)
    return lambda model, x: ais_report(
        model, x, levels=levels, n=n, chains=2, steps=steps, leapfrog=5, seed=1
    )["ais_nll"]


def _test(spec: ModelSpec) -> Callable[[nn.Module, Tensor], dict[str, float]]:
    def metrics(model: nn.Module, x: Tensor) -> dict[str, float]:
        n = spec.get("ais_n", 100)  # an explicit None means every test image
        return ais_report(
            model,
            x,
            levels=option(spec, "levels"),
            n=int(n) if n is not None else None,
            chains=option(spec, "ais_chains", 16, int),
            steps=option(spec, "ais_steps", 500, int),
            leapfrog=option(spec, "ais_leapfrog", 10, int),
            step_size=option(spec, "ais_step", 0.2, float),
        )

    return metrics


for _mode, _what in (
    ("vae", "VAE: ELBO with the entropy gradient from a conditional score net s(z, x)"),
    ("wae", "WAE: Bernoulli reconstruction + lam * KL(q(z) || p(z)) via a score net s(z)"),
):
    register_model(
        f"{_mode}-implicit",
        ModelKind(
            _builder(_mode),
            f"implicit-encoder {_what}, fitted every step by --objective "
            f"{'|'.join(SCORE_OBJECTIVES)}; binarised images, Bernoulli decoder; test NLL by AIS",
            objective=_objective,
            val_metric=_val,
            val_name="ais_nll",
            test_metrics=_test,
            has_density=False,
            options={**OPTIONS, **({"lam": float} if _mode == "wae" else {})},
            sampler="ancestrally (Bernoulli means)",
        ),
    )

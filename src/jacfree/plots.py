"""Plots written by the CLI: loss curves, image grids, 2-D densities (matplotlib, Agg backend).

matplotlib is an optional dependency (``pip install "jacfree[plot]"``); every function imports it
lazily and raises a clear error when it is missing.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


def pyplot(needs: str = "plotting needs matplotlib") -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; if matplotlib is missing, an
    ImportError that starts with ``needs`` and says how to install it."""
    try:
        import matplotlib
    except ImportError as err:
        raise ImportError(f'{needs}: install it with pip install "jacfree[plot]"') from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def loss_curve(
    history: list[dict[str, Any]],
    path: str | Path,
    title: str = "",
    objective: str = "training objective",
    unit: str = "nats per example",
) -> Path:
    """Training objective per epoch (left, titled ``objective``) and the exact metrics (right):
    the validation metric and, where the metrics hold it, the exact NLL of a training subset
    (``train_nll``), in ``unit``. Short runs get a marker on every epoch."""
    plt = pyplot()
    epochs = [row["epoch"] for row in history]
    first = history[0] if history else {}
    exact = [k for k in first if k.startswith("val_") and not k.endswith("_time_s")]
    exact += [k for k in ("train_nll",) if k in first]
    marker = "o" if len(epochs) <= 40 else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    axes[0].plot(epochs, [row["train_loss"] for row in history], color="C0", marker=marker)
    axes[0].set(xlabel="epoch", ylabel=f"training objective ({unit})")
    axes[0].set_title(objective, fontsize=9)
    labels = {"train_nll": "exact NLL, training subset", "val_nll": "exact NLL, validation"}
    for colour, key in zip(("C1", "C2", "C3"), exact, strict=False):
        label = labels.get(key, f"{key[4:]}, validation (exact)")
        axes[1].plot(
            epochs, [row[key] for row in history], marker=marker, label=label, color=colour
        )
    if exact:
        axes[1].legend()
    axes[1].set(xlabel="epoch", ylabel=unit, title="exact metrics")
    for ax in axes:
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def _tile(images: Tensor, levels: int | None, cols: int | None = None) -> Tensor:
    """A mosaic (C, rows·(H+1)+1, cols·(W+1)+1) of images ``(n, C, H, W)`` in [0, 1], row by
    row: square unless ``cols`` is given."""
    images = images.detach().float().cpu()
    if levels:
        images = images / (levels - 1)
    images = images.clamp(0, 1)
    n = len(images)
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    c, h, w = images.shape[1:]
    grid = torch.ones(c, rows * (h + 1) + 1, cols * (w + 1) + 1)
    for i, img in enumerate(images):
        r, k = divmod(i, cols)
        grid[:, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + k * (w + 1) : 1 + k * (w + 1) + w] = img
    return grid


def image_grids(
    panels: dict[str, Tensor],
    path: str | Path,
    levels: int | None = None,
    title: str = "",
    cols: int | None = None,
) -> Path:
    """Save grids of images side by side, one per ``{panel title: (n, C, H, W) images}``
    (C = 1 or 3); e.g. samples through the exact and through the learned inverse. ``cols``
    images per row (default: square grids), e.g. one row per class."""
    plt = pyplot()
    grids = [_tile(images, levels, cols) for images in panels.values()]
    aspect = grids[0].shape[1] / grids[0].shape[2]
    fig, axes = plt.subplots(1, len(grids), figsize=(6 * len(grids), 6 * aspect), squeeze=False)
    for ax, name, grid in zip(axes[0], panels, grids, strict=True):
        ax.imshow(
            grid.permute(1, 2, 0).squeeze(-1).numpy(),
            cmap="gray",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.axis("off")
        if name:
            ax.set_title(name)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def image_grid(
    images: Tensor, path: str | Path, levels: int | None = None, title: str = ""
) -> Path:
    """Save a square grid of images shaped ``(n, C, H, W)`` (C = 1 or 3)."""
    return image_grids({title: images}, path, levels)


@torch.no_grad()
def density_2d(
    model: nn.Module,
    data: Tensor,
    path: str | Path,
    *,
    samples: Tensor | None = None,
    resolution: int = 200,
    title: str = "",
) -> Path:
    """Data histogram, model density on a grid, and (optionally) model samples, for 2-D data.

    The grid spans the data's range plus a margin; the title reports the integral of the
    density over the grid, a quick check that the model is normalised (≈ 1 when the grid covers
    the mass).
    """
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        return _density_panels(
            lambda p: model.log_prob(p.to(param)),
            data,
            path,
            samples=samples,
            resolution=resolution,
            title=title,
            normalise=False,
            samples_title="model samples",
        )
    finally:
        model.train(was_training)


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (creating its folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return path


@torch.no_grad()
def energy_density_2d(
    log_density: Any,
    data: Tensor,
    path: str | Path,
    *,
    samples: Tensor | None = None,
    like: Tensor | None = None,
    resolution: int = 200,
    title: str = "",
) -> Path:
    """Data histogram, the density ``exp(log p̃)`` of an unnormalised 2-D model normalised on the
    plotting grid, and (optionally) model samples (e.g. from Langevin dynamics).

    ``log_density(points) -> (N,)`` is evaluated on float32 CPU points, moved to the device and
    dtype of ``like`` when given (e.g. a parameter of the model); the grid
    spans the data's range plus a margin of 0.5, so the normaliser is a Riemann sum over the
    panel (exact up to the mass outside the panel and the grid resolution).
    """
    return _density_panels(
        lambda p: log_density(p if like is None else p.to(like)),
        data,
        path,
        samples=samples,
        resolution=resolution,
        title=title,
        normalise=True,
        samples_title="model samples (Langevin)",
    )


def _density_panels(
    log_density: Any,
    data: Tensor,
    path: str | Path,
    *,
    samples: Tensor | None,
    resolution: int,
    title: str,
    normalise: bool,
    samples_title: str,
) -> Path:
    """The panels of :func:`density_2d` and :func:`energy_density_2d`: data, ``exp(log_density)``
    on a grid over the data's range plus 0.5 (``normalise``: divided by its Riemann sum over the
    grid; otherwise the sum is reported as the mass on the grid) and the samples if given."""
    plt = pyplot()
    data = data.detach().float().cpu()
    lo = data.min(0).values - 0.5
    hi = data.max(0).values + 0.5
    xs = torch.linspace(float(lo[0]), float(hi[0]), resolution)
    ys = torch.linspace(float(lo[1]), float(hi[1]), resolution)
    gx, gy = torch.meshgrid(xs, ys, indexing="xy")
    pts = torch.stack([gx.flatten(), gy.flatten()], 1)
    logp = torch.cat([log_density(p).detach().double().cpu() for p in pts.split(10_000)])
    log_cell = math.log(float((xs[1] - xs[0]) * (ys[1] - ys[0])))
    log_mass = float(torch.logsumexp(logp, 0)) + log_cell
    if normalise:
        dens, density_title = (logp - log_mass).exp(), "exp(log p~), normalised on the grid"
    else:
        dens, density_title = logp.exp(), f"model density (mass on grid {math.exp(log_mass):.3f})"
    panels = 3 if samples is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 4))
    extent = (float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1]))
    box = [[extent[0], extent[1]], [extent[2], extent[3]]]
    axes[0].hist2d(data[:, 0].numpy(), data[:, 1].numpy(), bins=resolution // 2, range=box)
    axes[0].set_title("data")
    axes[1].imshow(
        dens.reshape(resolution, resolution).numpy(),
        origin="lower",
        extent=extent,
        cmap="viridis",
        aspect="auto",
    )
    axes[1].set_title(density_title)
    if samples is not None:
        s = samples.detach().float().cpu()
        axes[2].hist2d(s[:, 0].numpy(), s[:, 1].numpy(), bins=resolution // 2, range=box)
        axes[2].set_title(samples_title)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)

"""Pictures: image grids (samples, reconstructions), the loss curve, titled grids with axes
(interpolations, traversals, manifolds) and latent maps. Tensors in, PNG out."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from .runs import atomic_write


def grid(images: torch.Tensor, ncol: int = 8, pad: int = 2, scale: int = 2) -> np.ndarray:
    """Tile (N, C, H, W) images in [0, 1] into one uint8 array (rows, cols[, 3])."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = -(-n // ncol)
    canvas = torch.ones(c, nrow * (h + pad) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top:top + h, left:left + w] = images[i]
    array = (canvas * 255).round().to(torch.uint8).numpy()
    array = array[0] if c == 1 else array.transpose(1, 2, 0)
    return array.repeat(scale, axis=0).repeat(scale, axis=1)


def save_png(array: np.ndarray, path: str | Path) -> None:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write(path, buf.getvalue())


def save_grid(images: torch.Tensor, path: str | Path, ncol: int = 8) -> None:
    save_png(grid(images, ncol), path)


def save_rows(batches: list[torch.Tensor], path: str | Path, ncol: int = 8) -> None:
    """Bands of rows, one row from each batch in turn: images 0..ncol-1 of every batch, then the next
    ncol of every batch, and so on. The batches are (N, C, H, W) in [0, 1] with the same N."""
    batches = [b.detach().cpu() for b in batches]
    if len({len(b) for b in batches}) > 1:
        raise ValueError(f"batches of different sizes: {[len(b) for b in batches]}")
    rows = []
    for start in range(0, len(batches[0]), ncol):
        rows += [b[start:start + ncol] for b in batches]
    save_grid(torch.cat([_pad_row(r, ncol) for r in rows]), path, ncol)


def save_reconstructions(originals: torch.Tensor, recons: torch.Tensor, path: str | Path,
                         ncol: int = 8) -> None:
    """Rows of originals, each directly above a row of their reconstructions."""
    save_rows([originals, recons], path, ncol)


def save_loss_curve(history: list[dict], path: str | Path, title: str = "") -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    ax.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    if all("val_loss" in r for r in history):
        ax.plot(epochs, [r["val_loss"] for r in history], "s--", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def _pad_row(images: torch.Tensor, ncol: int) -> torch.Tensor:
    """Fill a short last row with white so originals and reconstructions stay aligned."""
    missing = ncol - len(images)
    if missing <= 0:
        return images
    return torch.cat([images, torch.ones(missing, *images.shape[1:], dtype=images.dtype)])


# ---------------------------------------------------------------- titled figures (aelab.pictures)

DPI = 100
MIN_WIDTH = 420         # pixels: room for a two-line title above a narrow grid


def cell_centres(n: int, size: int, pad: int = 2, scale: int = 2) -> list[float]:
    """Pixel centres of the n cells along one side of a ``grid`` of images ``size`` pixels wide."""
    return [(pad + i * (size + pad)) * scale + (size * scale - 1) / 2 for i in range(n)]


def save_titled_grid(images: torch.Tensor, path: str | Path, title: str, ncol: int, *,
                     xlabel: str = "", xticks: list[str] = (), ylabel: str = "",
                     yticks: list[str] = (), scale: int = 2) -> None:
    """A ``grid`` of images (N, C, H, W) in [0, 1] drawn pixel for pixel in a matplotlib figure,
    with a title above and, when given, a tick label under each column / beside each row and the
    axis labels. The PNG is the grid plus fixed margins (``titled_grid_size``)."""
    plt = _pyplot()
    array = grid(images, ncol, scale=scale)
    h, w = array.shape[:2]
    (width, height), (left, bottom) = titled_grid_size(w, h, bool(xlabel or xticks),
                                                       bool(ylabel or yticks))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes([left / width, bottom / height, w / width, h / height])
    ax.imshow(array, cmap="gray" if array.ndim == 2 else None, vmin=0, vmax=255,
              interpolation="nearest", aspect="auto")
    (hi, wi), pad = images.shape[-2:], 2
    ax.set_xticks(cell_centres(len(xticks), wi, pad, scale), _thin(list(xticks), (wi + pad) * scale))
    ax.set_yticks(cell_centres(len(yticks), hi, pad, scale), _thin(list(yticks), (hi + pad) * scale))
    ax.tick_params(labelsize=7, length=2)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    fig.suptitle(title, y=1 - 4 / height, va="top", fontsize=9)
    _save_figure(fig, path)


def titled_grid_size(w: int, h: int, xaxis: bool, yaxis: bool
                     ) -> tuple[tuple[int, int], tuple[int, int]]:
    """(width, height) of ``save_titled_grid``'s PNG for a w x h grid, and the grid's (left, bottom)."""
    left, right, top, bottom = (72 if yaxis else 10), 10, 42, (44 if xaxis else 10)
    width = max(w + left + right, MIN_WIDTH)
    left += (width - w - left - right) // 2      # a narrow grid sits in the middle
    return (width, h + top + bottom), (left, bottom)


def save_latent_map(panels: list[tuple[np.ndarray, str, str, str]], labels: np.ndarray | None,
                    path: str | Path, title: str) -> None:
    """Scatter panels side by side, points coloured by class: one (points (N, 2), panel title,
    x label, y label) per panel. Up to 10 classes get a legend, more a colour bar; without labels
    the points are one colour. Each panel is 520 x 460 pixels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), dpi=DPI,
                             squeeze=False)
    classes = [] if labels is None else np.unique(labels)
    for ax, (points, name, xlabel, ylabel) in zip(axes[0], panels):
        if labels is None:
            ax.scatter(points[:, 0], points[:, 1], s=5, color="tab:blue", alpha=0.7)
        elif len(classes) <= 10:
            for c in classes:
                at = labels == c
                ax.scatter(points[at, 0], points[at, 1], s=5, alpha=0.7, label=str(c),
                           color=plt.get_cmap("tab10")(int(c) % 10))
        else:
            shown = ax.scatter(points[:, 0], points[:, 1], s=5, alpha=0.7, c=labels, cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
    if labels is not None and len(classes) <= 10:
        axes[0, -1].legend(title="class", loc="center left", bbox_to_anchor=(1.01, 0.5),
                           markerscale=3, fontsize=8, title_fontsize=8, frameon=False)
    elif labels is not None:
        fig.colorbar(shown, ax=axes[0, -1], label="class")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save_figure(fig, path)


def _thin(labels: list[str], spacing: int, room: int = 34) -> list[str]:
    """Blank all but every k-th tick label when cells are too narrow (pixels) to label each one."""
    every = max(1, -(-room // max(spacing, 1)))
    return [text if i % every == 0 else "" for i, text in enumerate(labels)]


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save_figure(fig, path: str | Path) -> None:
    import matplotlib.pyplot as plt
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())

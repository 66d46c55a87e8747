"""Pictures: image grids (samples, reconstructions) and the loss curve. Tensors in, PNG out."""
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

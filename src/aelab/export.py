"""Codes and images written as files for other programs: NumPy (.npz, .npy) or CSV.

Every file is written atomically (``runs.atomic_write``): a failure leaves no partial file.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from torch import Tensor

from .errors import ConfigError
from .runs import atomic_write

CODE_FORMATS = (".npz", ".npy", ".csv")
IMAGE_FORMATS = (".png", ".npz", ".npy")


def check_suffix(path: str | Path, formats: tuple[str, ...]) -> str:
    """The file's suffix (lower case) if it is one of ``formats``, and its folder exists."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in formats:
        raise ConfigError(f"output must end in {', '.join(formats)}; got {path}")
    if not path.resolve().parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {path.resolve().parent} does not exist")
    if path.is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder")
    return suffix


def write_codes(path: str | Path, codes: Tensor, labels: Tensor | None) -> None:
    """Codes (N, D) as float32, with each image's index in the split and its label if known.

    .npz: arrays ``codes``, ``index`` and (with labels) ``labels``; .npy: the codes alone;
    .csv: a header ``index,label,z0,...`` and one row per image (label empty when unknown).
    """
    codes_np = codes.detach().float().cpu().numpy()
    labels_np = None if labels is None else labels.cpu().numpy().astype(np.int64)
    index = np.arange(len(codes_np), dtype=np.int64)
    suffix = check_suffix(path, CODE_FORMATS)
    if suffix == ".csv":
        atomic_write(path, _codes_csv(codes_np, labels_np))
    elif suffix == ".npy":
        atomic_write(path, _npy_bytes(codes_np))
    else:
        arrays = {"codes": codes_np, "index": index}
        if labels_np is not None:
            arrays["labels"] = labels_np
        atomic_write(path, _npz_bytes(arrays))


def write_images(path: str | Path, images: Tensor, labels: Tensor | None = None) -> None:
    """Images (N, C, H, W) in [0, 1] as float32: .npy alone, .npz as ``images`` (+ ``labels``)."""
    images_np = images.detach().float().cpu().numpy()
    if check_suffix(path, (".npz", ".npy")) == ".npy":
        atomic_write(path, _npy_bytes(images_np))
        return
    arrays = {"images": images_np}
    if labels is not None:
        arrays["labels"] = labels.cpu().numpy().astype(np.int64)
    atomic_write(path, _npz_bytes(arrays))


def _codes_csv(codes: np.ndarray, labels: np.ndarray | None) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "label", *(f"z{j}" for j in range(codes.shape[1]))])
    for i, row in enumerate(codes.tolist()):
        writer.writerow([i, "" if labels is None else int(labels[i]), *(f"{v:.9g}" for v in row)])
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()

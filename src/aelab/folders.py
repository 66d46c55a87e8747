"""A user's own data (``--data-dir``): IDX, NumPy or image files, read into a RawData.

What ``--data-dir PATH`` accepts, tried in this order:

- IDX: a folder of MNIST-named IDX files (``train-images-idx3-ubyte[.gz]`` and the rest);
- NumPy: a folder with ``train.npz`` (arrays ``images``, optional ``labels``; ``x`` / ``y`` also
  work) and optionally ``test.npz``, or with ``train_images.npy`` (optional ``train_labels.npy``,
  ``test_images.npy``, ``test_labels.npy``); or one ``.npz`` / ``.npy`` file, all of it training
  images;
- image files (PNG, JPEG, BMP, GIF, TIFF, WebP): a folder with ``train/`` and optionally ``test/``,
  or the folder itself as the training set. Inside, images either sit in one subfolder per class
  (the labels are the subfolders' places in name order, as torchvision's ImageFolder gives them)
  or loose, without labels. The run records the class names (run.json, ``data.classes``).

Without test images a fixed sixth of the training images is held out as the test split.
Arrays are (N, H, W), (N, C, H, W) or (N, H, W, C) with C 1 or 3, or (N, D) with D a square
number of grey pixels; pixel values are 0..255 integers or floats in [0, 1] (rounded to 256
levels: splits are kept as uint8). Image files become grey (1 channel) when every image is grey
(R = G = B in every pixel), else RGB (3 channels, alpha dropped); all must have one size.
Anything else is a DataError naming the file and the problem.
"""
from __future__ import annotations

import math
import sys
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from .datasets import RawData, find_idx_files, load_idx_folder, raw_data
from .errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA")
IMAGE_KEYS, LABEL_KEYS = ("images", "x"), ("labels", "y")
PROGRESS_FROM = 2000          # image files: a progress bar from this many on (on a terminal)


def load_data_dir(path: str | Path) -> RawData:
    """Read ``--data-dir``: IDX, NumPy or image files (see the module docstring)."""
    path = Path(path)
    if path.is_file() and path.suffix in (".npz", ".npy"):
        train_x, train_y = read_array_file(path)
        return raw_data("numpy", path, train_x, train_y, None, None)
    if path.is_file():
        raise DataError(f"{path} is a file, not data aelab reads: give a folder (IDX, NumPy or "
                        "image files) or one .npz/.npy file")
    if not path.is_dir():
        raise DataError(f"data folder not found: {path}")
    if find_idx_files(path):
        return load_idx_folder(path)
    numpy_parts = _numpy_parts(path)
    if numpy_parts:
        return load_numpy_folder(path, numpy_parts)
    if _image_files(path, recursive=True):
        return load_image_folder(path)
    raise DataError(f"no data in {path}: expected MNIST-named IDX files, train.npz or "
                    f"train_images.npy, or image files (PNG, JPEG, ...)")


# --- NumPy ----------------------------------------------------------------------------------------

def _numpy_parts(folder: Path) -> dict[str, Path]:
    names = ("train.npz", "test.npz", "train_images.npy", "train_labels.npy",
             "test_images.npy", "test_labels.npy")
    return {name: folder / name for name in names if (folder / name).is_file()}


def load_numpy_folder(folder: Path, parts: dict[str, Path]) -> RawData:
    if "train.npz" in parts:
        train_x, train_y = read_array_file(parts["train.npz"])
        test_x, test_y = read_array_file(parts["test.npz"]) if "test.npz" in parts else (None, None)
    elif "train_images.npy" in parts:
        train_x, train_y = _npy_pair(parts, "train")
        test_x, test_y = _npy_pair(parts, "test") if "test_images.npy" in parts else (None, None)
    else:
        raise DataError(f"no training images in {folder}: expected train.npz or train_images.npy")
    return raw_data("numpy", folder, train_x, train_y, test_x, test_y)


def read_array_file(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Images (uint8 (N, C, H, W)) and labels (int64 (N,) or None) from a .npz or .npy file."""
    arrays = _load_arrays(path)
    images = next((arrays[k] for k in IMAGE_KEYS if k in arrays), None)
    if images is None:
        raise DataError(f"{path}: no image array; expected one named {' or '.join(IMAGE_KEYS)}, "
                        f"found {', '.join(arrays) or 'none'}")
    labels = next((arrays[k] for k in LABEL_KEYS if k in arrays), None)
    images = as_image_array(images, path)
    return images, None if labels is None else as_labels(labels, len(images), path)


def _npy_pair(parts: dict[str, Path], split: str) -> tuple[np.ndarray, np.ndarray | None]:
    path = parts[f"{split}_images.npy"]
    images = as_image_array(_load_arrays(path)["images"], path)
    labels_path = parts.get(f"{split}_labels.npy")
    if labels_path is None:
        return images, None
    return images, as_labels(_load_arrays(labels_path)["images"], len(images), labels_path)


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a .npz (by name) or a .npy (as 'images'); pickled objects are refused."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            return {"images": loaded}
        with loaded:
            return {name: loaded[name] for name in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:    # zip: a broken .npz
        reason = "it holds Python objects (pickle), which aelab does not load" \
            if "pickle" in str(e).lower() else (str(e).splitlines() or [type(e).__name__])[0]
        raise DataError(f"{path}: not a readable NumPy file: {reason}") from None


def as_image_array(a: np.ndarray, path: Path) -> np.ndarray:
    """uint8 (N, C, H, W) from (N, H, W), (N, C, H, W), (N, H, W, C) or (N, D) pixels."""
    a = np.asarray(a)
    if a.ndim >= 1 and len(a) == 0:
        raise DataError(f"{path}: holds no images (shape {a.shape})")
    if a.ndim == 2 and math.isqrt(a.shape[1]) ** 2 == a.shape[1]:
        side = math.isqrt(a.shape[1])
        a = a.reshape(len(a), 1, side, side)
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim == 4 and a.shape[1] not in (1, 3) and a.shape[3] in (1, 3):
        a = a.transpose(0, 3, 1, 2)
    if a.ndim != 4 or a.shape[1] not in (1, 3) or len(a) == 0 or min(a.shape[2:]) < 1:
        raise DataError(f"{path}: images of shape {tuple(np.shape(a))} are not (N, H, W), "
                        f"(N, C, H, W) or (N, H, W, C) with C 1 or 3, or (N, D) with D square")
    return np.ascontiguousarray(to_uint8(a, path))


def to_uint8(a: np.ndarray, path: Path) -> np.ndarray:
    """0..255 integers as they are; floats in [0, 1] scaled by 255 and rounded; else a DataError."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == bool:
        return a.astype(np.uint8) * 255
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise DataError(f"{path}: images of type {a.dtype} are not numbers")
    if np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all():
        raise DataError(f"{path}: images hold NaN or infinite values")
    lo, hi = a.min(), a.max()
    if np.issubdtype(a.dtype, np.floating) and lo >= 0 and hi <= 1:
        return np.rint(a * 255).astype(np.uint8)
    if lo >= 0 and hi <= 255 and (np.issubdtype(a.dtype, np.integer) or (a == np.rint(a)).all()):
        return a.astype(np.uint8)
    raise DataError(f"{path}: pixel values run from {lo} to {hi}; expected 0..255 integers or "
                    f"floats in [0, 1]")


def as_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """int64 (N,) class indices 0, 1, ...; a DataError for another count, shape or value."""
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: {y.shape[0] if y.ndim else 0} labels of shape {y.shape} for "
                        f"{n} images; expected one label per image")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating)
                                                   and np.isfinite(y).all() and (y == np.rint(y)).all())):
        raise DataError(f"{path}: labels must be whole numbers (class indices), found {y.dtype}")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: labels must be class indices 0, 1, ...; found {y.min()}")
    return y.astype(np.int64)


# --- image files ----------------------------------------------------------------------------------

def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def load_image_folder(folder: Path) -> RawData:
    if (folder / "test").is_dir() and not (folder / "train").is_dir():
        raise DataError(f"{folder} has a test/ folder but no train/ folder beside it; put the "
                        "training images in train/")
    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    test_dir = folder / "test" if (folder / "test").is_dir() and train_dir != folder else None
    train_files, train_y, classes = list_images(train_dir)
    test_files, test_y = [], None
    if test_dir is not None:
        test_files, test_y, _ = list_images(test_dir, classes)
    images = read_image_files(train_files + test_files)
    train_x, test_x = images[:len(train_files)], images[len(train_files):]
    raw = raw_data("images", folder, train_x, train_y, test_x if test_files else None, test_y)
    return replace(raw, classes=tuple(classes))


def list_images(folder: Path, known: list[str] | None = None
                ) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """(files, labels or None, class names): class subfolders in name order, or loose files.

    ``known``: the training split's class names; a test folder's classes take their labels from
    it (a test folder may lack some classes, not add new ones)."""
    loose = _image_files(folder)
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")
                     and _image_files(d, recursive=True))
    if loose and classes:
        raise DataError(f"{folder}: holds both loose images and class folders ({', '.join(classes)}); "
                        f"put every image in a class folder, or none")
    if known is not None and bool(classes) != bool(known):
        raise DataError(f"{folder}: {'has' if classes else 'has no'} class folders but the training "
                        f"images {'have none' if classes else 'have'}")
    unknown = [c for c in classes if known and c not in known]
    if unknown:
        raise DataError(f"{folder}: classes {', '.join(unknown)} are not among the training classes "
                        f"({', '.join(known)})")
    if not classes:
        if not loose:
            raise DataError(f"{folder}: no image files")
        return loose, None, []
    index = {name: i for i, name in enumerate(known or classes)}
    files, labels = [], []
    for name in classes:
        found = _image_files(folder / name, recursive=True)
        files += found
        labels += [index[name]] * len(found)
    return files, np.array(labels, dtype=np.int64), classes


def read_image_files(files: list[Path]) -> np.ndarray:
    """uint8 (N, C, H, W): grey when every image is grey (R = G = B), else RGB; all of one size."""
    arrays, first = [], None
    for path in _with_progress(files):
        a = read_image(path)
        if first is None:
            first = (path, a.shape[1:])
        elif a.shape[1:] != first[1]:
            raise DataError(f"{path}: image is {a.shape[2]}x{a.shape[1]} pixels but {first[0]} is "
                            f"{first[1][1]}x{first[1][0]}; all images must have one size")
        arrays.append(a)
    if any(len(a) == 3 for a in arrays):
        arrays = [np.broadcast_to(a, (3, *a.shape[1:])) for a in arrays]
    return np.stack(arrays)


def _with_progress(files: list[Path]):
    """The files, behind a progress bar on a terminal when there are many to read."""
    if len(files) < PROGRESS_FROM or not sys.stderr.isatty():
        return files
    from tqdm import tqdm
    return tqdm(files, desc="reading images", unit="file", leave=False, file=sys.stderr)


def read_image(path: Path) -> np.ndarray:
    """(C, H, W) uint8 of one image file: C = 1 when grey, else 3 (RGB, alpha dropped)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "I;16", "F"):              # 16-bit or float grey
                a = np.asarray(im, dtype=np.float64)
                top = 1.0 if im.mode == "F" and a.max() <= 1 else (255.0 if a.max() <= 255 else 65535.0)
                return np.rint(np.clip(a / top, 0, 1) * 255).astype(np.uint8)[None]
            if im.mode in GREY_MODES:
                return np.asarray(im.convert("L"), dtype=np.uint8)[None]
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:100]
        raise DataError(f"{path}: not a readable image ({reason})") from None
    same = (rgb[0] == rgb[1]).all() and (rgb[1] == rgb[2]).all()
    return rgb[:1] if same else rgb

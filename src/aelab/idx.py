"""Reader for IDX files (the MNIST format), plain or gzip-compressed, with strict checks.

Header: two zero bytes, a type code, the number of dimensions, then one big-endian uint32 per
dimension; the data follows, exactly prod(dims) items long.
"""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from .errors import DataError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file into an array of the shape its header gives. Raises DataError."""
    return parse_idx(_read_bytes(path), str(path))


def parse_idx(raw: bytes, name: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    zero, type_code, ndim = raw[0:2], raw[2], raw[3]
    if zero != b"\0\0" or type_code not in _TYPES or not 1 <= ndim <= 4:
        raise DataError(f"{name}: not an IDX file (magic number 0x{magic:08X})")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"{name}: truncated IDX header")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_TYPES[type_code])
    if math.prod(d for d in dims if d) * dtype.itemsize >= 2**63:   # numpy cannot shape it, even
        raise DataError(f"{name}: header sizes {dims} are too large")  # when a 0 makes it empty
    expected = math.prod(dims) * dtype.itemsize   # Python ints: a 64-bit product could wrap
    have = len(raw) - header_len
    if have < expected:
        raise DataError(f"{name}: truncated: header {dims} needs {expected} data bytes, file has {have}")
    if have > expected:
        raise DataError(f"{name}: header sizes {dims} disagree with the data "
                        f"({expected} bytes expected, {have} present)")
    return np.frombuffer(raw, dtype=dtype, offset=header_len).reshape(dims).astype(dtype.newbyteorder("="))


def read_images(path) -> np.ndarray:
    """IDX images as uint8 (N, C, H, W); accepts (N, H, W) and (N, H, W, C) files, C 1 or 3."""
    images = read_idx(path)
    if images.dtype != np.uint8:
        raise DataError(f"{path}: images must be unsigned bytes, found {images.dtype}")
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4:
        if images.shape[3] not in (1, 3):
            raise DataError(f"{path}: images (N, H, W, C) need C = 1 (grey) or 3 (RGB), found "
                            f"shape {list(images.shape)}")
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    raise DataError(f"{path}: images need 3 or 4 dimensions, found shape {list(images.shape)}")


def read_labels(path) -> np.ndarray:
    """IDX labels as int64 (N,)."""
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"{path}: labels need 1 dimension, found shape {list(labels.shape)}")
    return labels.astype(np.int64)


def write_idx(path, array: np.ndarray) -> None:
    """Write an array as IDX (gzip-compressed when the name ends in .gz). Used by tests and tools."""
    codes = {np.dtype(v).newbyteorder("=").str: k for k, v in _TYPES.items()}
    arr = np.ascontiguousarray(array)
    code = codes.get(arr.dtype.newbyteorder("=").str)
    if code is None:
        raise ValueError(f"IDX cannot store {arr.dtype}")
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.dtype(_TYPES[code])).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(data)


def _read_bytes(path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"file not found: {path}") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupt gzip file ({e})") from None
    return raw

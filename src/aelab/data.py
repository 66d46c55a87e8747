"""Splits held whole in memory as uint8 tensors on the training device, and a fast batch iterator.

No per-sample Dataset/DataLoader on the hot path: a batch is one index into the split's tensor,
turned into float in [0, 1] on the fly.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig
from .datasets import RawData, load_idx_folder, load_raw
from .errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    images: Tensor              # uint8 (N, C, H, W)
    labels: Tensor | None       # int64 (N,) or None

    def __len__(self) -> int:
        return len(self.images)

    def spread(self, n: int) -> Tensor:
        """n images evenly spaced through the split, as float in [0, 1] (for pictures)."""
        idx = torch.linspace(0, len(self) - 1, min(n, len(self))).round().long()
        return self.images[idx.to(self.images.device)].float().div(255)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


@dataclass
class Splits:
    train: Split
    val: Split
    test: Split
    name: str                   # the dataset really used ("idx" for --data-dir)
    source: str                 # where its files came from

    @property
    def n_classes(self) -> int:
        """1 + the largest training label, or 0 without labels."""
        labels = self.train.labels
        return int(labels.max()) + 1 if labels is not None and len(labels) else 0

    def describe(self) -> dict:
        return {"name": self.name, "source": self.source, "image_shape": list(self.train.image_shape),
                "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}


def load_raw_for(cfg: DataConfig) -> RawData:
    """The arrays ``cfg`` asks for; mnist falls back to mnist-5k when allowed and unavailable."""
    if cfg.data_dir:
        return load_idx_folder(cfg.data_dir)
    try:
        return load_raw(cfg.name)
    except DataError as e:
        if not (cfg.name == "mnist" and cfg.fallback):
            raise
        log.warning("mnist is unavailable (%s); using the bundled mnist-5k sample "
                    "(5,000 real MNIST images) instead", e)
        return load_raw("mnist-5k")


def load_splits(cfg: DataConfig, seed: int, device: torch.device | str = "cpu") -> Splits:
    """Train / validation / test splits; validation is a fixed part of train for a given seed."""
    raw = load_raw_for(cfg)
    n_val = int(round(cfg.val_fraction * len(raw.train_images)))
    if n_val >= len(raw.train_images):
        raise DataError(f"val_fraction {cfg.val_fraction} leaves no training images")
    order = np.random.default_rng(seed).permutation(len(raw.train_images))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])

    def split(images, labels, idx=None) -> Split:
        if idx is not None:
            images, labels = images[idx], None if labels is None else labels[idx]
        y = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        return Split(torch.from_numpy(np.ascontiguousarray(images)).to(device), y)

    return Splits(train=split(raw.train_images, raw.train_labels, train_idx),
                  val=split(raw.train_images, raw.train_labels, val_idx),
                  test=split(raw.test_images, raw.test_labels),
                  name=raw.name, source=raw.source)


def check_shape(split: Split, input_shape) -> None:
    """Raise DataError unless the split's images have the shape the model was built for."""
    if tuple(split.image_shape) != tuple(input_shape):
        have, want = "x".join(map(str, split.image_shape)), "x".join(map(str, input_shape))
        raise DataError(f"images are {have} (CxHxW) but the model was built for {want}")


class Batches:
    """Iterate over a split in batches of float images in [0, 1] (and labels, or None).

    Shuffled with a generator seeded by (seed, epoch), so the order is the same on every rerun.
    ``binarize`` draws each pixel from a Bernoulli with its intensity, fresh for every batch.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                 binarize: bool = False):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.seed, self.binarize, self.epoch = seed, binarize, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __iter__(self):
        n, images, labels = len(self.split), self.split.images, self.split.labels
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(images.device)
        for start in range(0, n, self.batch_size):
            if order is None:
                x, y = images[start:start + self.batch_size], None
                if labels is not None:
                    y = labels[start:start + self.batch_size]
            else:
                idx = order[start:start + self.batch_size]
                x = images.index_select(0, idx)
                y = None if labels is None else labels.index_select(0, idx)
            x = x.float().div_(255)
            if self.binarize:
                x = torch.bernoulli(x)
            yield x, y

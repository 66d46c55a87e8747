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
from .distributed import shard
from .errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Split:
    images: Tensor              # uint8 (N, C, H, W)
    labels: Tensor | None       # int64 (N,) or None

    def __len__(self) -> int:
        return len(self.images)

    def part(self, rank: int, world: int) -> "Split":
        """This process's contiguous share of the split (all of it in a single process)."""
        if world == 1:
            return self
        part = shard(len(self), rank, world)
        return Split(self.images[part], None if self.labels is None else self.labels[part])

    def spread(self, n: int) -> Tensor:
        """n images evenly spaced through the split, as float in [0, 1] (for pictures)."""
        return self.images[self._spread_index(n)].float().div(255)

    def spread_labels(self, n: int) -> Tensor | None:
        """The labels of the images ``spread(n)`` returns, or None without labels."""
        return None if self.labels is None else self.labels[self._spread_index(n)]

    def _spread_index(self, n: int) -> Tensor:
        idx = torch.linspace(0, len(self) - 1, min(n, len(self))).round().long()
        return idx.to(self.images.device)

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
    excluded_class: int | None = None   # the label left out of train and val, if any

    @property
    def n_classes(self) -> int:
        """1 + the largest training label (or excluded class), or 0 without labels."""
        labels = self.train.labels
        if labels is None or not len(labels):
            return 0
        return max(int(labels.max()), -1 if self.excluded_class is None else self.excluded_class) + 1

    def describe(self) -> dict:
        info = {"name": self.name, "source": self.source, "image_shape": list(self.train.image_shape),
                "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test)}
        if self.excluded_class is not None:
            info["excluded_class"] = self.excluded_class
        return info


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
    """Train / validation / test splits; validation is a fixed part of train for a given seed.

    ``cfg.exclude_class`` removes that label from train and validation after the split, so the
    validation images of the other classes are the same as without it; test keeps every class.
    """
    raw = load_raw_for(cfg)
    n_val = int(round(cfg.val_fraction * len(raw.train_images)))
    if n_val >= len(raw.train_images):
        raise DataError(f"val_fraction {cfg.val_fraction} leaves no training images")
    order = np.random.default_rng(seed).permutation(len(raw.train_images))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if cfg.exclude_class is not None:
        val_idx, train_idx = _exclude(raw.train_labels, cfg.exclude_class, val_idx, train_idx)

    def split(images, labels, idx=None) -> Split:
        if idx is not None:
            images, labels = images[idx], None if labels is None else labels[idx]
        y = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels)).to(device)
        return Split(torch.from_numpy(np.ascontiguousarray(images)).to(device), y)

    return Splits(train=split(raw.train_images, raw.train_labels, train_idx),
                  val=split(raw.train_images, raw.train_labels, val_idx),
                  test=split(raw.test_images, raw.test_labels),
                  name=raw.name, source=raw.source, excluded_class=cfg.exclude_class)


def _exclude(labels: np.ndarray | None, label: int, *parts: np.ndarray) -> list[np.ndarray]:
    """Each index array in ``parts`` without the images whose label is ``label``."""
    if labels is None:
        raise DataError(f"exclude_class {label} needs labels, and this data has no label file")
    if not (labels == label).any():
        raise DataError(f"exclude_class {label} does not occur in the training labels "
                        f"({int(labels.min())}..{int(labels.max())})")
    kept = [idx[labels[idx] != label] for idx in parts]
    if not len(kept[-1]):
        raise DataError(f"exclude_class {label} leaves no training images")
    return kept


def check_shape(split: Split, input_shape) -> None:
    """Raise DataError unless the split's images have the shape the model was built for."""
    if tuple(split.image_shape) != tuple(input_shape):
        have, want = "x".join(map(str, split.image_shape)), "x".join(map(str, input_shape))
        raise DataError(f"images are {have} (CxHxW) but the model was built for {want}")


def check_labels(split: Split, n_classes: int, name: str = "split") -> None:
    """Raise DataError unless every label is one of the n_classes the model was built for."""
    if split.labels is not None and len(split.labels) and int(split.labels.max()) >= n_classes:
        raise DataError(f"the {name} has label {int(split.labels.max())}, but the model was built "
                        f"for {n_classes} classes (0..{n_classes - 1})")


class Batches:
    """Iterate over a split in batches of float images in [0, 1] (and labels, or None).

    Shuffled with a generator seeded by (seed, epoch), so the order is the same on every rerun
    and in every process. With ``world`` processes each global batch of ``batch_size * world``
    images is cut into equal contiguous parts, one per ``rank``: together the processes see what
    one process with the global batch size sees (the last ``n % world`` images of each epoch's
    order are left out so that the parts stay equal).
    ``binarize`` draws each pixel from a Bernoulli with its intensity, fresh for every batch.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                 binarize: bool = False, rank: int = 0, world: int = 1):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.seed, self.binarize, self.epoch = seed, binarize, 0
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        usable = len(self.split) - len(self.split) % self.world
        return -(-usable // (self.batch_size * self.world))

    def __iter__(self):
        n, images, labels = len(self.split), self.split.images, self.split.labels
        order = None
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(n, generator=gen).to(images.device)
        usable, step = n - n % self.world, self.batch_size * self.world
        for first in range(0, usable, step):
            mine = shard(min(step, usable - first), self.rank, self.world)
            start, stop = first + mine.start, first + mine.stop
            if order is None:
                x, y = images[start:stop], None
                if labels is not None:
                    y = labels[start:stop]
            else:
                idx = order[start:stop]
                x = images.index_select(0, idx)
                y = None if labels is None else labels.index_select(0, idx)
            x = x.float().div_(255)
            if self.binarize:
                x = torch.bernoulli(x)
            yield x, y

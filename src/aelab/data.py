"""Splits held whole in memory as uint8 tensors on the training device, and a fast batch iterator.

No per-sample Dataset/DataLoader on the hot path: a batch is one index into the split's tensor,
turned into float in [0, 1] on the fly.

Semi-supervised runs (``DataConfig.labels = N``) keep the labels of N training images, balanced
over the classes and drawn with the run's seed, and set every other training label to -1 (hidden);
validation and test keep all of theirs. ``Batches`` can then append a minibatch of the labelled
images to every batch, so that each step sees labels however few there are.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import DataConfig
from .datasets import RawData, load_raw
from .folders import load_data_dir
from .distributed import shard
from .errors import ConfigError, DataError

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

    def known(self) -> "Split":
        """The images whose label is known (not -1, hidden); all of them without hidden labels."""
        if self.labels is None:
            return Split(self.images[:0], None)
        keep = (self.labels >= 0).nonzero().squeeze(1)
        return Split(self.images[keep], self.labels[keep])

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
    labelled: np.ndarray | None = None  # with hidden labels: the training file's indices still labelled
    classes: tuple[str, ...] = ()       # class names by label, where the files give them

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
        if self.classes:
            info["classes"] = list(self.classes)
        if self.labelled is not None:
            info["n_labelled"] = len(self.labelled)
            info["labelled_indices"] = self.labelled.tolist()   # into the training file
        return info


def load_raw_for(cfg: DataConfig) -> RawData:
    """The arrays ``cfg`` asks for; mnist falls back to mnist-5k when allowed and unavailable."""
    if cfg.data_dir:
        return load_data_dir(cfg.data_dir)
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
    ``cfg.labels`` (N) then keeps N training labels, N / n_classes of each class, drawn with
    ``seed`` (``balanced_subset``), and hides the others as -1; validation and test keep theirs.
    """
    raw = load_raw_for(cfg)
    n_val = int(round(cfg.val_fraction * len(raw.train_images)))
    if n_val >= len(raw.train_images):
        raise DataError(f"val_fraction {cfg.val_fraction} leaves no training images")
    order = np.random.default_rng(seed).permutation(len(raw.train_images))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    if cfg.exclude_class is not None:
        val_idx, train_idx = _exclude(raw.train_labels, cfg.exclude_class, val_idx, train_idx)
    train_labels, labelled = raw.train_labels, None
    if cfg.labels is not None:
        train_labels, labelled = _hide_labels(raw.train_labels, train_idx, cfg.labels, seed)

    def part(labels, idx) -> Split:
        return as_split(raw.train_images[idx], None if labels is None else labels[idx], device)

    return Splits(train=part(train_labels, train_idx), val=part(raw.train_labels, val_idx),
                  test=as_split(raw.test_images, raw.test_labels, device),
                  name=raw.name, source=raw.source, excluded_class=cfg.exclude_class,
                  labelled=labelled, classes=raw.classes)


def as_split(images: np.ndarray, labels: np.ndarray | None, device: torch.device | str = "cpu"
             ) -> Split:
    """A Split on ``device`` from arrays: uint8 images (N, C, H, W), int64 labels (N,) or None."""
    y = None if labels is None else torch.from_numpy(np.ascontiguousarray(labels)).to(device)
    return Split(torch.from_numpy(np.ascontiguousarray(images)).to(device), y)


def _hide_labels(labels: np.ndarray | None, train_idx: np.ndarray, n: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """The training file's labels with all but n of the training images' set to -1, and the
    sorted indices (into the file) of the n kept, drawn from ``train_idx`` only."""
    if labels is None:
        raise DataError(f"--labels {n} keeps {n} training labels, and this data has no label files")
    if n > len(train_idx):
        raise DataError(f"--labels {n} is more than the {len(train_idx)} training images")
    kept = train_idx[balanced_subset(labels[train_idx], n, seed)]
    hidden = np.full_like(labels, -1, dtype=np.int64)
    hidden[kept] = labels[kept]
    return hidden, kept


def balanced_subset(labels: Tensor | np.ndarray, n: int, seed: int) -> np.ndarray:
    """Indices of n labelled images, n / n_classes of each class, drawn without replacement.

    The classes are the distinct values in ``labels``; n must be a multiple of their number (no
    rule for spreading a remainder is guessed). The same seed gives the same indices.

    Args:
        labels: (N,) integer class of each image.
        n: how many images to pick.
        seed: seed of the draw.
    Returns:
        (n,) sorted int64 indices into ``labels``.
    """
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if n < 1 or n % len(classes):
        raise ConfigError(f"--labels {n} is not a positive multiple of the {len(classes)} classes "
                          f"(use e.g. {max(1, round(n / len(classes))) * len(classes)})")
    per_class = n // len(classes)
    short = counts < per_class
    if short.any():
        c = classes[short.argmax()]
        raise DataError(f"--labels {n} needs {per_class} training images of each class, but class "
                        f"{c} has only {counts[short.argmax()]}")
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in classes]
    return np.sort(np.concatenate(picked)).astype(np.int64)


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

    ``labelled`` (a split whose labels are all known) and ``labelled_batch`` (m) append m of its
    images to every batch: the labelled split shuffled again and again, without repeats until all
    of it has been used, from a generator seeded by (seed, epoch, rank), so each process draws its
    own labelled minibatches from the whole labelled split. ``len`` still counts the batches.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = False, seed: int = 0,
                 binarize: bool = False, rank: int = 0, world: int = 1,
                 labelled: Split | None = None, labelled_batch: int = 0):
        self.split, self.batch_size, self.shuffle = split, batch_size, shuffle
        self.seed, self.binarize, self.epoch = seed, binarize, 0
        self.rank, self.world = rank, world
        if labelled is not None and (split.labels is None or labelled.labels is None
                                     or not len(labelled) or labelled_batch < 1):
            raise DataError("labelled minibatches need labels, labelled images and a size of 1 or more")
        self.labelled, self.labelled_batch = labelled, labelled_batch

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
        extra = None if self.labelled is None else self._labelled_draws()
        for b, first in enumerate(range(0, usable, step)):
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
            if extra is not None:
                x = torch.cat([x, self.labelled.images.index_select(0, extra[b])])
                y = torch.cat([y, self.labelled.labels.index_select(0, extra[b])])
            x = x.float().div_(255)
            if self.binarize:
                x = torch.bernoulli(x)
            yield x, y

    def _labelled_draws(self) -> Tensor:
        """(len(self), labelled_batch) indices into the labelled split: shuffled passes over it,
        one after the other, cut into rows."""
        n, m = len(self.labelled), self.labelled_batch
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_009 + 1 + self.rank)
        passes = -(-len(self) * m // n)
        draws = torch.cat([torch.randperm(n, generator=gen) for _ in range(passes)])
        return draws[: len(self) * m].view(len(self), m).to(self.labelled.images.device)

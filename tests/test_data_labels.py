"""Hidden labels for semi-supervised runs (DataConfig.labels): N training labels kept, balanced and
seeded, never from validation or test; and Batches appending a labelled minibatch to every batch."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from aelab.config import DataConfig
from aelab.data import Batches, Split, load_splits
from aelab.errors import ConfigError, DataError
from aelab.idx import read_images, write_idx


def _keys(images) -> list[bytes]:
    return [bytes(x) for x in np.asarray(images).reshape(len(images), -1)]


def _numbered_split(n: int, labels: torch.Tensor) -> Split:
    """n distinct 1x2x2 images; image i is filled with the value i."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    return Split(images, labels)


def _ids(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


# --- load_splits with labels ----------------------------------------------------------------------

def test_exactly_n_labels_are_kept_balanced_over_the_classes(mnist_dir):
    splits = load_splits(DataConfig(data_dir=mnist_dir, labels=30), seed=0)
    labels = splits.train.labels
    kept = labels[labels >= 0]
    assert len(kept) == 30 and set(labels[labels < 0].tolist()) == {-1}
    assert collections.Counter(kept.tolist()) == {c: 3 for c in range(10)}
    assert splits.n_classes == 10
    info = splits.describe()
    assert info["n_labelled"] == 30 and len(info["labelled_indices"]) == 30


def test_the_kept_labels_are_the_true_ones_of_the_same_images(mnist_dir):
    plain = load_splits(DataConfig(data_dir=mnist_dir), seed=2)
    hidden = load_splits(DataConfig(data_dir=mnist_dir, labels=20), seed=2)
    assert torch.equal(plain.train.images, hidden.train.images)
    known = hidden.train.labels >= 0
    assert torch.equal(hidden.train.labels[known], plain.train.labels[known])
    for part in ("val", "test"):                      # validation and test keep every label
        assert torch.equal(getattr(hidden, part).labels, getattr(plain, part).labels)


def test_labelled_indices_point_into_the_training_file_and_never_at_validation(mnist_dir):
    file_images = read_images(f"{mnist_dir}/train-images-idx3-ubyte.gz")
    for seed in range(3):
        splits = load_splits(DataConfig(data_dir=mnist_dir, labels=20, val_fraction=0.3), seed=seed)
        labelled = _keys(file_images[splits.labelled])
        assert collections.Counter(labelled) == collections.Counter(_keys(splits.train.known().images))
        assert not set(labelled) & set(_keys(splits.val.images.numpy()))
        assert not set(labelled) & set(_keys(splits.test.images.numpy()))


def test_the_labelled_images_are_fixed_for_a_seed_and_change_with_it(mnist_dir):
    cfg = DataConfig(data_dir=mnist_dir, labels=20)
    a, b, c = (load_splits(cfg, seed=s) for s in (5, 5, 6))
    assert np.array_equal(a.labelled, b.labelled) and torch.equal(a.train.labels, b.train.labels)
    assert not np.array_equal(a.labelled, c.labelled)


def test_without_labels_option_nothing_is_hidden(mnist_dir):
    splits = load_splits(DataConfig(data_dir=mnist_dir), seed=0)
    assert splits.labelled is None and (splits.train.labels >= 0).all()
    assert "n_labelled" not in splits.describe()


def test_labels_not_a_multiple_of_the_classes_is_refused(mnist_dir):
    with pytest.raises(ConfigError, match="--labels 25 is not a positive multiple of the 10 classes"):
        load_splits(DataConfig(data_dir=mnist_dir, labels=25), seed=0)


def test_more_labels_than_training_images_is_refused(mnist_dir):
    with pytest.raises(DataError, match="--labels 10000 is more than the 720 training images"):
        load_splits(DataConfig(data_dir=mnist_dir, labels=10_000), seed=0)


def test_more_labels_than_a_class_has_is_refused(mnist_dir):
    with pytest.raises(DataError, match="needs 70 training images of each class"):
        load_splits(DataConfig(data_dir=mnist_dir, labels=700), seed=0)


def test_labels_without_label_files_is_refused(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 3, 3), np.uint8))
    with pytest.raises(DataError, match="no label files"):
        load_splits(DataConfig(data_dir=str(tmp_path), labels=2), seed=0)


@pytest.mark.parametrize("labels", [0, -3])
def test_labels_must_be_positive(labels):
    with pytest.raises(ConfigError, match="--labels must be at least 1"):
        DataConfig(labels=labels)


def test_labelled_batch_must_be_positive():
    with pytest.raises(ConfigError, match="labelled_batch"):
        DataConfig(labelled_batch=0)


def test_known_keeps_the_labelled_images():
    split = _numbered_split(6, torch.tensor([-1, 3, -1, -1, 0, 1]))
    known = split.known()
    assert _ids(known.images.float() / 255) == [1, 4, 5] and known.labels.tolist() == [3, 0, 1]


# --- Batches with a labelled minibatch ------------------------------------------------------------

def _semi_split(n: int = 50, n_labelled: int = 7) -> Split:
    labels = torch.full((n,), -1)
    labels[:n_labelled] = torch.arange(n_labelled) % 3
    return _numbered_split(n, labels)


def test_every_batch_gets_the_labelled_minibatch_after_its_own_images():
    split = _semi_split()
    plain = list(Batches(split, 8, shuffle=True, seed=1))
    mixed = list(Batches(split, 8, shuffle=True, seed=1, labelled=split.known(), labelled_batch=5))
    assert len(mixed) == len(plain) == len(Batches(split, 8, labelled=split.known(), labelled_batch=5))
    for (x, y), (px, py) in zip(mixed, plain):
        assert len(x) == len(px) + 5 and len(y) == len(x)
        assert torch.equal(x[: len(px)], px) and torch.equal(y[: len(py)], py)   # the split's own
        extra = _ids(x[len(px):])
        assert all(i < 7 for i in extra)                    # labelled images, with their labels
        assert y[len(px):].tolist() == [i % 3 for i in extra]


def test_the_labelled_images_are_cycled_without_repeats_within_a_pass():
    split = _semi_split(n=60, n_labelled=7)
    batches = Batches(split, 10, shuffle=True, seed=0, labelled=split.known(), labelled_batch=3)
    drawn = [i for x, _ in batches for i in _ids(x[-3:])]              # 6 batches x 3 = 18
    assert len(drawn) == 18
    for start in (0, 7):                                                # two whole passes
        assert sorted(drawn[start:start + 7]) == list(range(7))


def test_labelled_draws_depend_on_seed_epoch_and_rank_only():
    split = _semi_split(n=80, n_labelled=20)

    def draws(seed=0, epoch=1, rank=0):
        batches = Batches(split, 10, seed=seed, rank=rank, world=2, labelled=split.known(),
                          labelled_batch=4)
        batches.set_epoch(epoch)
        return [_ids(x[-4:]) for x, _ in batches]

    assert draws() == draws()
    assert draws() != draws(seed=1) and draws() != draws(epoch=2) and draws() != draws(rank=1)


def test_ranks_keep_their_own_shards_and_each_draws_labelled_images():
    split = _semi_split(n=40, n_labelled=10)
    for rank in (0, 1):
        plain = list(Batches(split, 4, shuffle=True, seed=2, rank=rank, world=2))
        mixed = list(Batches(split, 4, shuffle=True, seed=2, rank=rank, world=2,
                             labelled=split.known(), labelled_batch=3))
        for (x, y), (px, _) in zip(mixed, plain):
            assert torch.equal(x[: len(px)], px) and (y[len(px):] >= 0).all() and len(x) == len(px) + 3


def test_binarize_applies_to_the_labelled_minibatch_too():
    images = torch.full((12, 1, 2, 2), 128, dtype=torch.uint8)
    split = Split(images, torch.tensor([0, 1] + [-1] * 10))
    for x, _ in Batches(split, 5, binarize=True, labelled=split.known(), labelled_batch=2):
        assert set(x.unique().tolist()) <= {0.0, 1.0}


def test_labelled_minibatches_need_labels():
    split = _semi_split()
    with pytest.raises(DataError, match="labelled minibatches"):
        Batches(Split(split.images, None), 4, labelled=split.known(), labelled_batch=2)
    with pytest.raises(DataError, match="labelled minibatches"):
        Batches(split, 4, labelled=split.known(), labelled_batch=0)

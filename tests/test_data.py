"""Splits and batches: validation carved from train by seed, and the batch iterator's order and values."""
from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from aelab.config import DataConfig
from aelab.data import Batches, Split, check_shape, load_splits
from aelab.errors import DataError
from aelab.idx import read_images, read_labels, write_idx


def _keys(images) -> list[bytes]:
    """One hashable key per image."""
    return [bytes(x) for x in np.asarray(images).reshape(len(images), -1)]


def _numbered_split(n: int, labels: bool = True) -> Split:
    """n distinct 1x2x2 images; image i is filled with the value i and labelled 1000 + i."""
    images = torch.arange(n, dtype=torch.uint8)[:, None, None, None].expand(n, 1, 2, 2).contiguous()
    return Split(images, torch.arange(n) + 1000 if labels else None)


def _ids(x: torch.Tensor) -> list[int]:
    """The image numbers back from a float batch of numbered images."""
    return (x[:, 0, 0, 0] * 255).round().long().tolist()


def _order(batches: Batches) -> list[int]:
    return [i for x, _ in batches for i in _ids(x)]


# --- load_splits -------------------------------------------------------------------------------

def test_val_is_fixed_for_a_seed_and_changes_with_it(mnist_dir):
    cfg = DataConfig(data_dir=mnist_dir, val_fraction=0.1)
    a, b, c = load_splits(cfg, seed=3), load_splits(cfg, seed=3), load_splits(cfg, seed=4)
    assert torch.equal(a.val.images, b.val.images) and torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert set(_keys(a.val.images.numpy())) != set(_keys(c.val.images.numpy()))


def test_val_and_train_partition_the_training_file(mnist_dir):
    file_images = read_images(f"{mnist_dir}/train-images-idx3-ubyte.gz")
    file_labels = read_labels(f"{mnist_dir}/train-labels-idx1-ubyte.gz")
    assert len(set(_keys(file_images))) == len(file_images)       # distinct, so sets can be compared
    splits = load_splits(DataConfig(data_dir=mnist_dir, val_fraction=0.25), seed=0)
    train, val = _keys(splits.train.images.numpy()), _keys(splits.val.images.numpy())
    assert not set(train) & set(val)
    assert collections.Counter(train + val) == collections.Counter(_keys(file_images))
    label_of = dict(zip(_keys(file_images), file_labels.tolist()))
    for split, keys in ((splits.train, train), (splits.val, val)):
        assert split.labels.dtype == torch.int64
        assert split.labels.tolist() == [label_of[k] for k in keys]


@pytest.mark.parametrize("fraction, n_val", [(0.1, 80), (0.25, 200), (0.5, 400)])
def test_val_fraction_is_respected(mnist_dir, fraction, n_val):
    splits = load_splits(DataConfig(data_dir=mnist_dir, val_fraction=fraction), seed=1)
    assert (len(splits.val), len(splits.train)) == (n_val, 800 - n_val)
    assert splits.describe() == {"name": "idx", "source": mnist_dir, "image_shape": [1, 28, 28],
                                 "n_train": 800 - n_val, "n_val": n_val, "n_test": 200}


def test_val_fraction_zero_gives_empty_val(mnist_dir):
    splits = load_splits(DataConfig(data_dir=mnist_dir, val_fraction=0.0), seed=0)
    assert len(splits.val) == 0 and len(splits.train) == 800
    assert splits.val.image_shape == (1, 28, 28)
    assert list(Batches(splits.val, 16)) == []


def test_test_split_is_the_t10k_file(mnist_dir):
    splits = load_splits(DataConfig(data_dir=mnist_dir), seed=0)
    expected = read_images(f"{mnist_dir}/t10k-images-idx3-ubyte.gz")
    assert splits.test.images.dtype == torch.uint8
    np.testing.assert_array_equal(splits.test.images.numpy(), expected)
    np.testing.assert_array_equal(splits.test.labels.numpy(),
                                  read_labels(f"{mnist_dir}/t10k-labels-idx1-ubyte.gz"))


def test_val_fraction_leaving_no_training_images(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((2, 3, 3), np.uint8))
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((1, 3, 3), np.uint8))
    with pytest.raises(DataError, match="val_fraction 0.9"):
        load_splits(DataConfig(data_dir=str(tmp_path), val_fraction=0.9), seed=0)


def test_splits_without_labels(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 3, 3), np.uint8))
    splits = load_splits(DataConfig(data_dir=str(tmp_path), val_fraction=0.2), seed=0)
    assert splits.train.labels is None and splits.val.labels is None and splits.test.labels is None
    assert len(splits.val) == 2


# --- Batches -----------------------------------------------------------------------------------

@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (5, 8)])
def test_every_image_once_per_epoch_last_batch_kept(n, batch_size, shuffle):
    batches = Batches(_numbered_split(n), batch_size, shuffle=shuffle, seed=2)
    sizes = [len(x) for x, _ in batches]
    assert sizes == [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert len(batches) == len(sizes)
    assert sorted(_order(batches)) == list(range(n))


def test_batches_are_float_in_unit_range():
    images = torch.tensor([0, 1, 128, 255], dtype=torch.uint8).view(4, 1, 1, 1)
    (x, _), = list(Batches(Split(images, None), 8))
    assert x.dtype == torch.float32
    assert torch.allclose(x.flatten(), torch.tensor([0, 1 / 255, 128 / 255, 1.0]))
    assert images.tolist() == [[[[0]]], [[[1]]], [[[128]]], [[[255]]]]     # the split is left as it was


def test_shuffled_order_depends_only_on_seed_and_epoch():
    split = _numbered_split(50)
    a, b = Batches(split, 7, shuffle=True, seed=5), Batches(split, 7, shuffle=True, seed=5)
    assert _order(a) == _order(b) == _order(a)
    assert _order(a) != list(range(50))
    first = _order(a)
    a.set_epoch(1)
    assert _order(a) != first
    b.set_epoch(1)
    assert _order(a) == _order(b)
    assert _order(Batches(split, 7, shuffle=True, seed=6)) != first


def test_unshuffled_keeps_order():
    batches = Batches(_numbered_split(11), 4)
    assert _order(batches) == list(range(11))
    batches.set_epoch(3)
    assert _order(batches) == list(range(11))


@pytest.mark.parametrize("shuffle", [False, True])
def test_labels_follow_their_images(shuffle):
    for x, y in Batches(_numbered_split(23), 5, shuffle=shuffle, seed=1):
        assert y.dtype == torch.int64
        assert y.tolist() == [1000 + i for i in _ids(x)]


@pytest.mark.parametrize("shuffle", [False, True])
def test_no_labels_gives_none(shuffle):
    assert all(y is None for _, y in Batches(_numbered_split(9, labels=False), 4, shuffle=shuffle))


def test_binarize_gives_bernoulli_draws_with_the_intensity_mean(mnist_dir):
    split = load_splits(DataConfig(data_dir=mnist_dir, val_fraction=0.0), seed=0).train
    with torch.random.fork_rng():
        torch.manual_seed(0)
        first = torch.cat([x for x, _ in Batches(split, 256, binarize=True)])
        second = torch.cat([x for x, _ in Batches(split, 256, binarize=True)])
    assert set(first.unique().tolist()) == {0.0, 1.0}
    intensity = split.images.float().div(255)
    assert abs(first.mean().item() - intensity.mean().item()) < 0.005
    assert not torch.equal(first, second)                              # a fresh draw each time
    # pixels that are 0 or 255 stay 0 or 1; others vary
    assert (first[intensity == 0] == 0).all() and (first[intensity == 1] == 1).all()


def test_binarized_pixel_frequency_matches_its_intensity():
    images = torch.full((4000, 1, 1, 1), 64, dtype=torch.uint8)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        x = torch.cat([x for x, _ in Batches(Split(images, None), 1000, binarize=True)])
    assert abs(x.mean().item() - 64 / 255) < 0.03


# --- check_shape and spread --------------------------------------------------------------------

def test_check_shape():
    split = _numbered_split(3)
    check_shape(split, (1, 2, 2))
    check_shape(split, [1, 2, 2])
    with pytest.raises(DataError, match="images are 1x2x2.*built for 1x28x28"):
        check_shape(split, (1, 28, 28))
    with pytest.raises(DataError):
        check_shape(split, (2, 2, 1))


@pytest.mark.parametrize("n, expected", [(4, [0, 3, 6, 9]), (2, [0, 9]), (1, [0]), (10, list(range(10))),
                                         (25, list(range(10)))])
def test_spread_gives_evenly_spaced_images(n, expected):
    x = _numbered_split(10).spread(n)
    assert x.dtype == torch.float32 and x.shape == (len(expected), 1, 2, 2)
    assert _ids(x) == expected
    assert x.max() <= 9 / 255 + 1e-6

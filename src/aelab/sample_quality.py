"""Sample quality: Fréchet distance and class entropies of generated images, in the feature space
of a small convolutional classifier trained once per dataset and cached.

The Fréchet distance (Heusel et al. 2017, arXiv:1706.08500) fits a Gaussian to the features of the
generated samples and one to those of the real (test) images and reports
|mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)), in squared feature units; 0 for identical
statistics, lower is better. It is torchmetrics' ``FrechetInceptionDistance`` with the features
handed in (an identity "feature extractor"), so the matrix square root is theirs. The features are
not Inception's but the 128-d penultimate layer of ``FeatureClassifier``, trained on the dataset's
own training images, so figures compare models on one dataset, never across datasets or with
published FIDs. The classifier's test accuracy is reported beside them: a feature space that
cannot tell the classes apart says little.

The classifier also gives two entropies of its predictions p(y|x) on the samples, in nats:
``class_entropy``, the mean over samples of H(p(y|x)) (low: each sample looks like one class),
and ``marginal_class_entropy``, H of the mean prediction (high: the samples cover the classes;
log K when spread evenly over K classes). They are the two terms of the Inception Score.

The cache (``<cache>/classifiers/<key>.safetensors`` and ``.json``, ``<cache>`` being
``$AELAB_DATA`` or the user cache folder) is keyed by a SHA-256 of the training and test images
and labels and of the training settings, so other data never reuses a classifier; an unreadable
entry is retrained.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .data import Batches, Split
from .errors import AelabError, ConfigError, DataError
from .models import Autoencoder

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
FEATURE_DIM = 128            # width of the penultimate layer: the feature space
TRAIN = {"epochs": 8,        # passes over the training images (Fashion-MNIST: test accuracy
         #                   0.909 after 8, 0.883 after 3), at least ...
         "min_steps": 500,   # ... and at least this many Adam steps (small datasets get more passes)
         "batch_size": 64, "lr": 1e-3, "seed": 0}


class FeatureClassifier(nn.Module):
    """Two stride-2 3x3 convolutions (32, 64 channels) with ReLU, a 128-d ReLU layer (the
    features), a linear layer to the class logits. Any (C, H, W) input size: 28x28 becomes 7x7
    after the convolutions; larger grids are averaged down to at most 7x7."""

    def __init__(self, image_shape: tuple[int, int, int], n_classes: int, feature_dim: int = FEATURE_DIM):
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.n_classes = tuple(image_shape), n_classes
        half = lambda s: (s + 1) // 2                         # noqa: E731  side after a stride-2 conv
        grid = (min(half(half(h)), 7), min(half(half(w)), 7))
        self.body = nn.Sequential(
            nn.Conv2d(c, 32, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(grid), nn.Flatten(),         # the identity up to 7x7
            nn.Linear(64 * grid[0] * grid[1], feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, feature_dim)."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) float in [0, 1] -> (B, n_classes) logits."""
        return self.head(self.body(x))

    @torch.no_grad()
    def predict_proba(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """p(y|x) of each image, (N, n_classes) float64 on the images' device."""
        self.eval()
        return torch.cat([F.softmax(self(_as_float(x)).double(), dim=1)
                          for x in images.split(batch_size)])

    @torch.no_grad()
    def classify(self, images: Tensor, batch_size: int = 1000) -> Tensor:
        """The predicted class of each image, (N,) int64. images: (N, C, H, W), uint8 in 0..255 or
        float in [0, 1]."""
        self.eval()
        return torch.cat([self(_as_float(x)).argmax(1) for x in images.split(batch_size)])


@dataclass
class CachedClassifier:
    net: FeatureClassifier
    test_accuracy: float         # fraction of the dataset's test images classified correctly
    path: Path                   # the .safetensors file in the cache
    trained: bool                # True when this call trained it (no usable cache entry)


# ---------------------------------------------------------------- training and the cache


def dataset_fingerprint(train: Split, test: Split) -> str:
    """SHA-256 (hex) of the shapes and bytes of both splits' images and labels."""
    h = hashlib.sha256(b"aelab-dataset-v1")
    for split in (train, test):
        for t in (split.images, split.labels):
            if t is None:
                h.update(b"none")
                continue
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(np.ascontiguousarray(t.cpu().numpy()).tobytes())
    return h.hexdigest()


def n_classes_of(train: Split, test: Split) -> int:
    """1 + the largest label of either split. Raises DataError when a split has no labels."""
    for name, split in (("training", train), ("test", test)):
        if split.labels is None or not len(split.labels):
            raise DataError(f"the sample-quality classifier needs labelled images, and the {name} "
                            "split has no labels (label files, label arrays or class folders)")
    return int(max(train.labels.max(), test.labels.max())) + 1


def train_classifier(train: Split, test: Split, epochs: int = TRAIN["epochs"],
                     min_steps: int = TRAIN["min_steps"], batch_size: int = TRAIN["batch_size"],
                     lr: float = TRAIN["lr"], seed: int = TRAIN["seed"]) -> tuple[FeatureClassifier, float]:
    """Train a FeatureClassifier with Adam on the training split; (net in eval mode, test accuracy).

    max(epochs, ceil(min_steps / batches per epoch)) passes, shuffled by a generator seeded by
    ``seed``, initialised under ``seed``; leaves the global RNG alone. Trains on the splits' device.
    """
    k = n_classes_of(train, test)
    device = train.images.device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        net = FeatureClassifier(train.image_shape, k).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        batches = Batches(train, batch_size, shuffle=True, seed=seed)
        n_epochs = max(epochs, math.ceil(min_steps / max(1, len(batches))))
        net.train()
        for epoch in range(n_epochs):
            batches.set_epoch(epoch)
            for x, y in batches:
                loss = F.cross_entropy(net(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    net.eval()
    return net, accuracy(net, test)


def accuracy(net: FeatureClassifier, split: Split, batch_size: int = 1000) -> float:
    """Fraction of the split's images the classifier labels correctly."""
    return float((net.classify(split.images, batch_size) == split.labels).double().mean())


def classifier_cache_dir() -> Path:
    from .datasets import cache_dir
    return cache_dir() / "classifiers"


def load_or_train(train: Split, test: Split, folder: str | Path | None = None,
                  announce: Callable[[str], None] | None = None, name: str = "") -> CachedClassifier:
    """The cached classifier for these splits, trained and cached first if there is none.

    Args:
        train, test: the dataset's full training and test splits, with labels (uint8 images).
        folder: the cache folder (default ``classifier_cache_dir()``).
        announce: called with a one-line message when training starts and ends, or when a cache
            entry is unreadable (default: log at INFO).
        name: the dataset's name, for the messages and the JSON.
    """
    say = announce or log.info
    k = n_classes_of(train, test)
    fingerprint = dataset_fingerprint(train, test)
    settings = {"feature_dim": FEATURE_DIM, **TRAIN}
    key = hashlib.sha256(json.dumps([FORMAT_VERSION, fingerprint, settings]).encode()).hexdigest()[:24]
    folder = Path(folder) if folder is not None else classifier_cache_dir()
    weights, meta = folder / f"{key}.safetensors", folder / f"{key}.json"
    if meta.exists() or weights.exists():
        from safetensors import SafetensorError
        try:
            net, acc = _load(weights, meta, fingerprint, train.image_shape, k, train.images.device)
            return CachedClassifier(net, acc, weights, trained=False)
        except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
                SafetensorError) as e:                 # a damaged or stale entry: train again
            say(f"cached classifier {weights} is unreadable ({_first_line(e)}); retraining it")
    say(f"training the sample-quality classifier on the {len(train)} training images"
        f"{' of ' + name if name else ''} (once: it is cached in {folder})")
    net, acc = train_classifier(train, test, **TRAIN)
    info = {"format_version": FORMAT_VERSION, "fingerprint": fingerprint, "dataset": name,
            "image_shape": list(train.image_shape), "n_classes": k, "n_train": len(train),
            "n_test": len(test), "test_accuracy": acc, "settings": settings}
    try:
        _save(net, info, weights, meta)
        where = f"saved to {weights}"
    except (AelabError, OSError) as e:           # an unwritable cache costs a retrain next time
        where = f"not cached: {_first_line(e)}"
    say(f"sample-quality classifier: test accuracy {acc:.4f}; {where}")
    return CachedClassifier(net, acc, weights, trained=True)


def _save(net: FeatureClassifier, info: dict, weights: Path, meta: Path) -> None:
    from safetensors.torch import save
    from .runs import atomic_write
    weights.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}
    atomic_write(weights, save(tensors, metadata={"fingerprint": info["fingerprint"]}))
    atomic_write(meta, json.dumps(info, indent=2) + "\n")       # written last: the entry is whole


def _load(weights: Path, meta: Path, fingerprint: str, image_shape, k: int, device
          ) -> tuple[FeatureClassifier, float]:
    from safetensors import safe_open
    from safetensors.torch import load_file
    info = json.loads(meta.read_text())
    if info.get("format_version") != FORMAT_VERSION or info.get("fingerprint") != fingerprint:
        raise ValueError("written for other data or by another aelab version")
    with safe_open(str(weights), framework="pt") as f:
        if (f.metadata() or {}).get("fingerprint") != fingerprint:
            raise ValueError("weights do not match their JSON")
    net = FeatureClassifier(image_shape, k)
    net.load_state_dict(load_file(str(weights)))
    acc = float(info["test_accuracy"])
    if not 0 <= acc <= 1:
        raise ValueError(f"test_accuracy {acc} is not a fraction")
    return net.to(device).eval(), acc


def classifier_for(data, device: str | torch.device = "cpu",
                   announce: Callable[[str], None] | None = None) -> CachedClassifier:
    """The cached classifier of a run's data (a DataConfig: ``cfg.data``), trained if needed on all
    of the dataset's training images (every class, whatever ``exclude_class`` says)."""
    from dataclasses import replace
    from .data import as_split, load_raw_for
    raw = load_raw_for(replace(data, exclude_class=None))
    return load_or_train(as_split(raw.train_images, raw.train_labels, device),
                         as_split(raw.test_images, raw.test_labels, device), announce=announce,
                         name=data.data_dir or raw.name)


# ---------------------------------------------------------------- the measures


class _Given(nn.Module):
    """Identity 'feature extractor': torchmetrics is handed features already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.double()


def frechet_metric(num_features: int):
    """A torchmetrics FrechetInceptionDistance (on the CPU, float64 sums) that takes feature
    vectors (B, num_features): ``update(features, real=True/False)``, then ``compute()``."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    return FrechetInceptionDistance(feature=_Given(num_features), normalize=True)


def frechet_distance_of_features(real: Tensor, fake: Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of feature vectors (N, d), (M, d)."""
    metric = frechet_metric(real.shape[1])
    metric.update(real.detach().cpu(), real=True)
    metric.update(fake.detach().cpu(), real=False)
    return float(metric.compute())


@torch.no_grad()
def frechet_distance(classifier: FeatureClassifier, real: Tensor, fake: Tensor,
                     batch_size: int = 1000) -> float:
    """Fréchet distance between two image sets (N, C, H, W), uint8 in 0..255 or float in [0, 1],
    in the classifier's feature space."""
    classifier.eval()
    metric = frechet_metric(classifier.head.in_features)
    for images, is_real in ((real, True), (fake, False)):
        for x in images.split(batch_size):
            metric.update(classifier.features(_as_float(x)).cpu(), real=is_real)
    return float(metric.compute())


def class_entropy(probs: Tensor) -> float:
    """Mean over rows of the entropy of p(y|x), in nats: 0 for one-hot rows, log K for uniform."""
    return float(torch.special.entr(probs.double()).sum(1).mean())


def marginal_class_entropy(probs: Tensor) -> float:
    """Entropy of the mean prediction (the classes the rows cover), in nats, at most log K."""
    return float(torch.special.entr(probs.double().mean(0)).sum())


def check_sample_quality(model: Autoencoder, split: Split | None = None) -> None:
    """Raise ConfigError unless the model can sample, DataError if the split has no labels (the
    classifier is trained on labels)."""
    if not model.can_sample:
        raise ConfigError(f"a {model.family or type(model).__name__} has no prior to sample from, "
                          "so it has no sample quality; use a vae, iwae, cvae or vqvae run")
    if split is not None and split.labels is None:
        raise DataError("sample quality needs labelled data to train its classifier, and this "
                        "data has no labels (label files, label arrays or class folders)")


@torch.no_grad()
def sample_quality(model: Autoencoder, classifier: FeatureClassifier, split: Split,
                   n_samples: int | None = None, batch_size: int = 1000, seed: int = 0
                   ) -> dict[str, float]:
    """Draw ``n_samples`` (default: as many as the split has images) and measure them against the
    split. Samples are rounded to 8 bits like the real images. A label-conditional model (cvae)
    draws classes 0, 1, ..., K-1, 0, ... in turn and also gets ``sample_label_accuracy``.

    Returns:
        frechet_distance (squared feature units), sample_class_entropy and
        sample_marginal_entropy (nats), and for a cvae sample_label_accuracy (fraction).
    """
    check_sample_quality(model)
    n = n_samples or len(split)
    if n < 2 or len(split) < 2:
        raise ConfigError(f"the Fréchet distance needs at least 2 samples and 2 real images, got "
                          f"{n} and {len(split)}")
    model.eval()
    classifier.eval()
    device = split.images.device
    metric = frechet_metric(classifier.head.in_features)
    for x, _ in Batches(split, batch_size):
        metric.update(classifier.features(x).cpu(), real=True)
    k = getattr(model.cfg, "n_classes", 0) if model.needs_labels else 0
    gen = torch.Generator(device=device).manual_seed(seed)
    probs, hits = [], 0
    for start in range(0, n, batch_size):
        m = min(batch_size, n - start)
        labels = (torch.arange(start, start + m, device=device) % k) if k else None
        x = model.sample(m, generator=gen, labels=labels).to(device)
        x = x.clamp(0, 1).mul(255).round().div(255)            # 8-bit, like the test images
        features = classifier.features(x)
        metric.update(features.cpu(), real=False)
        p = F.softmax(classifier.head(features).double(), dim=1)
        probs.append(p.cpu())
        if k:
            hits += int((p.argmax(1) == labels).sum())
    probs = torch.cat(probs)
    out = {"frechet_distance": float(metric.compute()),
           "sample_class_entropy": class_entropy(probs),
           "sample_marginal_entropy": marginal_class_entropy(probs)}
    if k:
        out["sample_label_accuracy"] = hits / n
    return out


def _as_float(x: Tensor) -> Tensor:
    return x.float().div(255) if x.dtype == torch.uint8 else x.float()


def _first_line(e: Exception) -> str:
    text = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__

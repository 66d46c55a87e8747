"""Sample quality: the Fréchet distance against closed forms, the class entropies, the cached
classifier (reuse, keying by data, corrupt entries) and its accuracy on real MNIST."""
from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from aelab import sample_quality as sq
from aelab.data import Split
from aelab.datasets import load_idx_folder
from aelab.errors import ConfigError, DataError
from aelab.models import Autoencoder, ModelConfig


def whitened(n: int, d: int, seed: int = 0) -> Tensor:
    """(n, d) float64 points with mean exactly 0 and sample covariance (ddof 1) exactly I."""
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    x = x - x.mean(0)
    chol = torch.linalg.cholesky(x.T @ x / (n - 1))
    return torch.linalg.solve_triangular(chol, x.T, upper=False).T


# ---------------------------------------------------------------- the distance


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = torch.randn(500, 16, generator=torch.Generator().manual_seed(1)) * torch.arange(1, 17)
    assert sq.frechet_distance_of_features(x, x) == pytest.approx(0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    x = whitened(400, 6) * torch.tensor([0.5, 1, 2, 3, 4, 5], dtype=torch.float64)  # not S == S^2
    shift = torch.tensor([3.0, -1.0, 0.0, 2.0, 0.5, 0.0], dtype=torch.float64)
    want = float(shift.square().sum())                                # 14.25
    assert sq.frechet_distance_of_features(x, x + shift) == pytest.approx(want, rel=1e-6)
    assert sq.frechet_distance_of_features(x + shift, x) == pytest.approx(want, rel=1e-6)


def test_frechet_distance_of_scaled_gaussians_needs_the_matrix_square_root():
    """N(0, I) against N(0, diag(s^2)): sum (1 - s)^2; without the square root it would be
    sum (1 - s^2), with the trace term's sign flipped sum (1 + s)^2."""
    s = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    x = whitened(300, 4, seed=2)
    assert sq.frechet_distance_of_features(x, x * s) == pytest.approx(float((1 - s).square().sum()),
                                                                      rel=1e-6)


def test_frechet_distance_of_images_uses_the_classifier_features():
    net = sq.FeatureClassifier((1, 8, 8), 3)
    images = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    assert sq.frechet_distance(net, images, images) == pytest.approx(0, abs=1e-4)
    as_float = images.float() / 255                   # uint8 and [0, 1] floats are the same images
    assert sq.frechet_distance(net, images, as_float, batch_size=7) == pytest.approx(0, abs=1e-4)
    assert sq.frechet_distance(net, images, torch.zeros(50, 1, 8, 8)) > 0


# ---------------------------------------------------------------- the entropies


def test_entropies_of_uniform_and_one_hot_predictions():
    k = 10
    uniform = torch.full((7, k), 1 / k)
    assert sq.class_entropy(uniform) == pytest.approx(math.log(k))
    assert sq.marginal_class_entropy(uniform) == pytest.approx(math.log(k))
    one_hot = torch.eye(k)[torch.arange(30) % k]        # confident, every class in turn
    assert sq.class_entropy(one_hot) == 0
    assert sq.marginal_class_entropy(one_hot) == pytest.approx(math.log(k))
    one_class = torch.eye(k)[torch.zeros(30, dtype=torch.long)]    # confident, one class only
    assert sq.class_entropy(one_class) == 0 and sq.marginal_class_entropy(one_class) == 0


# ---------------------------------------------------------------- the classifier and its cache


def synthetic(n: int = 48, shape=(1, 8, 8), seed: int = 0) -> tuple[Split, Split]:
    """Two classes told apart by brightness: (train, test)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = (torch.rand(n, *shape, generator=gen) * 100 + 120 * labels.view(-1, 1, 1, 1)).to(torch.uint8)
    cut = 3 * n // 4
    return Split(images[:cut], labels[:cut]), Split(images[cut:], labels[cut:])


@pytest.fixture
def quick(monkeypatch):
    """Classifier training in a handful of steps."""
    monkeypatch.setitem(sq.TRAIN, "epochs", 1)
    monkeypatch.setitem(sq.TRAIN, "min_steps", 5)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32), (1, 5, 7), (2, 1, 1), (3, 96, 64)])
def test_classifier_takes_any_image_shape(shape):
    net = sq.FeatureClassifier(shape, 4)
    x = torch.rand(3, *shape)
    assert net.features(x).shape == (3, sq.FEATURE_DIM) and net(x).shape == (3, 4)
    assert net.classify(x).shape == (3,) and net.classify(x).dtype == torch.long


def test_training_is_seeded_and_learns_an_easy_task():
    train, test = synthetic()
    a, acc_a = sq.train_classifier(train, test, epochs=1, min_steps=30, batch_size=8)
    b, acc_b = sq.train_classifier(train, test, epochs=1, min_steps=30, batch_size=8)
    assert acc_a == acc_b == 1.0
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_cache_is_reused_and_keyed_by_the_data(quick, tmp_path, monkeypatch):
    train, test = synthetic()
    lines = []
    first = sq.load_or_train(train, test, tmp_path, announce=lines.append)
    assert first.trained and first.path.exists() and first.path.with_suffix(".json").exists()
    assert len(lines) == 2 and "cached in" in lines[0] and "test accuracy" in lines[1]
    stamp = first.path.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache holds this classifier")
    monkeypatch.setattr(sq, "train_classifier", no_training)
    second = sq.load_or_train(train, test, tmp_path, announce=lines.append)
    assert not second.trained and second.path == first.path and len(lines) == 2
    assert first.path.stat().st_mtime_ns == stamp
    assert second.test_accuracy == first.test_accuracy
    x = test.images
    assert torch.equal(second.net.classify(x), first.net.classify(x))
    assert torch.allclose(second.net.features(x.float() / 255), first.net.features(x.float() / 255))

    monkeypatch.undo()
    monkeypatch.setitem(sq.TRAIN, "epochs", 1)
    monkeypatch.setitem(sq.TRAIN, "min_steps", 5)
    images = train.images.clone()
    images[0, 0, 0, 0] ^= 1                             # one pixel of other data
    other = sq.load_or_train(Split(images, train.labels), test, tmp_path, announce=lines.append)
    assert other.trained and other.path != first.path
    assert len(list(tmp_path.glob("*.safetensors"))) == 2


@pytest.mark.parametrize("broken", ["weights", "json", "json-list", "mismatch"])
def test_a_corrupt_cache_entry_is_retrained(quick, tmp_path, broken):
    train, test = synthetic()
    entry = sq.load_or_train(train, test, tmp_path, announce=lambda line: None)
    if broken == "weights":
        entry.path.write_bytes(b"not a safetensors file")
    elif broken == "json":
        entry.path.with_suffix(".json").write_text("{ truncated")
    elif broken == "json-list":
        entry.path.with_suffix(".json").write_text("[1, 2]")
    else:                                               # the weights of another dataset
        other = sq.load_or_train(*synthetic(seed=1), tmp_path, announce=lambda line: None)
        entry.path.write_bytes(other.path.read_bytes())
    lines = []
    again = sq.load_or_train(train, test, tmp_path, announce=lines.append)
    assert again.trained and "unreadable" in lines[0] and "retraining" in lines[0]
    assert not sq.load_or_train(train, test, tmp_path, announce=lines.append).trained


def test_data_without_labels_is_refused(tmp_path):
    train, test = synthetic()
    with pytest.raises(DataError, match="labels"):
        sq.load_or_train(Split(train.images, None), test, tmp_path)


@pytest.fixture(scope="module")
def mnist_classifier(mnist_dir):
    raw = load_idx_folder(mnist_dir)
    train = Split(torch.from_numpy(raw.train_images), torch.from_numpy(raw.train_labels).long())
    test = Split(torch.from_numpy(raw.test_images), torch.from_numpy(raw.test_labels).long())
    net, acc = sq.train_classifier(train, test, epochs=1, min_steps=100)
    return net, acc, test


def test_classifier_accuracy_on_real_mnist(mnist_classifier):
    """800 training images, 100 Adam steps: about 0.86 on the 200 test images."""
    net, acc, test = mnist_classifier
    assert acc > 0.8
    assert acc == pytest.approx(float((net.classify(test.images) == test.labels).double().mean()))


# ---------------------------------------------------------------- measuring a model


class Replay(Autoencoder):
    """A stand-in generator whose 'samples' are given images (of the class asked for, if
    label-conditional)."""
    can_sample = True

    def __init__(self, split: Split, conditional: bool = False):
        super().__init__(ModelConfig(input_shape=split.image_shape))
        self.split, self.needs_labels, self.family = split, conditional, "replay"
        self.cfg.n_classes = 10
        self.drawn = 0

    def sample(self, n, generator=None, labels=None):
        if labels is None:
            idx = torch.arange(self.drawn, self.drawn + n) % len(self.split)
        else:
            pools = [torch.nonzero(self.split.labels == c).flatten() for c in range(10)]
            idx = torch.stack([pools[c][(self.drawn + i) % len(pools[c])]
                               for i, c in enumerate(labels.tolist())])
        self.drawn += n
        return self.split.images[idx].float() / 255


def test_sample_quality_of_real_images_against_noise(mnist_classifier):
    net, acc, test = mnist_classifier
    real = sq.sample_quality(Replay(test), net, test, batch_size=64)
    assert set(real) == {"frechet_distance", "sample_class_entropy", "sample_marginal_entropy"}
    assert real["frechet_distance"] == pytest.approx(0, abs=1e-3)    # the very same images
    assert real["sample_marginal_entropy"] > 2.0                     # ten classes, log 10 = 2.3

    class Noise(Replay):
        def sample(self, n, generator=None, labels=None):
            return torch.rand(n, *self.cfg.input_shape, generator=generator)
    noise = sq.sample_quality(Noise(test), net, test, n_samples=100, seed=3)
    assert noise["frechet_distance"] > 10 * max(real["frechet_distance"], 1.0)


def test_label_conditional_samples_get_a_label_accuracy(mnist_classifier):
    net, acc, test = mnist_classifier
    res = sq.sample_quality(Replay(test, conditional=True), net, test, n_samples=100)
    assert res["sample_label_accuracy"] > 0.7          # real images of the class asked for


def test_a_model_that_cannot_sample_is_refused():
    model = Autoencoder(ModelConfig())
    model.family = "ae"
    with pytest.raises(ConfigError, match="no prior to sample"):
        sq.check_sample_quality(model)

"""The few-label probe: balanced subsets, batched encoding, the classifiers on separable and on
shuffled data, and ``aelab probe`` end to end on small real MNIST."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from aelab.cli import main
from aelab.data import Split
from aelab.errors import ConfigError, DataError
from aelab.idx import write_idx
from aelab.models import build_model, model_config_from_dict
from aelab.probe import balanced_subset, encode_split, fit_and_score, probe
from cli_helpers import only_error_line, trained_run

TINY_1 = ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]
ACCURACIES = ("codes_linear", "codes_knn", "pixels_linear", "pixels_knn")


def labels_10(n_per_class: int = 30, seed: int = 0) -> np.ndarray:
    """(10 * n_per_class,) shuffled labels, n_per_class of each of 10 classes."""
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(10), n_per_class))


def clusters(n_per_class: int, seed: int, dim: int = 12, spread: float = 0.5):
    """Ten tight clusters around 10 x the first ten unit vectors: (10 * n, dim), (10 * n,) classes."""
    rng = np.random.default_rng(seed)
    y = labels_10(n_per_class, seed)
    return 10 * np.eye(10, dim)[y] + rng.normal(0, spread, (len(y), dim)), y


# ---------------------------------------------------------------- balanced_subset


def test_balanced_subset_takes_n_over_10_of_each_class():
    labels = labels_10()
    idx = balanced_subset(labels, 50, seed=0)
    assert len(idx) == len(set(idx.tolist())) == 50
    assert np.bincount(labels[idx], minlength=10).tolist() == [5] * 10


def test_balanced_subset_accepts_a_tensor():
    labels = labels_10()
    idx = balanced_subset(torch.from_numpy(labels), 20, seed=3)
    assert np.array_equal(idx, balanced_subset(labels, 20, seed=3))


def test_balanced_subset_is_deterministic_per_seed_and_differs_across_seeds():
    labels = labels_10()
    assert np.array_equal(balanced_subset(labels, 100, 7), balanced_subset(labels, 100, 7))
    draws = {tuple(balanced_subset(labels, 100, seed)) for seed in range(5)}
    assert len(draws) == 5


def test_balanced_subset_all_of_every_class():
    labels = labels_10(30)
    assert np.array_equal(balanced_subset(labels, 300, 0), np.arange(300))


@pytest.mark.parametrize("n", [105, 5, 0])
def test_balanced_subset_refuses_n_not_a_multiple_of_the_classes(n):
    with pytest.raises(ConfigError, match="multiple of the 10 classes"):
        balanced_subset(labels_10(), n, 0)


def test_balanced_subset_refuses_more_than_a_class_holds():
    labels = labels_10(30)
    labels = np.concatenate([labels[labels != 3], np.full(4, 3)])   # class 3 has 4 images only
    with pytest.raises(DataError, match="class 3 has only 4"):
        balanced_subset(labels, 50, 0)
    with pytest.raises(DataError):
        balanced_subset(labels_10(30), 310, 0)


# ---------------------------------------------------------------- encode_split


def test_encode_split_equals_embed_on_the_whole_split():
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8),
                                                "latent_dim": 3, "hidden_dims": (16,)})).eval()
    images = torch.randint(0, 256, (37, 1, 8, 8), dtype=torch.uint8)
    codes = encode_split(model, Split(images, None), batch_size=8)    # 5 batches, the last short
    with torch.no_grad():
        expected = model.embed(images.float() / 255)
    assert codes.shape == (37, 3)
    torch.testing.assert_close(codes, expected)
    assert not codes.requires_grad


# ---------------------------------------------------------------- fit_and_score


def test_probe_separates_clusters_and_not_shuffled_labels():
    x_train, y_train = clusters(10, seed=0)
    x_test, y_test = clusters(50, seed=1)
    scores = fit_and_score(x_train, y_train, x_test, y_test, k=5)
    assert scores["linear"] > 0.99 and scores["knn"] > 0.99
    shuffled = np.random.default_rng(2).permutation(y_train)
    chance = fit_and_score(x_train, shuffled, x_test, y_test, k=5)
    assert chance["linear"] < 0.3 and chance["knn"] < 0.3


def test_probe_on_split_objects_codes_beat_pixels_when_the_code_holds_the_class():
    """A model whose embed is the class itself (one-hot) against pixels that are pure noise."""
    class Oracle(torch.nn.Module):
        codes_use_labels, family = False, "oracle"

        def embed(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].mul(255).round().long(), 10).float()

    def split(n_per_class, seed):
        y = torch.from_numpy(labels_10(n_per_class, seed))
        images = torch.randint(0, 256, (len(y), 1, 4, 4), dtype=torch.uint8,
                               generator=torch.Generator().manual_seed(seed))
        images[:, 0, 0, 0] = y.to(torch.uint8)                # class in one pixel, noise elsewhere
        return Split(images, y)

    result = probe(Oracle(), split(20, 0), split(30, 1), n_labels=50, seed=0, repeats=3, k=5)
    assert result["codes_linear"] == result["codes_knn"] == 1.0
    assert result["codes_linear_std"] == 0.0
    assert len(result["per_seed"]["pixels_knn"]) == 3 and result["seeds"] == [0, 1, 2]
    assert result["n_labelled"] == 50 and result["k"] == 5


def test_probe_refuses_label_conditional_models_and_unlabelled_splits():
    class Conditional(torch.nn.Module):
        codes_use_labels, family = True, "cvae"

    images = torch.zeros(20, 1, 4, 4, dtype=torch.uint8)
    labelled = Split(images, torch.from_numpy(labels_10(2)))
    with pytest.raises(ConfigError, match="cvae"):
        probe(Conditional(), labelled, labelled, n_labels=10)
    Conditional.codes_use_labels = False
    with pytest.raises(DataError, match="no labels"):
        probe(Conditional(), Split(images, None), labelled, n_labels=10)
    one_class = Split(images, torch.zeros(20, dtype=torch.int64))
    with pytest.raises(DataError, match="one class only"):
        probe(Conditional(), one_class, labelled, n_labels=None)


# ---------------------------------------------------------------- aelab probe


def main_ok(argv, capsys) -> bool:
    """main(argv) == 0, with its stderr shown in the failure report when it is not."""
    code = main(argv)
    if code != 0:
        print(capsys.readouterr().err)
    return code == 0


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("probe") / "vae", mnist_dir, *TINY_1)


def test_cli_probe_json_gives_four_accuracies_above_chance(vae_run, capsys):
    assert main_ok(["probe", vae_run, "--labels", "100", "--json"], capsys)
    result = json.loads(capsys.readouterr().out)
    for name in ACCURACIES:
        assert 0 <= result[name] <= 1, (name, result[name])
        assert name in result["units"] and "fraction" in result["units"][name]
    assert result["pixels_linear"] > 0.1 and result["pixels_knn"] > 0.1    # chance is 0.1
    assert result["n_labelled"] == 100 and result["labels_per_class"] == 10
    assert result["split"] == "test" and result["n_images"] == 200 and result["seed"] == 0
    assert result["classifiers"]["knn"]["n_neighbors"] == 5
    assert result["classifiers"]["linear"]["model"] == "LogisticRegression"


def test_cli_probe_repeats_and_all_labels(vae_run, capsys):
    assert main_ok(["probe", vae_run, "--labels", "50", "--repeats", "2", "--seed", "4", "--json"],
                   capsys)
    result = json.loads(capsys.readouterr().out)
    assert result["seeds"] == [4, 5] and len(result["per_seed"]["codes_knn"]) == 2
    assert main_ok(["probe", vae_run, "--labels", "all", "--json"], capsys)
    result = json.loads(capsys.readouterr().out)
    assert result["labels"] == "all" and result["n_labelled"] == 720    # 800 less a tenth for val
    assert all(0 <= result[name] <= 1 for name in ACCURACIES)
    assert result["pixels_linear"] > 0.1 and result["pixels_knn"] > 0.1


def test_cli_probe_prints_a_table(vae_run, capsys):
    assert main_ok(["probe", vae_run, "--labels", "20", "--k", "3"], capsys)
    out = capsys.readouterr().out
    assert "codes" in out and "pixels" in out and "3-NN" in out and "linear" in out


def test_cli_probe_of_a_cvae_is_one_error_line(tmp_path, mnist_dir, capsys):
    run = trained_run(tmp_path / "cvae", mnist_dir, *TINY_1, "--model", "cvae")
    capsys.readouterr()
    assert main(["probe", run, "--labels", "100"]) == 2
    assert "cvae" in only_error_line(capsys.readouterr().err)


def test_cli_probe_without_labels_is_one_error_line(vae_run, tmp_path, mnist_5k, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", mnist_5k[0][:120])
    write_idx(folder / "t10k-images-idx3-ubyte", mnist_5k[0][120:160])
    assert main(["probe", vae_run, "--labels", "100", "--data-dir", str(folder)]) == 2
    assert "no labels" in only_error_line(capsys.readouterr().err)


@pytest.mark.parametrize("flags", [["--labels", "105"], ["--labels", "all", "--repeats", "3"],
                                   ["--labels", "2000"]])
def test_cli_probe_bad_label_counts_are_one_error_line(vae_run, flags, capsys):
    assert main(["probe", vae_run, *flags]) == 2
    only_error_line(capsys.readouterr().err)


"""The iwae and cvae families and the vae's kl-warmup end to end on small real MNIST: train, eval,
sample (with --label), reconstruct."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from aelab.cli import main
from aelab.idx import write_idx
from cli_helpers import quiet_main, only_error_line, trained_run

TINY = ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def iwae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("families") / "iwae", mnist_dir, *TINY, "--model", "iwae", "--k", "3")


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("families") / "cvae", mnist_dir, *TINY, "--preset", "cvae")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("families") / "vae", mnist_dir, *TINY)


# ---------------------------------------------------------------- iwae


def test_iwae_eval_json_reports_the_k_sample_bound(iwae_run, capsys):
    assert main(["eval", iwae_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "iwae" and result["n_images"] == 200
    assert {"elbo", "kl", "iw_bound"} <= set(result) and "iw_bound" in result["units"]
    assert result["elbo"] < result["iw_bound"] < 0          # nats per image; k = 3 beats the ELBO


def test_iwae_run_records_k_and_samples(iwae_run, tmp_path, capsys):
    with open(f"{iwae_run}/config.yaml") as f:
        assert "k: 3" in f.read()
    assert main(["sample", iwae_run, "-n", "4", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


def test_iwae_rejects_beta(tmp_path, mnist_dir, capsys):
    code = main(["train", "--data-dir", mnist_dir, *TINY, "--model", "iwae", "--beta", "4",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    assert "beta must be 1" in only_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- cvae


def test_cvae_run_knows_its_classes_and_draws_every_one(cvae_run):
    with open(f"{cvae_run}/config.yaml") as f:
        assert "n_classes: 10" in f.read()
    with Image.open(f"{cvae_run}/samples.png") as im:
        assert im.size == (2 * (8 * 30 + 2),) * 2          # 64 samples in an 8 x 8 grid, scale 2


def test_cvae_sample_with_a_label(cvae_run, tmp_path, capsys):
    threes, others = tmp_path / "threes.png", tmp_path / "sevens.png"
    assert main(["sample", cvae_run, "--label", "3", "-n", "16", "-o", str(threes)]) == 0
    assert "16 samples of class 3" in capsys.readouterr().out
    assert main(["sample", cvae_run, "--label", "7", "-n", "16", "-o", str(others)]) == 0
    a, b = (np.asarray(Image.open(p)) for p in (threes, others))
    assert a.shape == b.shape and not np.array_equal(a, b)     # same z, another class


@pytest.mark.parametrize("label", ["10", "-1"])
def test_cvae_sample_with_a_label_outside_its_classes(cvae_run, tmp_path, label, capsys):
    assert main(["sample", cvae_run, "--label", label, "-o", str(tmp_path / "s.png")]) == 2
    assert "0..9" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.png").exists()


def test_sample_with_a_label_from_a_vae_is_an_error(vae_run, tmp_path, capsys):
    assert main(["sample", vae_run, "--label", "3", "-o", str(tmp_path / "s.png")]) == 2
    assert "not label-conditional" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.png").exists()


def test_cvae_eval_and_reconstruct(cvae_run, tmp_path, capsys):
    assert main(["eval", cvae_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "cvae" and -1000 < result["elbo"] < 0 and result["kl"] > 0
    path = tmp_path / "r.png"
    assert main(["reconstruct", cvae_run, "-n", "8", "-o", str(path)]) == 0
    assert path.exists()


def test_cvae_on_data_without_labels_is_one_error_line(tmp_path, mnist_dir, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((12, 28, 28), dtype=np.uint8))
    code = main(["train", "--data-dir", str(folder), *TINY, "--model", "cvae", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "trains on labels" in only_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------- vae: kl warm-up


def test_kl_warmup_trains_the_first_epoch_on_the_reconstruction_alone(tmp_path, mnist_dir):
    run = trained_run(tmp_path / "warm", mnist_dir, *TINY, "--kl-warmup", "2", "--epochs", "3", "--beta", "2")
    records = [json.loads(line) for line in open(f"{run}/metrics.jsonl")]
    weights = [(r["train_loss"] - r["train_rec"]) / r["train_kl"] for r in records]
    assert weights == pytest.approx([0.0, 1.0, 2.0], abs=1e-4)


def test_a_cvae_refuses_test_labels_beyond_its_classes(tmp_path, mnist_dir, mnist_5k):
    images, labels = mnist_5k
    small = tmp_path / "small"
    small.mkdir()
    order = np.random.default_rng(0).permutation(len(labels))   # the sample is sorted by class
    train = order[labels[order] < 5][:300]                         # train on classes 0..4 only
    test = order[-100:]                                            # test on every class
    write_idx(small / "train-images-idx3-ubyte.gz", images[train])
    write_idx(small / "train-labels-idx1-ubyte.gz", labels[train].astype("uint8"))
    write_idx(small / "t10k-images-idx3-ubyte.gz", images[test])
    write_idx(small / "t10k-labels-idx1-ubyte.gz", labels[test].astype("uint8"))
    code, _, err = quiet_main(["train", "--data-dir", str(small), "--model", "cvae", *TINY,
                               "--out", str(tmp_path / "run")])
    assert code == 2
    assert "label 9" in only_error_line(err) and "5 classes" in err
    assert not (tmp_path / "run").exists()

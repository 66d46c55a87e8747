"""The m2 family end to end on small real MNIST: train with --labels, eval reports class_error,
the labelled images are recorded, sample and reconstruct work, and bad --labels are one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from aelab.cli import main
from aelab.idx import write_idx
from cli_helpers import only_error_line, quiet_main, trained_run

TINY = ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--no-progress"]


@pytest.fixture(scope="module")
def m2_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("m2") / "run", mnist_dir, *TINY, "--model", "m2",
                       "--labels", "20")


def test_eval_reports_the_test_classification_error(m2_run, capsys):
    assert main(["eval", m2_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "m2" and result["n_images"] == 200
    assert 0 <= result["class_error"] <= 1 and "class_error" in result["units"]
    assert -1000 < result["elbo"] < 0


def test_the_run_records_the_labelled_images_and_alpha(m2_run, mnist_dir):
    info = json.load(open(f"{m2_run}/run.json"))
    assert info["data"]["n_labelled"] == 20 and len(info["data"]["labelled_indices"]) == 20
    assert 0 <= info["test_metrics"]["class_error"] <= 1
    cfg = yaml.safe_load(open(f"{m2_run}/config.yaml"))
    assert cfg["data"]["labels"] == 20 and cfg["model"]["n_classes"] == 10
    assert cfg["model"]["alpha"] == pytest.approx(0.1 * 720 / 20)        # 0.1 N / N_labelled
    record = json.loads(open(f"{m2_run}/metrics.jsonl").readline())
    assert {"train_class_ce", "train_class_error", "val_class_error"} <= set(record)


def test_sample_and_reconstruct(m2_run, tmp_path, capsys):
    assert main(["sample", m2_run, "--label", "3", "-n", "8", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", m2_run, "-n", "8", "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "s.png").exists() and (tmp_path / "r.png").exists()


def test_preset_m2_is_listed_and_semi_supervised(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "m2\n" in out and "labels=100" in out


@pytest.mark.parametrize("labels, message", [("10000", "more than the 720 training images"),
                                             ("25", "not a positive multiple of the 10 classes"),
                                             ("0", "--labels must be at least 1")])
def test_bad_labels_are_one_error_line(tmp_path, mnist_dir, labels, message):
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--model", "m2",
                               "--labels", labels, "--out", str(tmp_path / "run")])
    assert code == 2
    assert message in only_error_line(err)
    assert not (tmp_path / "run").exists()


def test_labels_for_a_family_that_needs_every_label_is_one_error_line(tmp_path, mnist_dir):
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--model", "cvae",
                               "--labels", "20", "--out", str(tmp_path / "run")])
    assert code == 2
    assert "use --model m2" in only_error_line(err)


@pytest.mark.parametrize("flags", [["--labels", "20"], []])
def test_m2_on_data_without_labels_is_one_error_line(tmp_path, flags):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((12, 28, 28), dtype=np.uint8))
    code, _, err = quiet_main(["train", "--data-dir", str(folder), *TINY, "--model", "m2", *flags,
                               "--out", str(tmp_path / "run")])
    assert code == 2
    line = only_error_line(err)
    assert "no label files" in line


@pytest.fixture(scope="module")
def m1m2_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("m1m2") / "run", mnist_dir, *TINY, "--model", "m1m2",
                       "--labels", "20", "--set", "model.m2_hidden_dims=[16]",
                       "--set", "model.m2_latent_dim=3")


def test_m1m2_eval_reports_the_class_error_of_the_reloaded_model(m1m2_run, capsys):
    """eval rebuilds the model from the run folder: its test class_error is the one training saw."""
    assert main(["eval", m1m2_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    info = json.load(open(f"{m1m2_run}/run.json"))
    assert result["model"] == "m1m2" and result["n_images"] == 200
    assert result["class_error"] == pytest.approx(info["test_metrics"]["class_error"])
    assert 0 <= result["class_error"] <= 1 and -1000 < result["elbo"] < 0
    cfg = yaml.safe_load(open(f"{m1m2_run}/config.yaml"))
    assert cfg["model"]["alpha"] == pytest.approx(0.1 * 720 / 20)
    record = json.loads(open(f"{m1m2_run}/metrics.jsonl").readline())
    assert {"train_rec", "train_m2_rec", "train_class_ce", "val_class_error"} <= set(record)


def test_m1m2_samples_a_class(m1m2_run, tmp_path):
    assert main(["sample", m1m2_run, "--label", "3", "-n", "8", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").exists()


def test_m1m2_codes_see_no_label_so_it_probes_on_all_training_labels(m1m2_run, capsys):
    # its codes are M1's z1; trained with --labels 20, the probe still draws from every label
    assert main(["probe", m1m2_run, "--labels", "100", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_labelled"] == 100 and result["n_classes"] == 10 and result["code_dim"] == 4


@pytest.mark.parametrize("family", ["m1m2", "m2"])
def test_the_elbo_anomaly_score_of_the_semi_supervised_families_needs_no_label(family, m1m2_run, m2_run,
                                                                               tmp_path, capsys):
    run = {"m1m2": m1m2_run, "m2": m2_run}[family]
    csv_path = tmp_path / "s.csv"
    assert main(["anomaly", run, "--score", "elbo", "-o", str(csv_path), "--png", str(tmp_path / "t.png")]) == 0
    from aelab.anomaly import anomaly_scores
    from aelab.data import load_splits
    from aelab.runs import load_run
    cfg, model, _ = load_run(run, "cpu")
    test = load_splits(cfg.data, cfg.train.seed).test
    scores = np.loadtxt(csv_path, delimiter=",", skiprows=1, usecols=2)
    np.testing.assert_allclose(scores, anomaly_scores(model, test, "elbo", 1000).numpy(), rtol=1e-5)
    with torch.no_grad():                      # the same bound whatever labels are given
        x = test.images[:8].float() / 255
        elbos = []
        for labels in (test.labels[:8], torch.full((8,), 3), None):
            torch.manual_seed(0)                   # the same z draws
            elbos.append(model.metrics(x, labels)["elbo"].numpy())
        np.testing.assert_allclose(elbos[0], elbos[1], rtol=1e-5)
        np.testing.assert_allclose(elbos[0], elbos[2], rtol=1e-5)


def test_preset_m1m2_is_listed_and_semi_supervised(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert "m1m2\n" in out and "M1+M2" in out


def test_an_unknown_m1m2_option_is_one_error_line(tmp_path, mnist_dir):
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--model", "m1m2",
                               "--labels", "20", "--set", "model.m2_latent_dim=0",
                               "--out", str(tmp_path / "run")])
    assert code == 2
    assert "m2_latent_dim must be at least 1" in only_error_line(err)

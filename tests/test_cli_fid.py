"""`aelab eval --fid` end to end on the small real MNIST folder."""
from __future__ import annotations

import json
import math

import pytest

from aelab import sample_quality
from aelab.cli import main
from cli_helpers import only_error_line, trained_run

TINY = ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]
KEYS = {"frechet_distance", "classifier_accuracy", "sample_class_entropy", "sample_marginal_entropy"}


@pytest.fixture(autouse=True)
def quick_classifier(monkeypatch):
    """A classifier in 60 Adam steps: these tests check the plumbing, not the accuracy."""
    monkeypatch.setitem(sample_quality.TRAIN, "epochs", 1)
    monkeypatch.setitem(sample_quality.TRAIN, "min_steps", 60)


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("fid") / "vae", mnist_dir, *TINY)


def test_eval_fid_json_then_the_cached_classifier(vae_run, capsys, tmp_path):
    assert main(["eval", vae_run, "--fid", "--json"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)                     # one JSON object: progress goes to stderr
    assert KEYS <= set(result) and KEYS <= set(result["units"])
    assert {"recon_mse", "elbo"} <= set(result)
    assert result["fid_samples"] == result["n_images"] == 200
    assert result["frechet_distance"] > 0
    assert 0.5 < result["classifier_accuracy"] <= 1
    assert 0 <= result["sample_class_entropy"] <= math.log(10)
    assert 0 <= result["sample_marginal_entropy"] <= math.log(10)
    assert "sample_label_accuracy" not in result
    lines = err.splitlines()
    assert len(lines) == 2 and "training the sample-quality classifier" in lines[0]
    assert str(tmp_path / "aelab-data" / "classifiers") in lines[0]      # $AELAB_DATA

    assert main(["eval", vae_run, "--fid", "--json", "--fid-samples", "50"]) == 0
    out, err = capsys.readouterr()
    again = json.loads(out)
    assert err == ""                             # the cached classifier: no training
    assert again["fid_samples"] == 50
    assert again["classifier_accuracy"] == result["classifier_accuracy"]


def test_eval_fid_text_output(vae_run, capsys):
    assert main(["eval", vae_run, "--fid", "--fid-samples", "20", "--seed", "1"]) == 0
    names = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert KEYS <= set(names)


def test_cvae_samples_get_a_label_accuracy(tmp_path, mnist_dir, capsys):
    run = trained_run(tmp_path / "cvae", mnist_dir, *TINY, "--model", "cvae")
    assert main(["eval", run, "--fid", "--fid-samples", "40", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0 <= result["sample_label_accuracy"] <= 1 and "sample_label_accuracy" in result["units"]


def test_an_ae_run_is_one_line_error(tmp_path, mnist_dir, capsys):
    run = trained_run(tmp_path / "ae", mnist_dir, *TINY, "--model", "ae")
    assert main(["eval", run, "--fid"]) == 2
    assert "no prior to sample from" in only_error_line(capsys.readouterr().err)


def test_fid_samples_without_fid_is_refused(vae_run, capsys):
    assert main(["eval", vae_run, "--fid-samples", "10"]) == 2
    assert "add --fid" in only_error_line(capsys.readouterr().err)

"""Anomaly detection: exclude_class in the splits, the scores, AUROC, the CSV and PNG, the CLI."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from aelab.anomaly import anomaly_scores, auroc, top_k, write_scores_csv
from aelab.cli import main
from aelab.config import DataConfig, resolve_config
from aelab.data import Split, as_split, load_splits
from aelab.errors import ConfigError, DataError
from aelab.idx import write_idx
from aelab.models import build_model, model_config_from_dict
from aelab.runs import load_run
from aelab.viz import grid
from cli_helpers import quiet_main, only_error_line

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--no-progress"]


def tiny_model(name: str, **options):
    torch.manual_seed(0)
    cfg = model_config_from_dict({"name": name, "input_shape": [1, 8, 8], "latent_dim": 3,
                                  "hidden_dims": [16], **options})
    return build_model(cfg).eval()


@pytest.fixture
def tiny_split() -> Split:
    """10 random uint8 1x8x8 images with labels 0..4."""
    gen = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (10, 1, 8, 8), generator=gen, dtype=torch.uint8)
    return Split(images, torch.arange(10) % 5)


# ---------------------------------------------------------------- exclude_class in the splits


def test_exclude_class_leaves_it_out_of_train_and_val_only(mnist_dir):
    plain = load_splits(DataConfig(data_dir=mnist_dir), seed=3)
    without = load_splits(DataConfig(data_dir=mnist_dir, exclude_class=1), seed=3)
    assert (plain.train.labels == 1).any() and (plain.val.labels == 1).any()
    for name in ("train", "val"):
        before, after = getattr(plain, name), getattr(without, name)
        keep = before.labels != 1
        assert not (after.labels == 1).any()
        # the same images of the other classes, in the same order: removed after the split
        assert torch.equal(after.images, before.images[keep])
        assert torch.equal(after.labels, before.labels[keep])
    assert torch.equal(without.test.images, plain.test.images)
    assert torch.equal(without.test.labels, plain.test.labels) and (without.test.labels == 1).any()
    assert without.describe()["excluded_class"] == 1 and "excluded_class" not in plain.describe()


def test_excluding_the_largest_label_keeps_the_number_of_classes(mnist_dir):
    without = load_splits(DataConfig(data_dir=mnist_dir, exclude_class=9), seed=0)
    assert int(without.train.labels.max()) == 8
    assert without.n_classes == 10      # a cvae can still take class 9 at test time


def test_exclude_class_needs_labels(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((12, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="exclude_class 1 needs labels"):
        load_splits(DataConfig(data_dir=str(tmp_path), exclude_class=1), seed=0)


def test_exclude_class_must_occur_and_be_a_label(mnist_dir):
    with pytest.raises(DataError, match="does not occur"):
        load_splits(DataConfig(data_dir=mnist_dir, exclude_class=12), seed=0)
    with pytest.raises(ConfigError, match="exclude_class"):
        DataConfig(exclude_class=-1)


def test_exclude_class_is_a_config_field_set_by_its_path():
    cfg = resolve_config(overrides={"data.exclude_class": "3"})
    assert cfg.data.exclude_class == 3 and cfg.to_dict()["data"]["exclude_class"] == 3
    assert resolve_config().data.exclude_class is None


# ---------------------------------------------------------------- scores


@pytest.mark.parametrize("name", ["ae", "vae"])
def test_recon_score_is_the_mean_squared_error_per_pixel(name, tiny_split):
    model = tiny_model(name)
    scores = anomaly_scores(model, tiny_split, "recon", batch_size=3)
    x = tiny_split.images.float() / 255
    with torch.no_grad():
        expected = ((model.reconstruct(x) - x) ** 2).mean(dim=(1, 2, 3))
    assert scores.shape == (10,) and scores.dtype == torch.float64
    torch.testing.assert_close(scores, expected.double(), rtol=1e-6, atol=0)


def test_elbo_score_is_minus_the_elbo_with_the_same_seed(tiny_split):
    model = tiny_model("vae")
    x = tiny_split.images.float() / 255
    torch.manual_seed(7)
    expected = -model.metrics(x)["elbo"]
    state = torch.get_rng_state()
    scores = anomaly_scores(model, tiny_split, "elbo", batch_size=10, seed=7)
    assert torch.equal(torch.get_rng_state(), state)             # the global RNG is left alone
    torch.testing.assert_close(scores, expected.double(), rtol=1e-6, atol=0)
    assert torch.equal(anomaly_scores(model, tiny_split, "elbo", batch_size=10, seed=7), scores)
    assert not torch.equal(anomaly_scores(model, tiny_split, "elbo", batch_size=10, seed=8), scores)


def test_elbo_score_in_batches_draws_in_turn(tiny_split):
    model = tiny_model("vae")
    x = tiny_split.images.float() / 255
    torch.manual_seed(0)
    expected = torch.cat([-model.metrics(x[i:i + 4])["elbo"] for i in range(0, 10, 4)])
    scores = anomaly_scores(model, tiny_split, "elbo", batch_size=4, seed=0)
    torch.testing.assert_close(scores, expected.double(), rtol=1e-6, atol=0)


@pytest.mark.parametrize("name, message", [("ae", "reports no ELBO"), ("cvae", "label")])
def test_elbo_score_needs_a_family_with_an_unconditional_elbo(name, message, tiny_split):
    options = {"n_classes": 5} if name == "cvae" else {}
    with pytest.raises(ConfigError, match=message):
        anomaly_scores(tiny_model(name, **options), tiny_split, "elbo")


def test_unknown_score_kind(tiny_split):
    with pytest.raises(ConfigError, match="unknown anomaly score"):
        anomaly_scores(tiny_model("ae"), tiny_split, "likelihood")


# ---------------------------------------------------------------- AUROC, top-k, CSV


def test_auroc_of_separated_scores():
    positives = np.array([0, 0, 1, 0, 1, 1], dtype=bool)
    scores = np.where(positives, 5.0, 1.0) + np.arange(6) * 0.01
    assert auroc(scores, positives) == 1.0
    assert auroc(-scores, positives) == 0.0
    assert auroc(np.ones(6), positives) == 0.5      # all tied: chance


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auroc_matches_sklearn_on_random_scores_with_ties(seed):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    rng = np.random.default_rng(seed)
    positives = rng.random(300) < 0.2
    scores = np.round(rng.normal(size=300) + 0.5 * positives, 1)   # rounding makes ties
    assert auroc(scores, positives) == pytest.approx(roc_auc_score(positives, scores), abs=1e-12)


def test_auroc_needs_both_kinds():
    with pytest.raises(DataError, match="positives and negatives"):
        auroc([1.0, 2.0], [True, True])


def test_top_k_is_highest_first_and_stable():
    scores = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.3], dtype=torch.float64)
    assert top_k(scores, 3).tolist() == [1, 3, 2]
    assert top_k(scores, 10).tolist() == [1, 3, 2, 4, 0]


def test_scores_csv_with_and_without_labels(tmp_path):
    scores = torch.tensor([0.25, 1 / 3], dtype=torch.float64)
    write_scores_csv(tmp_path / "a.csv", scores, torch.tensor([7, 2]))
    write_scores_csv(tmp_path / "b.csv", scores, None)
    rows = list(csv.reader(open(tmp_path / "a.csv")))
    assert rows == [["index", "label", "score"], ["0", "7", "0.25"], ["1", "2", repr(1 / 3)]]
    assert [row[1] for row in csv.reader(open(tmp_path / "b.csv"))] == ["label", "", ""]


# ---------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def anomaly_run(tmp_path_factory, mnist_dir) -> str:
    """A tiny vae trained without class 1."""
    folder = tmp_path_factory.mktemp("anomaly") / "vae"
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--exclude-class", "1",
                               "--out", str(folder)])
    assert code == 0, err
    return str(folder)


def test_train_with_exclude_class_records_it(anomaly_run, mnist_dir):
    tree = yaml.safe_load(open(f"{anomaly_run}/config.yaml"))
    assert tree["data"]["exclude_class"] == 1
    info = json.load(open(f"{anomaly_run}/run.json"))["data"]
    plain = load_splits(DataConfig(data_dir=mnist_dir), seed=0)
    assert info["excluded_class"] == 1
    assert info["n_train"] == int((plain.train.labels != 1).sum()) < len(plain.train)
    assert info["n_val"] == int((plain.val.labels != 1).sum()) and info["n_test"] == 200


def test_eval_anomaly_class_refuses_likelihood_options(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--anomaly-class", "1", "--iw-samples", "5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iw-samples" in err[0]


def test_eval_anomaly_class_reports_auroc(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--anomaly-class", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and len(out.splitlines()) == 1
    result = json.loads(out)
    assert (result["split"], result["n_images"], result["anomaly_class"]) == ("test", 200, 1)
    assert result["score"] == "recon" and {"auroc", "score"} <= set(result["units"])
    assert 0.0 <= result["auroc"] <= 1.0
    # training is deterministic on the CPU; this run gives about 0.88 for the unseen 1s
    assert result["auroc"] > 0.5
    assert "elbo" not in result     # the AUROC replaces the metrics


def test_eval_anomaly_class_matches_the_scores_of_aelab_anomaly(anomaly_run, tmp_path, capsys):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    main(["eval", anomaly_run, "--anomaly-class", "1", "--json"])
    main(["anomaly", anomaly_run, "-o", str(tmp_path / "s.csv"), "--png", str(tmp_path / "t.png")])
    result = json.loads(capsys.readouterr().out.splitlines()[0])
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    expected = roc_auc_score([r["label"] == "1" for r in rows], [float(r["score"]) for r in rows])
    assert result["auroc"] == pytest.approx(expected, abs=1e-12)


def test_eval_anomaly_class_with_the_elbo_score_matches_aelab_anomaly(anomaly_run, tmp_path, capsys):
    roc_auc_score = pytest.importorskip("sklearn.metrics").roc_auc_score
    assert main(["eval", anomaly_run, "--anomaly-class", "1", "--score", "elbo", "--json"]) == 0
    main(["anomaly", anomaly_run, "--score", "elbo", "-o", str(tmp_path / "s.csv"),
          "--png", str(tmp_path / "t.png")])
    out = capsys.readouterr().out.splitlines()
    result = json.loads(out[0])
    assert result["score"] == "elbo" and "ELBO" in result["units"]["score"].upper()
    rows = list(csv.DictReader(open(tmp_path / "s.csv")))
    expected = roc_auc_score([r["label"] == "1" for r in rows], [float(r["score"]) for r in rows])
    assert result["auroc"] == pytest.approx(expected, abs=1e-12)
    recon = json.loads(quiet_main(["eval", anomaly_run, "--anomaly-class", "1", "--json"])[1])
    assert recon["auroc"] != result["auroc"]          # another score, another ranking


def test_score_without_anomaly_class_is_an_error(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--score", "elbo"]) == 2
    assert "--anomaly-class" in only_error_line(capsys.readouterr().err)


def test_eval_anomaly_class_other_than_the_excluded_one_warns(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--anomaly-class", "7"]) == 0
    out, err = capsys.readouterr()
    assert err.splitlines() == ["aelab: warning: --anomaly-class 7, but this run was trained "
                                "without class 1"]
    assert "auroc" in out


def test_eval_without_anomaly_class_gives_the_usual_metrics(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "elbo" in result and "auroc" not in result


def test_anomaly_writes_scores_and_the_top_k_images(anomaly_run, mnist_dir, tmp_path, capsys):
    csv_path, png_path = tmp_path / "s.csv", tmp_path / "t.png"
    assert main(["anomaly", anomaly_run, "-o", str(csv_path), "--png", str(png_path),
                 "--top", "5"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("200 images of the test split, score recon: mean ")
    test = load_splits(DataConfig(data_dir=mnist_dir), seed=0).test
    rows = list(csv.DictReader(open(csv_path)))
    assert [int(r["index"]) for r in rows] == list(range(200))
    assert [int(r["label"]) for r in rows] == test.labels.tolist()
    scores = torch.tensor([float(r["score"]) for r in rows], dtype=torch.float64)
    assert f"max {scores.max():.6g}" in lines[0]
    top = top_k(scores, 5)
    with Image.open(png_path) as im:
        picture = np.asarray(im)
    assert np.array_equal(picture, grid(test.images[top].float() / 255))
    # the first cell (2 pixels of padding, at scale 2) is the image with the highest score
    best = test.images[int(scores.argmax())][0].numpy().repeat(2, 0).repeat(2, 1)
    assert np.array_equal(picture[4:4 + 56, 4:4 + 56], best)


def test_anomaly_with_the_elbo_score_on_the_val_split(anomaly_run, tmp_path, capsys):
    csv_path = tmp_path / "s.csv"
    assert main(["anomaly", anomaly_run, "--split", "val", "--score", "elbo", "-o", str(csv_path),
                 "--png", str(tmp_path / "t.png")]) == 0
    assert "score elbo" in capsys.readouterr().out
    labels = [r["label"] for r in csv.DictReader(open(csv_path))]
    assert labels and "1" not in labels          # the run's val split, without its excluded class


def test_anomaly_on_other_data_without_labels(anomaly_run, mnist_5k, tmp_path, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", mnist_5k[0][:30])
    csv_path = tmp_path / "s.csv"
    assert main(["anomaly", anomaly_run, "--data-dir", str(folder), "-o", str(csv_path),
                 "--png", str(tmp_path / "t.png")]) == 0
    rows = list(csv.DictReader(open(csv_path)))
    assert len(rows) == 30 and all(r["label"] == "" for r in rows)  # every image, not a held-out sixth
    _, model, _ = load_run(anomaly_run, "cpu")
    in_file_order = anomaly_scores(model, as_split(mnist_5k[0][:30, None], None), "recon", 1000)
    assert [int(r["index"]) for r in rows] == list(range(30))
    np.testing.assert_allclose([float(r["score"]) for r in rows], in_file_order.numpy(), rtol=1e-5)


def test_anomaly_on_images_of_another_size(anomaly_run, tmp_path, capsys):
    folder = tmp_path / "images-32"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((12, 32, 32), dtype=np.uint8))
    assert main(["anomaly", anomaly_run, "--data-dir", str(folder), "-o", str(tmp_path / "s.csv"),
                 "--png", str(tmp_path / "t.png")]) == 2
    assert "images are 1x32x32 (CxHxW) but the model was built for 1x28x28" in \
        only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize("csv_name, png_name, words", [
    ("same.png", "same.png", "must end in .csv"),
    ("scores.txt", "t.png", "must end in .csv"),
])
def test_anomaly_scores_must_go_to_a_csv_not_over_the_png(anomaly_run, tmp_path, capsys,
                                                              csv_name, png_name, words):
    assert main(["anomaly", anomaly_run, "-o", str(tmp_path / csv_name), "--png",
                 str(tmp_path / png_name)]) == 2
    assert words in only_error_line(capsys.readouterr().err)
    assert not list(tmp_path.iterdir())


def test_elbo_score_on_an_ae_run_is_an_error(tmp_path, mnist_dir, capsys):
    run = tmp_path / "ae"
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--epochs", "1",
                               "--model", "ae", "--out", str(run)])
    assert code == 0, err
    assert main(["anomaly", str(run), "--score", "elbo", "-o", str(tmp_path / "s.csv"),
                 "--png", str(tmp_path / "t.png")]) == 2
    assert "ae reports no ELBO" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.csv").exists() and not (tmp_path / "t.png").exists()


def test_exclude_class_on_data_without_labels_is_an_error(tmp_path, mnist_5k, capsys):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", mnist_5k[0][:60])
    out_dir = tmp_path / "run"
    assert main(["train", "--data-dir", str(folder), *TINY, "--exclude-class", "1",
                 "--out", str(out_dir)]) == 2
    assert "exclude_class 1 needs labels" in only_error_line(capsys.readouterr().err)
    assert not out_dir.exists()


def test_eval_anomaly_class_absent_from_the_split_is_an_error(anomaly_run, capsys):
    assert main(["eval", anomaly_run, "--anomaly-class", "1", "--split", "val"]) == 2
    assert "class 1 does not occur in the val split" in only_error_line(capsys.readouterr().err)


def test_a_png_path_that_is_a_folder_fails_before_the_csv_is_written(anomaly_run, tmp_path, capsys):
    (tmp_path / "top.png").mkdir()
    assert main(["anomaly", anomaly_run, "-o", str(tmp_path / "s.csv"), "--png", str(tmp_path / "top.png")]) == 2
    assert "it is a folder" in only_error_line(capsys.readouterr().err)
    assert not (tmp_path / "s.csv").exists()

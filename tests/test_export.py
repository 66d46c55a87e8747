"""Codes and images as files (aelab.export), and the commands that write them: encode, sample -o .npy."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from aelab.errors import ConfigError
from aelab.export import write_codes, write_images
from aelab.runs import load_run
from cli_helpers import only_error_line, quiet_main

TINY = ["--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--no-progress"]
CODES = torch.tensor([[0.5, -1.25], [2.0, 1e-3], [3.0, 4.0]])


def test_npz_codes_hold_codes_index_and_labels(tmp_path):
    write_codes(tmp_path / "c.npz", CODES, torch.tensor([7, 8, 9]))
    with np.load(tmp_path / "c.npz") as f:
        np.testing.assert_array_equal(f["codes"], CODES.numpy())
        np.testing.assert_array_equal(f["index"], [0, 1, 2])
        np.testing.assert_array_equal(f["labels"], [7, 8, 9])
        assert f["codes"].dtype == np.float32


def test_npz_codes_without_labels_have_no_labels_array(tmp_path):
    write_codes(tmp_path / "c.npz", CODES, None)
    with np.load(tmp_path / "c.npz") as f:
        assert sorted(f.files) == ["codes", "index"]


def test_csv_codes_round_trip_float32_exactly(tmp_path):
    codes = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    write_codes(tmp_path / "c.csv", codes, None)
    rows = list(csv.reader((tmp_path / "c.csv").open()))
    assert rows[0] == ["index", "label", "z0", "z1", "z2"]
    assert [r[:2] for r in rows[1:]] == [[str(i), ""] for i in range(5)]
    back = np.array([[float(v) for v in r[2:]] for r in rows[1:]], dtype=np.float32)
    np.testing.assert_array_equal(back, codes.numpy())


def test_npy_images_are_float32_nchw(tmp_path):
    images = torch.rand(4, 1, 6, 6)
    write_images(tmp_path / "s.npy", images)
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), images.numpy())


@pytest.mark.parametrize("name, message", [("codes.txt", "must end in .npz, .npy, .csv"),
                                           ("missing/codes.npz", "does not exist")])
def test_bad_output_names_are_config_errors_and_write_nothing(tmp_path, name, message):
    with pytest.raises(ConfigError, match=message):
        write_codes(tmp_path / name, CODES, None)
    assert not list(tmp_path.rglob("codes*"))


def test_an_output_name_that_is_a_folder_is_refused(tmp_path):
    (tmp_path / "codes.npz").mkdir()
    with pytest.raises(ConfigError, match="it is a folder"):
        write_codes(tmp_path / "codes.npz", CODES, None)


# --- the commands ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    folder = tmp_path_factory.mktemp("export") / "vae"
    code, _, err = quiet_main(["train", "--data-dir", mnist_dir, *TINY, "--out", str(folder)])
    assert code == 0, err
    return str(folder)


def test_encode_writes_the_posterior_means_of_every_test_image(vae_run, tmp_path):
    out = tmp_path / "codes.npz"
    code, stdout, err = quiet_main(["encode", vae_run, "-o", str(out)])
    assert code == 0, err
    assert "4-number codes of the 200 images of the test split" in stdout
    _, model, _ = load_run(vae_run, "cpu")
    with np.load(out) as f:
        codes, labels = f["codes"], f["labels"]
    from aelab.data import load_splits
    cfg, _, _ = load_run(vae_run, "cpu")
    test = load_splits(cfg.data, cfg.train.seed).test
    with torch.no_grad():
        expected = model.embed(test.images.float() / 255).numpy()
    np.testing.assert_allclose(codes, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, test.labels.numpy())


def test_encode_other_data_encodes_every_image_in_file_order(vae_run, tmp_path, mnist_5k):
    images = mnist_5k[0][:50]              # one file: a sixth is its test split, put back in place
    np.save(tmp_path / "mine.npy", images)
    out = tmp_path / "codes.npz"
    code, stdout, err = quiet_main(["encode", vae_run, "--data-dir", str(tmp_path / "mine.npy"),
                                    "-o", str(out)])
    assert code == 0, err
    assert "codes of the 50 images of the data, in file order" in stdout
    _, model, _ = load_run(vae_run, "cpu")
    with torch.no_grad():
        expected = model.embed(torch.from_numpy(images).float().div(255)[:, None]).numpy()
    with np.load(out) as f:
        np.testing.assert_allclose(f["codes"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f["index"], np.arange(50))


def test_encode_split_all_of_the_runs_own_data_is_train_file_then_test_file(vae_run, tmp_path):
    code, stdout, err = quiet_main(["encode", vae_run, "--split", "all", "-o", str(tmp_path / "c.npy")])
    assert code == 0, err
    assert len(np.load(tmp_path / "c.npy")) == 1000      # mnist_dir: 800 training + 200 test


def test_encode_csv_of_the_validation_split(vae_run, tmp_path):
    out = tmp_path / "codes.csv"
    code, _, err = quiet_main(["encode", vae_run, "--split", "val", "-o", str(out)])
    assert code == 0, err
    rows = list(csv.reader(out.open()))
    assert rows[0][:3] == ["index", "label", "z0"] and len(rows[0]) == 6 and len(rows) == 81   # 80 val


def test_encode_with_a_bad_output_name_is_one_error_line(vae_run, tmp_path):
    code, _, err = quiet_main(["encode", vae_run, "-o", str(tmp_path / "codes.json")])
    assert code == 2 and "must end in .npz, .npy, .csv" in only_error_line(err)


def test_sample_to_npy_writes_the_images_the_png_shows(vae_run, tmp_path):
    code, _, err = quiet_main(["sample", vae_run, "-n", "5", "--seed", "3", "-o", str(tmp_path / "s.npy")])
    assert code == 0, err
    images = np.load(tmp_path / "s.npy")
    _, model, _ = load_run(vae_run, "cpu")
    expected = model.sample(5, generator=torch.Generator().manual_seed(3))
    assert images.shape == (5, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    np.testing.assert_allclose(images, expected.numpy(), rtol=1e-5, atol=1e-6)


def test_sample_to_a_text_file_is_refused(vae_run, tmp_path):
    code, _, err = quiet_main(["sample", vae_run, "-o", str(tmp_path / "s.txt")])
    assert code == 2 and "must end in .png, .npz, .npy" in only_error_line(err)
    assert not (tmp_path / "s.txt").exists()

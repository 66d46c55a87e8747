"""The command line, end to end on the small real MNIST folder, called in-process as main([...])."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

import aelab
from aelab.cli import main
from aelab.idx import write_idx
from cli_helpers import only_error_line, trained_run

TINY = ["--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--batch-size", "64"]
EPOCH_LINE = re.compile(r"^epoch \d+/2  train_loss \S+  val_loss \S+  \d+\.\d s$")


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("cli") / "vae", mnist_dir, *TINY)


@pytest.fixture(scope="module")
def ae_run(tmp_path_factory, mnist_dir) -> str:
    return trained_run(tmp_path_factory.mktemp("cli") / "ae", mnist_dir, *TINY, "--model", "ae")


@pytest.fixture
def images_32(tmp_path) -> str:
    """A folder of 12 blank 1x32x32 training images (no test file: some are held out)."""
    folder = tmp_path / "images-32"
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", np.zeros((12, 32, 32), dtype=np.uint8))
    return str(folder)


# ---------------------------------------------------------------- train


def test_train_prints_one_line_per_epoch_and_the_run_folder(tmp_path, mnist_dir, capsys):
    out_dir = tmp_path / "run"
    assert main(["train", "--data-dir", mnist_dir, *TINY, "--out", str(out_dir)]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    assert all(EPOCH_LINE.match(line) for line in epoch_lines), epoch_lines
    assert lines[-1] == f"run folder: {out_dir}"
    assert err == ""
    assert (out_dir / "model.safetensors").is_file() and (out_dir / "samples.png").is_file()
    tree = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert (tree["model"]["latent_dim"], tree["model"]["hidden_dims"]) == (4, [32])
    assert (tree["train"]["epochs"], tree["train"]["batch_size"]) == (2, 64)


def test_config_file_sets_values_and_flags_win_over_it(tmp_path, mnist_dir, capsys):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"data_dir": mnist_dir, "val_fraction": 0.25},
        "model": {"name": "vae", "latent_dim": 3, "hidden_dims": [16]},
        "train": {"epochs": 1, "batch_size": 100, "lr": 2.0e-3},
    }))
    out_dir = tmp_path / "run"
    assert main(["train", "--config", str(config), "--latent-dim", "5", "--lr", "3e-3",
                 "--out", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if line.startswith("epoch 1/1  ")]) == 1
    tree = yaml.safe_load((out_dir / "config.yaml").read_text())
    assert tree["model"]["latent_dim"] == 5 and tree["train"]["lr"] == 3e-3       # flags
    assert tree["model"]["hidden_dims"] == [16] and tree["train"]["batch_size"] == 100   # file
    assert tree["data"]["val_fraction"] == 0.25
    info = json.loads((out_dir / "run.json").read_text())
    assert (info["data"]["n_train"], info["data"]["n_val"]) == (600, 200)


def test_train_from_a_run_config_yaml_reproduces_its_weights(tmp_path, vae_run, capsys):
    from safetensors.torch import load_file
    out_dir = tmp_path / "rerun"
    assert main(["train", "--config", f"{vae_run}/config.yaml", "--out", str(out_dir)]) == 0
    first, again = load_file(f"{vae_run}/model.safetensors"), load_file(str(out_dir / "model.safetensors"))
    assert first.keys() == again.keys() and all((first[k] == again[k]).all() for k in first)


# ---------------------------------------------------------------- eval, sample, reconstruct


def test_eval_json_on_the_test_split(vae_run, capsys):
    assert main(["eval", vae_run, "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(out.splitlines()) == 1
    result = json.loads(out)
    assert (result["model"], result["split"], result["n_images"]) == ("vae", "test", 200)
    assert {"recon_mse", "recon_bce", "kl", "elbo"} <= set(result)
    assert result["elbo"] < 0 and result["kl"] >= 0 and 0 < result["recon_mse"] < 1
    assert result["recon_bce"] > 0
    assert set(result["units"]) == {"recon_mse", "recon_bce", "kl", "elbo"}


def test_eval_is_repeatable_and_matches_the_run_record(vae_run, capsys):
    main(["eval", vae_run, "--json"])
    main(["eval", vae_run, "--json"])
    first, second = map(json.loads, capsys.readouterr().out.splitlines())
    assert first == second
    recorded = json.loads(open(f"{vae_run}/run.json").read())["test_metrics"]
    assert {k: first[k] for k in recorded} == pytest.approx(recorded)


def test_eval_on_the_validation_split(vae_run, capsys):
    assert main(["eval", vae_run, "--split", "val", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["split"], result["n_images"]) == ("val", 80)


def test_eval_text_output_names_each_metric(vae_run, capsys):
    assert main(["eval", vae_run, "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "(80 images)" in out.splitlines()[0]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["recon_mse", "recon_bce", "kl", "elbo"]


def test_eval_of_an_ae_run_has_no_elbo(ae_run, capsys):
    assert main(["eval", ae_run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "ae" and "recon_mse" in result and "elbo" not in result


def test_sample_writes_a_png_of_the_right_size(vae_run, tmp_path, capsys):
    path = tmp_path / "f.png"
    assert main(["sample", vae_run, "-n", "16", "-o", str(path)]) == 0
    assert capsys.readouterr().out.startswith("wrote 16 samples")
    with Image.open(path) as im:   # 2 rows of 8 cells of 28 + 2 padding pixels, at scale 2
        assert (im.format, im.size) == ("PNG", ((8 * 30 + 2) * 2, (2 * 30 + 2) * 2))


def test_reconstruct_writes_originals_and_reconstructions(vae_run, tmp_path, capsys):
    path = tmp_path / "r.png"
    assert main(["reconstruct", vae_run, "-n", "8", "-o", str(path)]) == 0
    assert "8 originals" in capsys.readouterr().out
    with Image.open(path) as im:   # one row of originals, one of reconstructions
        assert (im.format, im.size) == ("PNG", ((8 * 30 + 2) * 2, (2 * 30 + 2) * 2))


def test_sample_from_an_ae_is_an_error(ae_run, tmp_path, capsys):
    assert main(["sample", ae_run, "-o", str(tmp_path / "s.png")]) == 2
    out, err = capsys.readouterr()
    assert "no prior" in only_error_line(err)
    assert not (tmp_path / "s.png").exists()


# ---------------------------------------------------------------- listings


def test_datasets_lists_the_registered_datasets(capsys):
    assert main(["datasets"]) == 0
    names = {line.split()[0] for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")}
    assert names == {"mnist", "fashion-mnist", "kmnist", "mnist-5k", "--data-dir"}


def test_presets_lists_the_presets_and_marks_the_default(capsys):
    assert main(["presets"]) == 0
    heads = [line for line in capsys.readouterr().out.splitlines() if not line.startswith(" ")]
    assert {"seed-ae", "seed-vae", "vae-mnist  (default)"} <= set(heads)
    assert heads == sorted(heads) and sum(h.endswith("  (default)") for h in heads) == 1


def test_models_lists_the_families(capsys):
    assert main(["models"]) == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == aelab.list_models()
    assert {"ae", "vae"} <= set(aelab.list_models())


# ---------------------------------------------------------------- bad input


def _corrupt_copy(mnist_dir, tmp_path) -> str:
    folder = shutil.copytree(mnist_dir, tmp_path / "corrupt")
    images = folder / "train-images-idx3-ubyte.gz"
    images.write_bytes(images.read_bytes()[:200])
    return str(folder)


TRAIN_ERRORS = {   # case -> (flags, words the error line must contain)
    "unknown model": (["--model", "vea"], "'vae'"),
    "unknown preset": (["--preset", "vae-mnsit"], "'vae-mnist'"),
    "unknown dataset": (["--dataset", "mnsit"], "unknown dataset 'mnsit'"),
    "zero epochs": (["--epochs", "0"], "epochs"),
    "zero latent size": (["--latent-dim", "0"], "latent"),
    "epochs not a number": (["--epochs", "two"], "'two'"),
    "unknown --set key": (["--set", "train.epoch=3"], "'train.epochs'"),
    "--set without =": (["--set", "train.epochs"], "KEY=VALUE"),
    "negative seed": (["--seed", "-1"], "seed"),
    "unknown device": (["--device", "tpu"], "tpu"),
    "unknown matmul precision": (["--matmul-precision", "low"], "unknown matmul_precision 'low'"),
    "missing data dir": (["--data-dir", "{tmp}/nowhere"], "not found"),
    "corrupt idx file": (["--data-dir", "{corrupt}"], "train-images-idx3-ubyte.gz"),
}


@pytest.mark.parametrize("case", list(TRAIN_ERRORS))
def test_bad_train_input_is_one_error_line_and_no_run_folder(case, tmp_path, mnist_dir, monkeypatch,
                                                             capsys):
    flags, words = TRAIN_ERRORS[case]
    values = {"tmp": tmp_path, "corrupt": _corrupt_copy(mnist_dir, tmp_path) if case.startswith("corrupt")
              else ""}
    flags = [f.format(**values) for f in flags]
    monkeypatch.chdir(tmp_path)
    data = [] if "--dataset" in flags else ["--data-dir", mnist_dir]   # not both: an error of its own
    code = main(["train", *data, *TINY, *flags, "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    assert code == 2
    assert words in only_error_line(err)
    assert "Traceback" not in out + err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 2
    assert "not an aelab run folder" in only_error_line(capsys.readouterr().err)


def test_eval_of_a_missing_folder(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nowhere"), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "not found" in only_error_line(err)


def test_eval_on_images_of_another_size_names_both_sizes(vae_run, images_32, capsys):
    assert main(["eval", vae_run, "--data-dir", images_32]) == 2
    line = only_error_line(capsys.readouterr().err)
    assert "1x32x32" in line and "1x28x28" in line


def test_eval_on_another_data_dir_of_the_right_size(vae_run, mnist_dir, tmp_path, capsys):
    folder = tmp_path / "only-train"
    folder.mkdir()
    shutil.copy(f"{mnist_dir}/train-images-idx3-ubyte.gz", folder)
    assert main(["eval", vae_run, "--data-dir", str(folder), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["dataset"], result["n_images"]) == (str(folder), 800 // 6)


@pytest.mark.parametrize("output", ["{tmp}/missing/s.png", "{tmp}/s.jpg"])
def test_sample_to_a_bad_output_path(vae_run, tmp_path, output, capsys):
    assert main(["sample", vae_run, "-o", output.format(tmp=tmp_path)]) == 2
    only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_argparse_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "somewhere", "-n", "0"])
    assert exit_.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["eval"], ["sample"], ["reconstruct"],
                                     ["anomaly"], ["probe"], ["latent-map", "-o", "m.png"]])
@pytest.mark.parametrize("seed", ["-1", str(2**32), "99999999999999999999"])
def test_every_seed_flag_takes_the_range_of_train_seed(command, seed, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command[0], "somewhere", *command[1:], "--seed", seed])
    assert exit_.value.code == 2
    assert f"must be in [0, 2**32), got {seed}" in capsys.readouterr().err


@pytest.mark.parametrize("device", ["tpu", "CPU", "cpu:0"])
def test_an_unknown_device_is_one_error_line_in_every_command(vae_run, device, tmp_path, capsys):
    for command in (["eval"], ["sample", "-o", str(tmp_path / "s.png")], ["encode", "-o", str(tmp_path / "c.npy")]):
        assert main([command[0], vae_run, *command[1:], "--device", device]) == 2
        assert f"unknown device {device!r}" in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_the_manifold_grid_is_capped(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["latent-map", "somewhere", "--grid", "1000"])
    assert exit_.value.code == 2 and "must be at most 100, got 1000" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["train"], ["eval", "somewhere"], ["encode", "somewhere"]])
def test_dataset_and_data_dir_together_are_refused(command, mnist_dir, tmp_path, capsys):
    argv = [*command, "--dataset", "fashion-mnist", "--data-dir", mnist_dir]
    assert main(argv + (["--out", str(tmp_path / "run")] if command == ["train"] else [])) == 2
    assert "give --dataset or --data-dir, not both" in only_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- python -m aelab


def test_python_m_aelab_help_and_version():
    help_ = subprocess.run([sys.executable, "-m", "aelab", "--help"], capture_output=True, text=True)
    assert help_.returncode == 0
    assert help_.stdout.startswith("usage: aelab")
    for command in ("train", "eval", "sample", "reconstruct", "encode", "probe", "anomaly", "datasets",
                    "presets", "models"):
        assert command in help_.stdout
    version = subprocess.run([sys.executable, "-m", "aelab", "--version"], capture_output=True, text=True)
    assert (version.returncode, version.stdout.strip()) == (0, f"aelab {aelab.__version__}")


def test_a_reader_that_leaves_early_gets_no_traceback():
    """`aelab presets | head -1`: the pipe closes under aelab; it stops quietly, status 141."""
    import os
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run([sys.executable, "-m", "aelab", "presets"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True)
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""

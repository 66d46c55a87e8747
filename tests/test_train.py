"""The training loop and its run folder: files written, determinism, learning, reruns, failures."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import aelab.data
from aelab.config import resolve_config
from aelab.data import Batches, load_splits
from aelab.datasets import load_idx_folder
from aelab.errors import ConfigError, DataError, RunError
from aelab.evaluate import mean_loss
from aelab.models import build_model
from aelab.runs import create_run_dir
from aelab.train import make_optimizer, resolve_device, train, train_one_epoch

RUN_FILES = {"config.yaml", "run.json", "checkpoint.safetensors", "metrics.jsonl", "model.safetensors",
             "reconstructions.png",
             "loss.png"}


def tiny_config(data_dir, **overrides):
    """The default preset shrunk to a 784-32-4 model trained for 2 epochs on ``data_dir``."""
    return resolve_config(overrides={"data.data_dir": data_dir, "train.epochs": 2,
                                     "model.hidden_dims": "32", "model.latent_dim": 4, **overrides})


def weights(run_dir) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def metrics_lines(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, mnist_dir):
    return train(tiny_config(mnist_dir), out=str(tmp_path_factory.mktemp("train") / "vae"))


# ---------------------------------------------------------------- the run folder


def test_vae_run_folder_holds_every_file(vae_run):
    assert {p.name for p in vae_run.run_dir.iterdir()} == RUN_FILES | {"samples.png"}


def test_ae_run_folder_has_no_samples(tmp_path, mnist_dir):
    result = train(tiny_config(mnist_dir, **{"model.name": "ae"}), out=str(tmp_path / "ae"))
    assert {p.name for p in result.run_dir.iterdir()} == RUN_FILES
    assert set(metrics_lines(result.run_dir)[0]) == {"epoch", "train_loss", "val_loss", "val_rec",
                                                     "train_rec", "train_seconds"}


def test_metrics_has_one_record_per_epoch_with_the_loss_parts(vae_run):
    records = metrics_lines(vae_run.run_dir)
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == {"epoch", "train_loss", "val_loss", "train_rec", "train_kl", "val_rec",
                          "val_kl", "train_seconds"}
        assert r["train_loss"] == pytest.approx(r["train_rec"] + r["train_kl"], rel=1e-5)
        assert r["val_loss"] == pytest.approx(r["val_rec"] + r["val_kl"], rel=1e-5)
        assert r["train_seconds"] >= 0
    assert records == vae_run.history


def test_run_json_records_the_data_used_and_test_metrics(vae_run, mnist_dir):
    info = json.loads((vae_run.run_dir / "run.json").read_text())
    assert info["format_version"] == 1
    assert info["device"] == "cpu"
    assert info["data"] == {"name": "idx", "source": mnist_dir, "image_shape": [1, 28, 28],
                            "n_train": 720, "n_val": 80, "n_test": 200}
    assert info["n_parameters"] == sum(p.numel() for p in vae_run.model.parameters())
    assert info["test_metrics"] == vae_run.test_metrics
    assert set(info["test_metrics"]) == {"recon_mse", "recon_bce", "kl", "elbo"}


def test_config_yaml_holds_the_resolved_config(vae_run, mnist_dir):
    tree = yaml.safe_load((vae_run.run_dir / "config.yaml").read_text())
    assert tree["data"]["data_dir"] == mnist_dir
    assert tree["model"] == {"name": "vae", "input_shape": [1, 28, 28], "latent_dim": 4,
                             "hidden_dims": [32], "arch": "mlp", "conv_channels": [32, 64],
                             "n_classes": 10, "likelihood": "bernoulli", "beta": 1.0,
                             "obs_sigma": 0.0, "kl_warmup": 0}
    assert tree["train"]["epochs"] == 2
    assert tree["preset"] == "vae-mnist"


def test_pictures_are_pngs_of_the_expected_size(vae_run):
    # 32 test images in 4 pairs of rows of 8 cells of 28 + 2 padding pixels, drawn at scale 2
    with Image.open(vae_run.run_dir / "reconstructions.png") as im:
        assert (im.format, im.size) == ("PNG", (484, 484))
    with Image.open(vae_run.run_dir / "samples.png") as im:   # 64 samples: 8 x 8 cells
        assert (im.format, im.size) == ("PNG", (484, 484))
    with Image.open(vae_run.run_dir / "loss.png") as im:
        assert im.format == "PNG"


# ---------------------------------------------------------------- determinism and learning


def test_same_seed_gives_bitwise_equal_weights_and_metrics(tmp_path, mnist_dir, vae_run):
    again = train(tiny_config(mnist_dir), out=str(tmp_path / "again"))
    first, second = weights(vae_run.run_dir), weights(again.run_dir)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)

    def without_time(records):
        return [{k: v for k, v in r.items() if k != "train_seconds"} for r in records]
    assert without_time(metrics_lines(again.run_dir)) == without_time(metrics_lines(vae_run.run_dir))
    assert again.test_metrics == vae_run.test_metrics


def test_another_seed_gives_other_weights(tmp_path, mnist_dir, vae_run):
    other = train(tiny_config(mnist_dir, **{"train.seed": 1}), out=str(tmp_path / "other"))
    first, second = weights(vae_run.run_dir), weights(other.run_dir)
    assert not any(torch.equal(first[k], second[k]) for k in first if k != "log_sigma")


def test_loss_decreases_on_real_data(tmp_path, mnist_dir):
    result = train(tiny_config(mnist_dir, **{"train.epochs": 3, "train.batch_size": 32}),
                   out=str(tmp_path / "run"))
    train_losses = [r["train_loss"] for r in result.history]
    val_losses = [r["val_loss"] for r in result.history]
    assert train_losses == sorted(train_losses, reverse=True)
    assert val_losses[-1] < 0.9 * val_losses[0]


def test_rerun_from_config_yaml_reproduces_the_weights(tmp_path, vae_run):
    cfg = resolve_config(config_file=str(vae_run.run_dir / "config.yaml"))
    rerun = train(cfg, out=str(tmp_path / "rerun"))
    first, second = weights(vae_run.run_dir), weights(rerun.run_dir)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert (rerun.run_dir / "config.yaml").read_text() == (vae_run.run_dir / "config.yaml").read_text()


def test_mnist_fallback_records_mnist_5k(tmp_path, monkeypatch, mnist_dir):
    asked = []

    def offline(name):   # mnist cannot be had; mnist-5k stands in with the small real sample
        asked.append(name)
        if name == "mnist":
            raise DataError("could not download mnist (offline)")
        return load_idx_folder(mnist_dir, name=name)
    monkeypatch.setattr(aelab.data, "load_raw", offline)
    result = train(tiny_config(None, **{"train.epochs": 1}), out=str(tmp_path / "run"))
    assert asked == ["mnist", "mnist-5k"]
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["data"]["name"] == "mnist-5k"
    assert json.loads((result.run_dir / "run.json").read_text())["data"]["name"] == "mnist-5k"


def test_mnist_without_fallback_fails_when_unavailable(tmp_path, monkeypatch):
    def offline(name):
        raise DataError(f"could not download {name} (offline)")
    monkeypatch.setattr(aelab.data, "load_raw", offline)
    with pytest.raises(DataError, match="offline"):
        train(tiny_config(None, **{"data.fallback": False}), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- steps and helpers


def test_train_one_epoch_changes_every_weight_and_mean_loss_changes_none(mnist_dir):
    torch.manual_seed(0)
    cfg = tiny_config(mnist_dir)
    splits = load_splits(cfg.data, seed=0)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    train_one_epoch(model, make_optimizer(model, 1e-3), Batches(splits.train, 256, shuffle=True))
    after = {k: v.clone() for k, v in model.state_dict().items()}
    assert not any(torch.equal(before[k], after[k]) for k in before if k != "log_sigma")
    mean_loss(model, Batches(splits.val, 1000))
    assert all(torch.equal(after[k], v) for k, v in model.state_dict().items())


def test_create_run_dir_refuses_a_non_empty_folder(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text("{}")
    with pytest.raises(RunError, match="not empty"):
        create_run_dir(str(tmp_path / "run"), "vae")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["run.json"]


def test_create_run_dir_refuses_a_file(tmp_path):
    (tmp_path / "run").write_text("")
    with pytest.raises(RunError, match="is a file, not a folder"):
        create_run_dir(str(tmp_path / "run"), "vae")


def test_create_run_dir_accepts_an_empty_folder_and_makes_parents(tmp_path):
    (tmp_path / "empty").mkdir()
    assert create_run_dir(str(tmp_path / "empty"), "vae") == tmp_path / "empty"
    assert create_run_dir(str(tmp_path / "a" / "b"), "vae").is_dir()


def test_create_run_dir_default_name_is_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = create_run_dir(None, "vae-mnist")
    assert path.parent.name == "runs" and path.name.startswith("vae-mnist-") and path.is_dir()


def test_train_refuses_a_used_out_folder_before_touching_it(tmp_path, mnist_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")
    with pytest.raises(RunError):
        train(tiny_config(mnist_dir), out=str(tmp_path / "run"))
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["notes.txt"]


@pytest.mark.parametrize("case", ["missing", "corrupt"])
def test_failed_data_load_leaves_no_run_folder(tmp_path, mnist_dir, case):
    data = tmp_path / "data"
    if case == "corrupt":
        data.mkdir()
        (data / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 10)
    with pytest.raises(DataError):
        train(tiny_config(str(data)), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            resolve_device("cuda")


# ---------------------------------------------------------------- precision and compile


def test_bf16_trains_the_forward_in_bf16_and_keeps_fp32_weights(tmp_path, mnist_dir, vae_run,
                                                                 monkeypatch):
    seen = []
    real_linear = torch.nn.functional.linear

    def spy(x, weight, bias=None):
        out = real_linear(x, weight, bias)
        seen.append(out.dtype)
        return out
    monkeypatch.setattr(torch.nn.functional, "linear", spy)
    run = train(tiny_config(mnist_dir, **{"train.precision": "bf16", "train.epochs": 1}),
                out=str(tmp_path / "bf16"))
    assert torch.bfloat16 in seen and torch.float32 in seen   # training in bf16, evaluation fp32
    fp32 = weights(vae_run.run_dir)
    bf16 = weights(run.run_dir)
    assert all(v.dtype == torch.float32 for v in bf16.values())
    assert not torch.equal(bf16["encoder.head.0.weight"], fp32["encoder.head.0.weight"])
    assert run.test_metrics["elbo"] == pytest.approx(vae_run.test_metrics["elbo"], rel=0.1)


def test_unknown_precision_is_a_config_error(mnist_dir):
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        tiny_config(mnist_dir, **{"train.precision": "fp16"})


def test_matmul_precision_holds_while_training_only(tmp_path, mnist_dir, monkeypatch):
    from aelab.models.vae import VAE
    seen = {"train": set(), "eval": set()}

    def spy(method, when):
        real = getattr(VAE, method)

        def spied(self, x, y=None):
            seen[when or ("train" if self.training else "eval")].add(torch.get_float32_matmul_precision())
            return real(self, x, y)
        monkeypatch.setattr(VAE, method, spied)
    spy("forward", None)                       # training with autograd, and validation
    spy("loss_and_gradients", "train")         # training with hand-written gradients
    spy("metrics", "eval")
    torch.set_float32_matmul_precision("high")            # the caller's own setting
    try:
        run = train(tiny_config(mnist_dir, **{"train.matmul_precision": "medium", "train.epochs": 1}),
                    out=str(tmp_path / "medium"))
        assert torch.get_float32_matmul_precision() == "high"     # given back
    finally:
        torch.set_float32_matmul_precision("highest")
    assert seen == {"train": {"medium"}, "eval": {"high"}}
    assert math.isfinite(run.test_metrics["elbo"])
    assert "matmul_precision: medium" in (run.run_dir / "config.yaml").read_text()


def test_unknown_matmul_precision_is_a_config_error(mnist_dir):
    with pytest.raises(ConfigError, match="unknown matmul_precision 'low'; choose from highest, high, medium"):
        tiny_config(mnist_dir, **{"train.matmul_precision": "low"})


def test_compile_trains_through_torch_compile(tmp_path, mnist_dir, vae_run, monkeypatch):
    calls = []
    real_compile = torch.compile

    def eager_compile(model, **kwargs):      # dynamo traces the model; no C++ build in the tests
        calls.append(model)
        return real_compile(model, backend="eager")
    monkeypatch.setattr(torch, "compile", eager_compile)
    run = train(tiny_config(mnist_dir, **{"train.compile": True}), out=str(tmp_path / "compiled"))
    assert len(calls) == 1
    compiled, plain = weights(run.run_dir), weights(vae_run.run_dir)
    assert all(torch.allclose(compiled[k], plain[k], atol=1e-5) for k in plain)


def test_a_cvae_refuses_test_images_without_labels_before_training(tmp_path, mnist_dir):
    unlabelled_test = tmp_path / "data"
    unlabelled_test.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (unlabelled_test / name).write_bytes((Path(mnist_dir) / name).read_bytes())
    with pytest.raises(DataError, match="labels of its test images"):
        train(tiny_config(str(unlabelled_test), **{"model.name": "cvae"}), out=str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_the_run_records_its_data_folder_as_an_absolute_path(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.chdir(Path(mnist_dir).parent)
    run = train(tiny_config(Path(mnist_dir).name, **{"train.epochs": 1}), out=str(tmp_path / "run")).run_dir
    recorded = yaml.safe_load((run / "config.yaml").read_text())["data"]["data_dir"]
    assert Path(recorded).is_absolute() and Path(recorded).samefile(mnist_dir)

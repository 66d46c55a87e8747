"""The ae family's regularisers: sparse (l1, kl), denoising, contractive; weight decay; presets; the CLI."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import aelab.models.ae as ae_module
import aelab.train
from aelab.cli import main
from aelab.config import list_presets, resolve_config
from aelab.corruption import corrupt
from aelab.data import load_splits
from aelab.errors import ConfigError
from aelab.losses import mse_per_pixel
from aelab.models import build_model, model_config_from_dict
from aelab.models.ae import parse_sparsity
from aelab.penalties import jacobian_frobenius, kl_sparsity, l1_code
from aelab.runs import load_run
from aelab.viz import save_rows

CONV = {"arch": "conv", "conv_channels": (4, 8)}


def tiny_ae(seed: int = 0, **options):
    torch.manual_seed(seed)
    return build_model(model_config_from_dict({"name": "ae", "input_shape": (1, 8, 8), "latent_dim": 3,
                                               "hidden_dims": (16,), **options}))


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed))


def plain_rec(model, x_in, x, sigmoid_code=False) -> torch.Tensor:
    """The batch-mean per-pixel MSE of decoding the encoder's code of x_in, against x."""
    code = model.encoder(x_in)
    z = torch.sigmoid(code) if sigmoid_code else code
    return mse_per_pixel(torch.sigmoid(model.decoder(z)), x).mean()


def jacobian_norm_by_autograd(encode, x, create_graph=False) -> torch.Tensor:
    """||dz_b/dx_b||_F^2 per image, one torch.autograd.grad call per code unit."""
    x = x.clone().requires_grad_(True)
    z = encode(x)
    total = torch.zeros(len(x))
    for j in range(z.shape[1]):      # images are independent: d sum_b z_bj / dx_b = dz_bj / dx_b
        (row,) = torch.autograd.grad(z[:, j].sum(), x, create_graph=create_graph,
                                     retain_graph=True)
        total = total + row.square().flatten(1).sum(-1)
    return total


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("spec, expected", [("l1:1e-3", ("l1", 0.0, 1e-3)),
                                            ("kl:0.05:3.0", ("kl", 0.05, 3.0)),
                                            ("kl:0.1:1", ("kl", 0.1, 1.0))])
def test_parse_sparsity(spec, expected):
    assert parse_sparsity(spec) == expected


@pytest.mark.parametrize("options, match", [
    *(({"sparsity": spec}, repr(spec)) for spec in ("l1", "kl:2:1", "kl:0.05", "l1:-1", "l1:0", "l2:1",
                                                    "l1:x", "kl:0:1", "l1:1:2")),
    *(({"noise": spec}, repr(spec)) for spec in ("gaussian:-1", "mask:1.5", "blur:1")),
    ({"contractive": -1.0}, "-1"), ({"contractive": float("nan")}, "nan"),
])
def test_bad_options_are_one_line_config_errors(options, match):
    with pytest.raises(ConfigError, match=re.escape(match)) as info:
        tiny_ae(**options)
    assert "\n" not in str(info.value)


def test_options_from_flags_are_cast_and_checked():
    cfg = resolve_config("seed-ae", overrides={"model.sparsity": "kl:0.05:3", "model.noise": "mask:0.3",
                                               "model.contractive": "0.1"})
    assert (cfg.model.sparsity, cfg.model.noise, cfg.model.contractive) == ("kl:0.05:3", "mask:0.3", 0.1)
    with pytest.raises(ConfigError, match="'mask:1.5'"):
        resolve_config("seed-ae", overrides={"model.noise": "mask:1.5"})


def test_the_options_add_no_weights():
    plain, regularised = tiny_ae(), tiny_ae(sparsity="kl:0.05:3", noise="mask:0.3", contractive=0.1)
    assert plain.state_dict().keys() == regularised.state_dict().keys()


# ---------------------------------------------------------------- no options: the plain forward


def test_without_options_no_regulariser_code_runs(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a regulariser ran with every option off")
    for name in ("corrupt", "l1_code", "kl_sparsity", "jacobian_frobenius"):
        monkeypatch.setattr(ae_module, name, boom)
    model, x = tiny_ae(), images()
    model.train()
    out = model(x)
    assert torch.equal(out.loss, plain_rec(model, x, x))
    assert list(out.terms) == ["rec"]
    assert set(model.eval().metrics(x)) == {"recon_mse", "recon_bce"}


# ---------------------------------------------------------------- sparse


def test_l1_penalty_is_weight_times_sum_abs_code_per_image():
    model, x = tiny_ae(sparsity="l1:0.01"), images()
    out = model(x)
    z = model.encoder(x)                                  # the code stays linear with l1
    assert torch.equal(out.z, z)
    penalty = sum(abs(v) for v in z.flatten().tolist()) / len(x)
    assert out.terms["sparsity"].item() == pytest.approx(penalty, rel=1e-6)
    rec = plain_rec(model, x, x)
    torch.testing.assert_close(out.terms["rec"], rec)
    torch.testing.assert_close(out.loss, rec + 0.01 * torch.tensor(penalty))
    torch.testing.assert_close(l1_code(z), z.abs().sum(-1))


def test_kl_sparsity_uses_a_sigmoid_code_and_ngs_penalty():
    rho, weight = 0.05, 3.0
    model, x = tiny_ae(sparsity=f"kl:{rho}:{weight}"), images()
    out = model(x)
    code = model.encoder(x)
    torch.testing.assert_close(out.z, torch.sigmoid(code))                   # the decoder gets sigmoid(code)
    torch.testing.assert_close(out.logits, model.decoder(torch.sigmoid(code)))
    torch.testing.assert_close(model.embed(x), torch.sigmoid(code))
    rho_hat = torch.sigmoid(code).double().mean(0)                           # (latent_dim,)
    kl = (rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))).sum()
    torch.testing.assert_close(out.terms["sparsity"], kl.float())
    rec = plain_rec(model, x, x, sigmoid_code=True)
    torch.testing.assert_close(out.loss, rec + weight * kl.float())


def test_kl_sparsity_is_zero_at_the_target_and_finite_when_saturated():
    rho = 0.2
    logits = torch.full((5, 4), float(np.log(rho / (1 - rho))))              # sigmoid = rho exactly
    assert abs(kl_sparsity(logits, rho).item()) < 1e-6
    saturated = torch.tensor([[200.0, -200.0], [150.0, -300.0]]).requires_grad_()
    value = kl_sparsity(saturated, rho)
    value.backward()
    assert torch.isfinite(value) and value > 0 and torch.isfinite(saturated.grad).all()


@pytest.mark.parametrize("spec", ["l1:0.01", "kl:0.05:3"])
def test_metrics_report_the_mean_code_activation_per_image(spec):
    model, x = tiny_ae(sparsity=spec).eval(), images()
    metrics = model.metrics(x)
    code = model.encoder(x).detach()
    expected = torch.sigmoid(code).mean(-1) if spec.startswith("kl") else code.abs().mean(-1)
    torch.testing.assert_close(metrics["code_mean_activation"], expected)
    assert metrics["code_mean_activation"].shape == (len(x),)


# ---------------------------------------------------------------- contractive


@pytest.mark.parametrize("arch", [{}, CONV], ids=["mlp", "conv"])
def test_contractive_penalty_is_the_jacobian_frobenius_norm_by_plain_autograd(arch):
    model, x = tiny_ae(contractive=0.5, **arch), images()
    exact = jacobian_norm_by_autograd(model.encode, x)
    torch.testing.assert_close(jacobian_frobenius(model.encode, x), exact)
    out = model(x)
    torch.testing.assert_close(out.terms["contractive"], exact.mean())
    torch.testing.assert_close(out.loss, plain_rec(model, x, x) + 0.5 * exact.mean())


@pytest.mark.parametrize("arch", [{}, CONV], ids=["mlp", "conv"])
def test_contractive_penalty_gradients_match_double_backward(arch):
    model, x = tiny_ae(contractive=0.5, **arch), images()
    params = list(model.encoder.parameters())
    ours = torch.autograd.grad(jacobian_frobenius(model.encode, x).sum(), params,
                               allow_unused=True, materialize_grads=True)
    ref = torch.autograd.grad(jacobian_norm_by_autograd(model.encode, x, create_graph=True).sum(), params,
                              allow_unused=True, materialize_grads=True)
    assert any(g.abs().sum() > 0 for g in ours)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)


def test_contractive_penalty_with_a_sigmoid_code_is_of_the_code_the_decoder_sees():
    model, x = tiny_ae(contractive=1.0, sparsity="kl:0.05:3"), images()
    exact = jacobian_norm_by_autograd(lambda v: torch.sigmoid(model.encoder(v)), x)
    torch.testing.assert_close(model(x).terms["contractive"], exact.mean())


def test_contractive_penalty_is_computed_under_no_grad_too():
    model, x = tiny_ae(contractive=0.5), images()
    with torch.no_grad():
        value = model(x).terms["contractive"]
    torch.testing.assert_close(value, jacobian_norm_by_autograd(model.encode, x).mean())


# ---------------------------------------------------------------- denoising


class EncoderInputs:
    """Records what the encoder is called with."""

    def __init__(self, model):
        self.seen: list[torch.Tensor] = []
        model.encoder.register_forward_pre_hook(self.record)

    def record(self, module, args):
        self.seen.append(args[0].detach().clone())    # calls inside the contractive vmap come too


@pytest.mark.parametrize("spec", ["gaussian:0.3", "mask:0.3", "saltpepper:0.2"])
def test_training_forward_encodes_a_corrupted_input_and_scores_against_the_clean_one(spec):
    model, x = tiny_ae(noise=spec).train(), images()
    hook = EncoderInputs(model)
    torch.manual_seed(11)
    out = model(x)
    torch.manual_seed(11)
    expected_input = corrupt(x, spec)
    assert len(hook.seen) == 1
    assert torch.equal(hook.seen[0], expected_input) and not torch.equal(hook.seen[0], x)
    torch.testing.assert_close(out.loss, plain_rec(model, expected_input, x))       # target: clean x
    assert not torch.allclose(out.loss, plain_rec(model, x, x))


@pytest.mark.parametrize("options", [{"noise": "mask:0.3"},
                                     {"noise": "gaussian:0.5", "sparsity": "l1:0.01", "contractive": 0.1}])
def test_evaluation_never_corrupts(options):
    model, x = tiny_ae(**options).eval(), images()
    plain = tiny_ae().eval()                     # same seed: the same weights, no options
    plain.load_state_dict(model.state_dict())
    hook = EncoderInputs(model)
    state = torch.get_rng_state()
    out = model(x)
    metrics, plain_metrics = model.metrics(x), plain.metrics(x)
    with torch.no_grad():
        recon = model.reconstruct(x)
    assert torch.equal(torch.get_rng_state(), state)          # no noise was drawn
    assert torch.equal(hook.seen[0], x)                         # the forward's own encoding
    assert torch.equal(out.terms["rec"], plain(x).loss)
    for key in ("recon_mse", "recon_bce"):
        assert torch.equal(metrics[key], plain_metrics[key])
    assert torch.equal(recon, plain.reconstruct(x))


def test_the_same_model_corrupts_again_after_returning_to_training():
    model, x = tiny_ae(noise="mask:0.5"), images()
    hook = EncoderInputs(model)
    model.eval()
    model(x)
    model.train()
    model(x)
    assert torch.equal(hook.seen[0], x) and not torch.equal(hook.seen[1], x)


# ---------------------------------------------------------------- weight decay


def test_weight_decay_reaches_the_adam_optimizer():
    opt = aelab.train.make_optimizer(tiny_ae(), lr=1e-3, weight_decay=0.01)
    assert isinstance(opt, torch.optim.Adam)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01]
    assert aelab.train.make_optimizer(tiny_ae(), lr=1e-3).param_groups[0]["weight_decay"] == 0


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset, option", [("sparse-ae", "sparsity"), ("denoising-ae", "noise"),
                                            ("contractive-ae", "contractive")])
def test_regularised_presets(preset, option):
    tree = list_presets()[preset]
    assert tree["description"]
    cfg = resolve_config(preset)
    assert cfg.data.name == "mnist" and cfg.model.name == "ae" and getattr(cfg.model, option)
    assert cfg.train.epochs == 10 and cfg.train.lr == 1e-3 and cfg.train.batch_size in (64, 128)
    build_model(cfg.model)


def test_denoising_preset_on_fashion_mnist_resolves():
    cfg = resolve_config("denoising-ae", overrides={"data.name": "fashion-mnist"})
    assert cfg.data.name == "fashion-mnist" and cfg.model.noise


# ---------------------------------------------------------------- pictures and the command line


def png_cells(path, size: int, pad: int = 2, scale: int = 2) -> np.ndarray:
    """A grid PNG as (rows, cols, size, size) uint8 cells."""
    with Image.open(path) as im:
        array = np.asarray(im)
    step = (size + pad) * scale
    rows, cols = (array.shape[0] - pad * scale) // step, (array.shape[1] - pad * scale) // step
    return np.stack([np.stack([array[pad * scale + r * step:pad * scale + r * step + size * scale:scale,
                                     pad * scale + c * step:pad * scale + c * step + size * scale:scale]
                               for c in range(cols)]) for r in range(rows)])


def as_bytes(batch: torch.Tensor) -> np.ndarray:
    return (batch[:, 0] * 255).round().to(torch.uint8).numpy()


def test_save_rows_interleaves_the_batches_row_by_row(tmp_path):
    a, b, c = (torch.full((5, 1, 4, 4), v) for v in (0.0, 0.5, 1.0))
    save_rows([a, b, c], tmp_path / "rows.png", ncol=3)
    cells = png_cells(tmp_path / "rows.png", 4)
    assert cells.shape[:2] == (6, 3)
    assert [int(cells[r, 0].mean()) for r in range(6)] == [0, 128, 255, 0, 128, 255]
    assert (cells[3:, 2] == 255).all()            # the short last band is padded with white
    with pytest.raises(ValueError, match="different sizes"):
        save_rows([a, b[:2]], tmp_path / "bad.png")


def test_cli_trains_all_three_and_reconstructs_noisy_inputs(tmp_path, mnist_dir, monkeypatch, capsys):
    decays = []
    make_optimizer = aelab.train.make_optimizer
    monkeypatch.setattr(aelab.train, "make_optimizer",
                        lambda model, lr, weight_decay=0.0: decays.append(weight_decay)
                        or make_optimizer(model, lr, weight_decay))
    run = tmp_path / "run"
    code = main(["train", "--model", "ae", "--data-dir", mnist_dir, "--epochs", "1", "--hidden", "32",
                 "--latent-dim", "4", "--batch-size", "64", "--noise", "mask:0.3", "--sparsity", "l1:1e-3",
                 "--contractive", "0.1", "--weight-decay", "1e-4", "--no-progress", "--out", str(run)])
    assert code == 0, capsys.readouterr().err
    assert decays == [1e-4]
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    parts = ("rec", "sparsity", "contractive")
    assert {f"{split}_{part}" for split in ("train", "val") for part in parts} <= set(record)
    assert record["train_loss"] == pytest.approx(record["train_rec"] + 1e-3 * record["train_sparsity"]
                                                 + 0.1 * record["train_contractive"], rel=1e-5)
    info = json.loads((run / "run.json").read_text())
    assert info["test_metrics"]["code_mean_activation"] > 0
    capsys.readouterr()

    picture = tmp_path / "noisy.png"
    assert main(["reconstruct", str(run), "-n", "8", "--noise", "gaussian:0.5", "--seed", "3",
                 "-o", str(picture)]) == 0
    line = capsys.readouterr().out.strip()
    assert "recon_mse vs clean" in line and str(picture) in line
    cells = png_cells(picture, 28)
    assert cells.shape[:2] == (3, 8)               # one band: noisy inputs, outputs, clean targets

    cfg, model, _ = load_run(run)
    clean = getattr(load_splits(cfg.data, cfg.train.seed, "cpu"), "test").spread(8)
    noisy = corrupt(clean, "gaussian:0.5", torch.Generator().manual_seed(3))
    with torch.no_grad():
        outputs = model.reconstruct(noisy)
    assert np.array_equal(cells[0], as_bytes(noisy))
    assert np.array_equal(cells[1], as_bytes(outputs))
    assert np.array_equal(cells[2], as_bytes(clean))
    mse = float(line.split("recon_mse vs clean ")[1].split()[0])
    assert mse == pytest.approx((outputs - clean).square().mean().item(), rel=1e-4)


def test_cli_reconstruct_rejects_a_bad_noise_spec(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path), "--noise", "blur:1", "-o", str(tmp_path / "x.png")]) == 2
    assert "'blur:1'" in capsys.readouterr().err
    assert not Path(tmp_path / "x.png").exists()

"""The VQ-VAE family: quantiser, losses of eq. 3, EMA codebook, dead-code restarts, code statistics,
the autoregressive code prior, saving and loading, and the command line end to end."""
from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from aelab.cli import main
from aelab.config import RunConfig, resolve_config
from aelab.errors import ConfigError, RunError
from aelab.losses import bernoulli_nll, straight_through, vq_codebook_loss, vq_commitment_loss
from aelab.models import build_model, model_config_from_dict
from aelab.models.vqvae import CodePrior, VectorQuantizer, perplexity
from aelab.runs import load_run, save_model, write_config, write_run_info


def tiny_vqvae(seed: int = 0, **options):
    """1x8x8 images, hidden 16, 3 codes of 2 numbers, K = 8."""
    torch.manual_seed(seed)
    values = {"name": "vqvae", "input_shape": (1, 8, 8), "hidden_dims": (16,), "latent_dim": 6,
              "code_dim": 2, "codebook_size": 8, "prior_hidden": 16, **options}
    return build_model(model_config_from_dict(values))


def batches(images: torch.Tensor, size: int = 8):
    """What the trainer hands after_training: (x, y) pairs in order."""
    return [(images[i:i + size], None) for i in range(0, len(images), size)]


@pytest.fixture
def images() -> torch.Tensor:
    """(32, 1, 8, 8) images in [0, 1]."""
    return torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------- config and shapes


def test_the_mlp_code_is_latent_dim_split_into_code_dim_vectors(tiny_images):
    model = tiny_vqvae().eval()
    assert model.n_codes == 3
    assert model.encode(tiny_images).shape == (4, 3, 2)
    assert model.codes(tiny_images).shape == (4, 3)
    assert model.embed(tiny_images).shape == (4, 6)
    assert model.reconstruct(tiny_images).shape == tiny_images.shape


@pytest.mark.parametrize("latent_dim, arch, expected", [(64, "mlp", 4), (20, "mlp", 4), (6, "mlp", 2),
                                                         (7, "mlp", 1), (64, "conv", 16)])
def test_code_dim_zero_picks_a_divisor_of_latent_dim_for_mlp_and_16_for_conv(latent_dim, arch, expected):
    cfg = model_config_from_dict({"name": "vqvae", "latent_dim": latent_dim, "arch": arch})
    assert cfg.code_dim == expected


@pytest.mark.parametrize("options, message", [
    ({"latent_dim": 10, "code_dim": 4}, "not a multiple of code_dim"),
    ({"codebook_size": 1}, "codebook_size"),
    ({"commitment": -1.0}, "commitment"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"restart_after": -1}, "restart_after"),
    ({"prior_steps": 0}, "prior_steps"),
])
def test_bad_options_are_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        model_config_from_dict({"name": "vqvae", **options})


def test_conv_codes_are_the_last_feature_map_in_raster_order():
    torch.manual_seed(0)
    model = build_model(model_config_from_dict({"name": "vqvae", "arch": "conv", "input_shape": (1, 28, 28),
                                                "conv_channels": (4, 8), "code_dim": 3,
                                                "codebook_size": 8})).eval()
    x = torch.rand(2, 1, 28, 28)
    assert model.code_grid == (7, 7) and model.n_codes == 49
    z_e = model.encode(x)
    grid = model.encoder(x)                                    # (B, D, 7, 7)
    assert z_e.shape == (2, 49, 3) and torch.equal(z_e[:, 7 * 2 + 5], grid[:, :, 2, 5])
    assert model.embed(x).shape == (2, 49 * 3)
    out = model.train()(x)
    assert out.logits.shape == x.shape and torch.isfinite(out.loss)


def test_the_preset_is_the_seed_ae_network_with_16_codes_of_9_bits():
    cfg = resolve_config("vqvae")
    model = build_model(cfg.model)
    assert cfg.model.name == "vqvae" and cfg.model.arch == "mlp"
    assert cfg.model.hidden_dims == resolve_config("seed-ae").model.hidden_dims
    assert cfg.model.latent_dim == resolve_config("seed-ae").model.latent_dim
    assert model.n_codes * math.log2(cfg.model.codebook_size) == 144
    # the same networks as an ae: --model ae keeps them, only the quantiser goes
    ae = build_model(resolve_config("vqvae", overrides={"model.name": "ae"}).model)
    assert [p.shape for p in ae.parameters()] == [p.shape for p in model.parameters()]


# ---------------------------------------------------------------- quantiser and losses


def test_straight_through_passes_z_q_forward_and_the_gradient_to_z_e_unchanged():
    z_e = torch.tensor([[0.5, -1.0]], requires_grad=True)
    z_q = torch.tensor([[2.0, 3.0]])
    out = straight_through(z_e, z_q)
    assert torch.equal(out, z_q)
    (out * torch.tensor([[3.0, 4.0]])).sum().backward()
    assert torch.equal(z_e.grad, torch.tensor([[3.0, 4.0]]))


def test_the_reconstruction_loss_alone_gives_every_encoder_weight_a_gradient(tiny_images):
    model = tiny_vqvae()
    out = model(tiny_images)
    out.terms["rec"].backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_the_quantiser_picks_the_nearest_codebook_vector():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 3).eval()
    z_e = torch.randn(5, 7, 3)
    e, idx = vq(z_e)
    brute = torch.cdist(z_e.flatten(0, 1), vq.codebook).argmin(1).view(5, 7)
    assert torch.equal(idx, brute)
    assert torch.equal(e, vq.codebook[idx])
    # a point placed next to code 11 is coded as 11
    _, idx = vq(vq.codebook[11].view(1, 1, 3) + 1e-3)
    assert idx.item() == 11


def test_codebook_and_commitment_losses_by_hand():
    z_e = torch.tensor([[[1.0, 2.0], [0.0, 1.0]]], requires_grad=True)   # (B=1, L=2, D=2)
    e = torch.tensor([[[0.0, 0.0], [0.0, 3.0]]], requires_grad=True)
    codebook = vq_codebook_loss(z_e, e)
    commit = vq_commitment_loss(z_e, e)
    assert torch.equal(codebook, torch.tensor([1.0 + 4.0 + 0.0 + 4.0]))
    assert torch.equal(commit, torch.tensor([9.0]))
    codebook.sum().backward()                        # sg[z_e]: only the code vectors move
    assert z_e.grad is None and torch.equal(e.grad, 2 * (e - z_e).detach())
    e.grad = None
    commit.sum().backward()                          # sg[e]: only the encoder output moves
    assert e.grad is None and torch.equal(z_e.grad, 2 * (z_e - e).detach())


@pytest.mark.parametrize("ema", [True, False])
def test_the_loss_is_eq_3_with_beta_weighting_the_commitment(tiny_images, ema):
    model = tiny_vqvae(ema=ema, commitment=0.5).eval()   # eval: no codebook updates in forward
    out = model(tiny_images)
    z_e = model.encode(tiny_images)
    e = model.quantizer.codebook[model.codes(tiny_images)]
    rec = bernoulli_nll(model.decode(e.flatten(1)), tiny_images)
    dist = (z_e - e).square().sum((1, 2))
    expected = rec + (0.5 + (0 if ema else 1)) * dist
    torch.testing.assert_close(out.loss, expected.mean())
    torch.testing.assert_close(out.terms["commit"], dist.mean())
    assert ("codebook" in out.terms) == (not ema)


def test_ema_moves_codes_towards_their_encoder_outputs_and_the_codebook_has_no_gradient():
    vq = VectorQuantizer(3, 2, ema=True, decay=0.9, restart_after=0)
    vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]]))
    vq.ema_sum.copy_(vq.codebook)
    z_e = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [9.0, 11.0]]], requires_grad=True)
    e, idx = vq.train()(z_e)
    assert idx.tolist() == [[0, 0, 1]]
    # counts 1 + 0.1 * (2 - 1) = 1.1 and sums 0.9 e + 0.1 * sum(z_e) for code 0; (Laplace smoothing ~1e-5)
    torch.testing.assert_close(vq.codebook[0], torch.tensor([0.4, 0.2]) / 1.1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vq.codebook[1], torch.tensor([9.9, 10.1]), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(vq.codebook[2], torch.tensor([-10.0, 10.0]), rtol=1e-4, atol=1e-4)
    assert "codebook" not in dict(vq.named_parameters()) and not vq.codebook.requires_grad
    assert not e.requires_grad                        # no codebook gradient to carry


def test_ema_model_has_no_codebook_parameter_and_training_updates_the_codebook(tiny_images):
    model = tiny_vqvae(ema=True)
    assert not any("codebook" in name for name, _ in model.named_parameters())
    model.eval()
    before = model.quantizer.codebook.clone()
    model(tiny_images)
    assert torch.equal(model.quantizer.codebook, before)          # eval forward changes nothing
    model.train()(tiny_images)
    assert not torch.equal(model.quantizer.codebook, before)


def test_the_first_training_batch_initialises_the_codebook_from_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(4, 2, ema=False, restart_after=5).train()
    z_e = torch.randn(1, 6, 2)
    vq(z_e)
    rows = {tuple(r) for r in z_e[0].tolist()}
    assert all(tuple(c) in rows for c in vq.codebook.tolist())
    assert len({tuple(c) for c in vq.codebook.tolist()}) == 4   # drawn without replacement
    assert int(vq.restarts) == 4


@pytest.mark.parametrize("ema", [True, False])
def test_codes_unused_for_restart_after_steps_are_reinitialised_from_the_batch(ema):
    def run(seed):
        torch.manual_seed(seed)
        vq = VectorQuantizer(4, 2, ema=ema, restart_after=2).train()
        vq.steps_unused.zero_()                                     # skip the initial restart
        with torch.no_grad():
            vq.codebook.copy_(torch.tensor([[0.0, 0.0], [50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]))
            if ema:
                vq.ema_sum.copy_(vq.codebook)
        near_zero = torch.tensor([[[0.1, 0.0], [0.0, 0.1], [-0.1, 0.0]]])
        vq(near_zero)                                               # codes 1-3 unused for 1 step
        torch.testing.assert_close(vq.codebook[1:], torch.tensor([[50.0, 50.0], [60.0, 60.0], [70.0, 70.0]]),
                                   rtol=1e-3, atol=0)                # still there (EMA smoothing aside)
        vq(near_zero)                                               # ... for 2 steps
        batch = torch.tensor([[[5.0, 5.0], [6.0, 6.0], [7.0, 8.0]]])
        _, idx = vq(batch)                                          # restarted before this lookup
        return vq, batch, idx

    vq, batch, idx = run(0)
    # each of codes 1-3 is now one of the batch's vectors (moved a little by this batch's EMA step)
    assert torch.cdist(vq.codebook[1:], batch[0]).min(1).values.max() < 0.05
    assert int(vq.restarts) == 3
    assert (idx != 0).all()                                         # the batch now uses restarted codes
    assert torch.equal(run(0)[0].codebook, vq.codebook)            # reproducible from the torch seed


def test_restart_after_zero_never_restarts(tiny_images):
    model = tiny_vqvae(restart_after=0)
    before = model.quantizer.codebook.clone()
    model.eval()
    for _ in range(3):
        model.train()(tiny_images)
    assert int(model.quantizer.restarts) == 0
    # the EMA moved the used codes; the unused ones stay put
    used = torch.zeros(8, dtype=torch.bool)
    used[model.codes(tiny_images).flatten()] = True
    torch.testing.assert_close(model.quantizer.codebook[~used], before[~used], rtol=1e-3, atol=1e-3)


# ---------------------------------------------------------------- code statistics


def test_perplexity_is_exp_of_the_entropy_of_the_histogram():
    assert perplexity(torch.tensor([2, 2, 0, 4])) == pytest.approx(2 ** 1.5)   # H = 1.5 bits
    assert perplexity(torch.tensor([5, 5, 5, 5])) == pytest.approx(4.0)
    assert perplexity(torch.tensor([0, 7, 0, 0])) == pytest.approx(1.0)


def test_epoch_stats_reports_usage_and_perplexity_then_resets():
    model = tiny_vqvae()
    model.quantizer.counts.copy_(torch.tensor([2, 2, 0, 4, 0, 0, 0, 0]))
    stats = model.epoch_stats()
    assert stats["code_usage"] == pytest.approx(3 / 8)
    assert stats["code_perplexity"] == pytest.approx(math.exp(-(0.25 * math.log(0.25) * 2
                                                                 + 0.5 * math.log(0.5))))
    assert model.epoch_stats() == {}
    assert int(model.quantizer.counts.sum()) == 0


def test_training_forwards_count_every_code_and_evaluation_forwards_none(tiny_images):
    model = tiny_vqvae()
    model.train()(tiny_images)
    model.train()(tiny_images)
    model.eval()(tiny_images)
    model.metrics(tiny_images)
    assert int(model.quantizer.counts.sum()) == 2 * 4 * 3          # 2 batches x 4 images x 3 codes
    stats = model.epoch_stats()
    assert 0 < stats["code_usage"] <= 1 and 1 <= stats["code_perplexity"] <= 8
    assert stats["codes_restarted"] == 8                           # the initial codebook


# ---------------------------------------------------------------- prior and sampling


def test_the_prior_is_autoregressive():
    torch.manual_seed(0)
    prior = CodePrior(5, 7, 16)
    codes = torch.randint(7, (3, 5))
    changed = codes.clone()
    changed[:, 3:] = (changed[:, 3:] + 1) % 7
    a, b = prior.logits(codes), prior.logits(changed)
    assert torch.equal(a[:, :4], b[:, :4])        # positions 0-3 do not see codes 3 and 4
    assert not torch.allclose(a[:, 4], b[:, 4])


def test_the_prior_learns_a_dependence_between_positions():
    torch.manual_seed(0)
    first = torch.randint(4, (512,))
    codes = torch.stack([first, first, torch.randint(4, (512,))], 1)   # c_1 = c_0, c_2 free
    prior = CodePrior(3, 4, 32)
    nll = prior.fit(codes, steps=160, batch_size=128)
    assert nll < 2 * math.log(4) + 0.1               # uniform would be 3 log 4; the copy is learned
    sampled = prior.sample(200, 3, torch.Generator().manual_seed(0))
    assert (sampled[:, 1] == sampled[:, 0]).float().mean() > 0.9
    assert len(sampled[:, 0].unique()) == 4


def test_after_training_fits_the_prior_and_sample_is_reproducible(images):
    model = tiny_vqvae(prior_steps=10)
    model.train()(images)
    weights = model.prior.out_w.clone()
    with pytest.raises(RunError, match="not been fitted"):
        model.sample(2)
    model.after_training(batches(images))
    assert model.training                          # left as it was
    assert bool(model.prior.fitted) and not torch.equal(model.prior.out_w, weights)
    x = model.sample(6, generator=torch.Generator().manual_seed(3))
    assert x.shape == (6, 1, 8, 8) and x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, model.sample(6, generator=torch.Generator().manual_seed(3)))
    assert not torch.equal(x, model.sample(6, generator=torch.Generator().manual_seed(4)))


def test_the_prior_is_no_parameter_so_the_trainer_never_moves_it():
    model = tiny_vqvae()
    assert not any(name.startswith("prior.") for name, _ in model.named_parameters())
    assert {"prior.out_w", "prior.mix", "prior.fitted"} <= set(model.state_dict())


def test_save_and_load_run_keeps_codebook_and_prior(images, tmp_path):
    model = tiny_vqvae(prior_steps=3)
    model.train()(images)
    model.after_training(batches(images))
    cfg = RunConfig(model=model.cfg)
    write_config(tmp_path, cfg)
    write_run_info(tmp_path, {})
    save_model(tmp_path, model)
    _, loaded, _ = load_run(tmp_path)
    state, again = model.state_dict(), loaded.state_dict()
    assert set(state) == set(again)
    for name in state:
        assert torch.equal(state[name], again[name]), name
    model.eval()
    assert torch.equal(loaded.sample(4, torch.Generator().manual_seed(0)),
                       model.sample(4, torch.Generator().manual_seed(0)))
    assert torch.equal(loaded.embed(images), model.embed(images))


# ---------------------------------------------------------------- command line


def test_train_then_sample_on_real_mnist(mnist_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", "vqvae", "--data-dir", mnist_dir, "--epochs", "1",
                 "--hidden", "32", "--latent-dim", "8", "--batch-size", "64", "--no-progress",
                 "--set", "model.codebook_size=16", "--set", "model.code_dim=2",
                 "--set", "model.prior_hidden=16", "--set", "model.prior_steps=20",
                 "--out", str(run)]) == 0
    assert "code prior:" in capsys.readouterr().out
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < record["code_usage"] <= 1 and 1 <= record["code_perplexity"] <= 16
    assert {"train_commit", "val_commit"} <= set(record)
    assert (run / "samples.png").exists()
    info = json.loads((run / "run.json").read_text())
    assert {"recon_mse", "recon_bce"} <= set(info["test_metrics"])

    path = tmp_path / "x.png"
    assert main(["sample", str(run), "-n", "16", "-o", str(path)]) == 0
    assert capsys.readouterr().out.startswith("wrote 16 samples")
    with Image.open(path) as im:   # 2 rows of 8 cells of 28 + 2 padding pixels, at scale 2
        assert im.size == ((8 * 30 + 2) * 2, (2 * 30 + 2) * 2)


def test_a_resumed_run_ends_with_the_same_codebook_prior_and_weights(mnist_dir, tmp_path, capsys):
    """Restart counters are saved with the weights, so resuming after epoch 1 changes nothing."""
    tiny = ["--model", "vqvae", "--data-dir", mnist_dir, "--hidden", "32", "--latent-dim", "8",
            "--batch-size", "64", "--no-progress", "--set", "model.codebook_size=16",
            "--set", "model.code_dim=2", "--set", "model.restart_after=5",
            "--set", "model.prior_hidden=16", "--set", "model.prior_steps=20"]
    assert main(["train", *tiny, "--epochs", "2", "--out", str(tmp_path / "whole")]) == 0
    assert main(["train", *tiny, "--epochs", "1", "--out", str(tmp_path / "half")]) == 0
    assert main(["train", "--resume", str(tmp_path / "half"), "--epochs", "2"]) == 0
    whole = (tmp_path / "whole" / "model.safetensors").read_bytes()
    assert (tmp_path / "half" / "model.safetensors").read_bytes() == whole

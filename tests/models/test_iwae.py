"""IWAE: log densities and the k-sample bound; k = 1 against the VAE; the bound rises with k."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from aelab.errors import ConfigError
from aelab.losses import (bernoulli_nll, iwae_bound, kl_std_normal, log_normal_diag, reparameterize)
from aelab.models import build_model, model_config_from_dict
from aelab.models.iwae import IWAE
from aelab.models.vae import VAE

SHAPE = {"input_shape": (1, 8, 8), "latent_dim": 2, "hidden_dims": (16,)}


def tiny(name, seed=0, **options):
    torch.manual_seed(seed)
    return build_model(model_config_from_dict({"name": name, **SHAPE, **options}))


# ---------------------------------------------------------------- the free functions


def test_log_normal_diag_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    z, mu, logvar = (torch.randn(3, 5, 4, generator=gen) for _ in range(3))
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal_diag(z, mu, logvar), expected)
    torch.testing.assert_close(log_normal_diag(z), Normal(0.0, 1.0).log_prob(z).sum(-1))
    assert log_normal_diag(z).shape == (3, 5)


def test_iwae_bound_is_log_mean_exp_over_the_first_dimension():
    log_w = torch.randn(7, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    torch.testing.assert_close(iwae_bound(log_w), log_w.exp().mean(0).log())
    torch.testing.assert_close(iwae_bound(log_w.T, dim=1), log_w.exp().mean(0).log())
    assert torch.equal(iwae_bound(log_w[:1]), log_w[0])             # k = 1: the weight itself


def test_iwae_bound_is_finite_when_every_weight_underflows():
    log_w = torch.tensor([[-1000.0], [-1001.0], [-1002.0]])
    expected = -1000 + math.log((1 + math.exp(-1) + math.exp(-2)) / 3)
    assert log_w.exp().mean(0).log().item() == -math.inf              # the naive formula fails
    assert iwae_bound(log_w).item() == pytest.approx(expected)


# ---------------------------------------------------------------- config


@pytest.mark.parametrize("options, words", [({"k": 0}, "at least 1"), ({"beta": 4.0}, "beta must be 1"),
                                            ({"kl_warmup": 3}, "kl_warmup 0")])
def test_bad_options_are_config_errors(options, words):
    with pytest.raises(ConfigError, match=words):
        tiny("iwae", **options)


def test_iwae_is_a_vae_with_the_same_parameters():
    iwae, vae = tiny("iwae"), tiny("vae")
    assert isinstance(iwae, IWAE) and isinstance(iwae, VAE) and iwae.cfg.k == 5
    assert {n: p.shape for n, p in iwae.state_dict().items()} == \
           {n: p.shape for n, p in vae.state_dict().items()}


# ---------------------------------------------------------------- k = 1 is the VAE's ELBO


def single_sample_elbo(model, x, seed):
    """log p(x|z) + log p(z) - log q(z|x) at one z ~ q(z|x), written out with torch.distributions."""
    mu, logvar = model.encode(x)
    torch.manual_seed(seed)
    z = reparameterize(mu, logvar)
    log_px = -bernoulli_nll(model.decode(z), x)
    log_pz = Normal(0.0, 1.0).log_prob(z).sum(-1)
    log_qz = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    return log_px + log_pz - log_qz


def test_k1_loss_is_exactly_minus_the_vaes_monte_carlo_elbo_for_the_same_weights_and_noise(tiny_images):
    vae, iwae = tiny("vae"), tiny("iwae", seed=1, k=1)
    assert not torch.equal(iwae.encoder.head[0].weight, vae.encoder.head[0].weight)
    iwae.load_state_dict(vae.state_dict())

    torch.manual_seed(7)
    loss = iwae(tiny_images).loss
    torch.manual_seed(7)
    vae_log_w = vae.log_weights(tiny_images, 1)[0]
    torch.testing.assert_close(loss, -vae_log_w.mean(), rtol=0, atol=0)
    torch.testing.assert_close(loss, -single_sample_elbo(vae, tiny_images, seed=7).mean())

    torch.manual_seed(7)
    iw = iwae.metrics(tiny_images)
    torch.manual_seed(7)
    assert torch.equal(iw["elbo"], vae.metrics(tiny_images)["elbo"])   # same analytic-KL ELBO


def test_k1_uses_the_vaes_z(tiny_images):
    vae, iwae = tiny("vae"), tiny("iwae", seed=1, k=1)
    iwae.load_state_dict(vae.state_dict())
    torch.manual_seed(3)
    z_iwae = iwae(tiny_images).z
    torch.manual_seed(3)
    assert torch.equal(z_iwae, vae(tiny_images).z)


def test_the_analytic_kl_elbo_equals_the_monte_carlo_one_in_expectation(tiny_images):
    """The VAE's training ELBO uses the analytic KL; averaged over z it equals the mean log weight."""
    vae = tiny("vae").eval()
    n = 20_000
    torch.manual_seed(0)
    with torch.no_grad():
        log_w, log_px, _, _ = vae.log_weights(tiny_images, n)        # (n, B)
        mu, logvar = vae.encode(tiny_images)
    analytic = log_px - kl_std_normal(mu, logvar)                     # per draw, analytic KL
    diff = log_w - analytic                                           # KL - (log q - log p) at z_i
    standard_error = diff.std(0) / math.sqrt(n)
    assert (diff.mean(0).abs() < 4 * standard_error).all()
    assert (diff.std(0) > 0.05).all()                                 # the two differ draw by draw


# ---------------------------------------------------------------- k > 1


def test_loss_is_minus_the_k_sample_bound(tiny_images):
    model = tiny("iwae", k=5)
    torch.manual_seed(2)
    out = model(tiny_images)
    torch.manual_seed(2)
    log_w, log_px, z, logits = model.log_weights(tiny_images, 5)
    assert log_w.shape == (5, 4) and z.shape == (5, 4, 2) and logits.shape == (5, 4, 1, 8, 8)
    torch.testing.assert_close(out.loss, -iwae_bound(log_w).mean())
    torch.testing.assert_close(out.terms["rec"], -log_px.mean())
    torch.testing.assert_close(out.terms["rec"] + out.terms["kl"], -log_w.mean())
    assert torch.equal(out.z, z[0]) and torch.equal(out.logits, logits[0])


def test_each_draw_has_its_own_noise_and_decodes_its_own_z(tiny_images):
    model = tiny("iwae")
    torch.manual_seed(0)
    log_w, log_px, z, logits = model.log_weights(tiny_images, 3)
    assert not torch.allclose(z[0], z[1])
    with torch.no_grad():
        torch.testing.assert_close(logits[2], model.decode(z[2]))
        torch.testing.assert_close(log_px[2], -bernoulli_nll(model.decode(z[2]), tiny_images))


def test_the_bound_rises_with_k_and_k5_beats_the_elbo_on_average(tiny_images):
    model = tiny("vae").eval()
    with torch.no_grad():     # a poor posterior (variances e^2 too wide), so the weights vary a lot
        model.encoder.head[-1].bias[2:] += 2.0
        model.decoder.net[0][-1].weight.mul_(3)
    reps = 400
    torch.manual_seed(0)
    with torch.no_grad():
        log_w = model.log_weights(tiny_images, 50 * reps)[0].view(reps, 50, 4)
    bound = {k: iwae_bound(log_w[:, :k], dim=1).mean().item() for k in (1, 5, 50)}
    elbo = log_w.mean().item()                      # the Monte-Carlo ELBO over all 20,000 draws
    assert bound[1] == pytest.approx(log_w[:, 0].mean().item())
    assert bound[5] > elbo + 5                      # measured: -49.3 against -63.8
    assert bound[1] + 5 < bound[5] < bound[50] - 0.5    # measured: -63.6, -49.3, -47.4


def test_metrics_add_the_k_sample_bound(tiny_images):
    model = tiny("iwae", k=5).eval()
    torch.manual_seed(1)
    metrics = model.metrics(tiny_images)
    assert {"recon_mse", "recon_bce", "kl", "elbo", "iw_bound"} <= set(metrics)
    torch.manual_seed(1)
    with torch.no_grad():
        reparameterize(*model.encode(tiny_images))     # the elbo's draw comes first
        expected = iwae_bound(model.log_weights(tiny_images, 5)[0])
    torch.testing.assert_close(metrics["iw_bound"], expected)


@pytest.mark.parametrize("likelihood", ["continuous-bernoulli", "gaussian", "mse"])
def test_other_likelihoods_give_finite_bounds(likelihood, tiny_images):
    model = tiny("iwae", likelihood=likelihood)
    out = model(tiny_images)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


# ---------------------------------------------------------------- the DReG estimator


def grads_after(model, x, seed):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(x)
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_unknown_estimator_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown estimator 'reinforce'"):
        tiny("iwae", estimator="reinforce")


def test_dreg_has_the_iwae_loss_and_decoder_gradient_and_another_encoder_gradient(tiny_images):
    iwae = tiny("iwae", k=5)
    dreg = tiny("iwae", k=5, estimator="dreg")
    dreg.load_state_dict(iwae.state_dict())
    loss_a, grad_a = grads_after(iwae, tiny_images, seed=3)
    loss_b, grad_b = grads_after(dreg, tiny_images, seed=3)
    torch.testing.assert_close(loss_b, loss_a)                        # the value: minus the bound
    for name in grad_a:
        if name.startswith("decoder"):
            torch.testing.assert_close(grad_b[name], grad_a[name])
        elif name.startswith("encoder"):
            assert not torch.allclose(grad_b[name], grad_a[name]), name


def test_dreg_encoder_gradient_weights_each_draw_by_its_squared_normalised_weight(tiny_images):
    model = tiny("iwae", k=5, estimator="dreg")
    _, grad = grads_after(model, tiny_images, seed=4)
    # by hand, with no hook: log w with q's parameters cut (the encoder reaches it through z only),
    # each draw weighted by its normalised weight squared
    model.zero_grad(set_to_none=True)
    torch.manual_seed(4)
    log_w = model.log_weights(tiny_images, 5, detach_q=True)[0]
    w = torch.softmax(log_w.detach(), dim=0)
    (-(w.square() * log_w).sum(0).mean()).backward()
    for name, p in model.named_parameters():
        if name.startswith("encoder"):
            torch.testing.assert_close(grad[name], p.grad, msg=name)


def test_detach_q_changes_no_value(tiny_images):
    model = tiny("iwae", k=3)
    torch.manual_seed(5)
    plain = model.log_weights(tiny_images, 3)
    torch.manual_seed(5)
    cut = model.log_weights(tiny_images, 3, detach_q=True)
    for a, b in zip(plain, cut):
        assert torch.equal(a, b)

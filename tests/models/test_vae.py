"""The VAE: loss = rec + beta * KL, the three likelihoods, metrics with a sampled z, prior samples."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from aelab.losses import bernoulli_nll, gaussian_nll, kl_std_normal, mse_per_pixel, reparameterize
from aelab.models import build_model, model_config_from_dict

N_PIXELS = 64   # tiny_images are 1x8x8


def tiny_vae(**options):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,), **options}))


def manual_terms(model, x, seed):
    """rec and kl per image, recomputed from the model's parts with the noise forward would draw."""
    mu, logvar = model.encode(x)
    torch.manual_seed(seed)
    z = reparameterize(mu, logvar)
    return z, model.reconstruction_nll(model.decode(z), x), kl_std_normal(mu, logvar)


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_loss_is_rec_plus_beta_kl(beta, tiny_images):
    model = tiny_vae(beta=beta)
    torch.manual_seed(7)
    out = model(tiny_images)
    z, rec, kl = manual_terms(model, tiny_images, seed=7)
    torch.testing.assert_close(out.z, z)
    expected_rec = bernoulli_nll(model.decode(z), tiny_images)
    torch.testing.assert_close(rec, expected_rec)
    torch.testing.assert_close(out.terms["rec"], rec.mean())
    torch.testing.assert_close(out.terms["kl"], kl.mean())
    torch.testing.assert_close(out.loss, (rec + beta * kl).mean())
    assert kl.mean() > 0.01       # so that beta visibly matters


def test_beta_changes_the_loss_but_not_its_parts(tiny_images):
    outs = {}
    for beta in (0.0, 2.0):
        model = tiny_vae(beta=beta)
        torch.manual_seed(7)
        outs[beta] = model(tiny_images)
    torch.testing.assert_close(outs[0.0].loss, outs[0.0].terms["rec"])
    torch.testing.assert_close(outs[2.0].terms["rec"], outs[0.0].terms["rec"])
    torch.testing.assert_close(outs[2.0].loss - outs[0.0].loss, 2 * outs[0.0].terms["kl"])


def test_forward_samples_z_from_the_posterior(tiny_images):
    model = tiny_vae()
    mu, _ = model.encode(tiny_images)
    torch.manual_seed(1)
    z1 = model(tiny_images).z
    torch.manual_seed(2)
    z2 = model(tiny_images).z
    assert not torch.allclose(z1, z2) and not torch.allclose(z1, mu)


def test_gaussian_with_obs_sigma_zero_learns_one_log_sigma(tiny_images):
    model = tiny_vae(likelihood="gaussian", obs_sigma=0.0)
    params = dict(model.named_parameters())
    assert "log_sigma" in params and params["log_sigma"].shape == ()
    assert "log_sigma" not in dict(model.named_buffers())
    out = model(tiny_images)
    out.loss.backward()
    assert model.log_sigma.grad is not None and model.log_sigma.grad != 0
    rec = gaussian_nll(torch.sigmoid(out.logits), tiny_images, model.log_sigma)
    torch.testing.assert_close(out.terms["rec"], rec.mean())


def test_gaussian_with_fixed_obs_sigma_uses_a_buffer(tiny_images):
    model = tiny_vae(likelihood="gaussian", obs_sigma=0.1)
    assert "log_sigma" not in dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    assert buffers["log_sigma"].item() == pytest.approx(math.log(0.1))
    assert "log_sigma" in model.state_dict()        # saved with the weights
    torch.manual_seed(3)
    out = model(tiny_images)
    expected = -Normal(torch.sigmoid(out.logits), 0.1).log_prob(tiny_images).flatten(1).sum(-1)
    torch.testing.assert_close(out.terms["rec"], expected.mean())


def test_mse_likelihood_rec_is_per_pixel_mse(tiny_images):
    model = tiny_vae(likelihood="mse")
    out = model(tiny_images)
    expected = mse_per_pixel(torch.sigmoid(out.logits), tiny_images)
    torch.testing.assert_close(out.terms["rec"], expected.mean())
    torch.testing.assert_close(out.terms["rec"], torch.nn.MSELoss()(torch.sigmoid(out.logits), tiny_images))


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "mse"])
def test_metrics_elbo_uses_a_sampled_z(likelihood, tiny_images):
    model = tiny_vae(likelihood=likelihood).eval()
    torch.manual_seed(11)
    metrics = model.metrics(tiny_images)
    with torch.no_grad():
        mu, logvar = model.encode(tiny_images)
        kl = kl_std_normal(mu, logvar)
        torch.manual_seed(11)
        z = reparameterize(mu, logvar)
        rec_sampled = model.reconstruction_nll(model.decode(z), tiny_images)
        rec_at_mean = model.reconstruction_nll(model.decode(mu), tiny_images)
    if likelihood == "mse":                           # the Gaussian normaliser makes it a true bound
        const = 0.5 * N_PIXELS * (math.log(2 * math.pi) + math.log(N_PIXELS / 2))
        rec_sampled, rec_at_mean = rec_sampled + const, rec_at_mean + const
    torch.testing.assert_close(metrics["kl"], kl)
    torch.testing.assert_close(metrics["elbo"], -(rec_sampled + kl))
    assert not torch.allclose(metrics["elbo"], -(rec_at_mean + kl))


def test_mse_elbo_is_a_gaussian_elbo_with_variance_half_the_pixel_count(tiny_images):
    model = tiny_vae(likelihood="mse").eval()
    torch.manual_seed(5)
    elbo = model.metrics(tiny_images)["elbo"]
    with torch.no_grad():
        mu, logvar = model.encode(tiny_images)
        torch.manual_seed(5)
        mean = torch.sigmoid(model.decode(reparameterize(mu, logvar)))
        log_px = Normal(mean, math.sqrt(N_PIXELS / 2)).log_prob(tiny_images).flatten(1).sum(-1)
    torch.testing.assert_close(elbo, log_px - kl_std_normal(mu, logvar))
    assert (elbo < 0).all()


def test_metrics_elbo_ignores_beta(tiny_images):
    """The reported ELBO is the true bound (beta = 1) whatever beta training used."""
    plain, heavy = tiny_vae(beta=1.0).eval(), tiny_vae(beta=8.0).eval()
    torch.manual_seed(0)
    a = plain.metrics(tiny_images)["elbo"]
    torch.manual_seed(0)
    b = heavy.metrics(tiny_images)["elbo"]
    torch.testing.assert_close(a, b)


def test_metrics_reconstruct_from_the_code_mean(tiny_images):
    model = tiny_vae().eval()
    metrics = model.metrics(tiny_images)
    with torch.no_grad():
        logits = model.decode(model.encode(tiny_images)[0])
    torch.testing.assert_close(metrics["recon_bce"], bernoulli_nll(logits, tiny_images))
    torch.testing.assert_close(metrics["recon_mse"], mse_per_pixel(torch.sigmoid(logits), tiny_images))


def test_embed_is_the_posterior_mean(tiny_images):
    model = tiny_vae()
    torch.testing.assert_close(model.embed(tiny_images), model.encode(tiny_images)[0])


def test_sample_shape_range_and_reproducibility():
    model = tiny_vae().eval()
    a = model.sample(5, generator=torch.Generator().manual_seed(0))
    b = model.sample(5, generator=torch.Generator().manual_seed(0))
    c = model.sample(5, generator=torch.Generator().manual_seed(1))
    assert a.shape == (5, 1, 8, 8)
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_sample_with_a_generator_leaves_the_global_rng_alone():
    model = tiny_vae().eval()
    state = torch.random.get_rng_state()
    model.sample(3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.random.get_rng_state(), state)

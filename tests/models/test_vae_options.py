"""VAE options: the KL warm-up schedule and the continuous Bernoulli likelihood (loss, normaliser, mean)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli

from aelab.config import RunConfig
from aelab.errors import ConfigError
from aelab.losses import (bernoulli_nll, continuous_bernoulli_log_norm, continuous_bernoulli_mean,
                          continuous_bernoulli_nll, kl_std_normal, mse_per_pixel, reparameterize)
from aelab.models import build_model, model_config_from_dict
from aelab.models.vae import kl_weight_at
from aelab.runs import load_run, save_model, write_config, write_run_info


def tiny_vae(**options):
    torch.manual_seed(0)
    return build_model(model_config_from_dict({"name": "vae", "input_shape": (1, 8, 8), "latent_dim": 2,
                                               "hidden_dims": (16,), **options}))


# ---------------------------------------------------------------- KL warm-up


def test_kl_warmup_schedule_rises_linearly_from_zero_to_beta():
    weights = [kl_weight_at(epoch, beta=2.0, warmup=4) for epoch in range(1, 8)]
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0]


def test_no_warmup_is_beta_from_the_first_epoch():
    assert [kl_weight_at(epoch, beta=4.0, warmup=0) for epoch in (1, 2, 50)] == [4.0, 4.0, 4.0]
    assert [kl_weight_at(epoch, beta=1.0, warmup=1) for epoch in (1, 2, 3)] == [0.0, 1.0, 1.0]


def test_negative_warmup_is_a_config_error():
    with pytest.raises(ConfigError, match="kl_warmup"):
        tiny_vae(kl_warmup=-1)


def test_start_epoch_sets_the_kl_weight_used_by_the_loss(tiny_images):
    model = tiny_vae(beta=2.0, kl_warmup=4)
    assert model.kl_weight == 2.0                  # built outside a trainer: the full beta
    for epoch, weight in [(1, 0.0), (3, 1.0), (9, 2.0)]:
        model.start_epoch(epoch)
        assert model.kl_weight == weight
        torch.manual_seed(5)
        out = model(tiny_images)
        torch.testing.assert_close(out.loss, out.terms["rec"] + weight * out.terms["kl"])
    assert out.terms["kl"] > 0.01                  # so the weight visibly matters


def test_the_reported_elbo_ignores_the_warmup_weight(tiny_images):
    model = tiny_vae(kl_warmup=10).eval()
    torch.manual_seed(0)
    full = model.metrics(tiny_images)["elbo"]
    model.start_epoch(1)                           # weight 0
    torch.manual_seed(0)
    torch.testing.assert_close(model.metrics(tiny_images)["elbo"], full, rtol=0, atol=0)


def test_a_reloaded_run_has_the_full_beta_whatever_epoch_training_stopped_in(tmp_path):
    model = tiny_vae(beta=3.0, kl_warmup=10)
    model.start_epoch(2)                           # stopped early in the warm-up
    assert model.kl_weight == pytest.approx(0.3)
    write_config(tmp_path, RunConfig(model=model.cfg))
    write_run_info(tmp_path, {})
    save_model(tmp_path, model)
    _, again, _ = load_run(tmp_path)
    assert again.kl_weight == 3.0
    assert "kl_weight" not in again.state_dict()


# ---------------------------------------------------------------- continuous Bernoulli: the loss

# logits far from 0, near 0, on both sides of the Taylor switch (|eta| = 0.1), and saturated
LOGITS = [-50.0, -12.0, -3.0, -1.0, -0.3, -0.1001, -0.0999, -0.02, -1e-4, 0.0, 1e-4, 0.02, 0.0999,
          0.1001, 0.3, 1.0, 3.0, 12.0, 50.0]


def integrated_log_norm(eta: float) -> float:
    """-log of the trapezoid integral of lambda^x (1 - lambda)^(1 - x) over x in [0, 1]."""
    x = np.linspace(0.0, 1.0, 400_001)
    log_f = -x * np.logaddexp(0.0, -eta) - (1 - x) * np.logaddexp(0.0, eta)   # log-space: no underflow
    return -math.log(np.trapezoid(np.exp(log_f), x))


@pytest.mark.parametrize("eta", LOGITS)
def test_log_normaliser_matches_a_numerical_integral(eta):
    got = continuous_bernoulli_log_norm(torch.tensor(eta, dtype=torch.float64)).item()
    assert got == pytest.approx(integrated_log_norm(eta), abs=1e-8)


def test_log_normaliser_is_log_2_at_one_half_and_grows_like_log_abs_logit():
    eta = torch.tensor([0.0, 40.0, -40.0], dtype=torch.float64)
    got = continuous_bernoulli_log_norm(eta)
    torch.testing.assert_close(got, torch.tensor([math.log(2), math.log(40), math.log(40)],
                                                 dtype=torch.float64))


def test_log_normaliser_in_float32_is_accurate_and_has_finite_gradients_at_zero():
    eta64 = torch.tensor(LOGITS, dtype=torch.float64)
    eta = eta64.float().requires_grad_()
    value = continuous_bernoulli_log_norm(eta)
    torch.testing.assert_close(value.double(), continuous_bernoulli_log_norm(eta64), rtol=0, atol=2e-6)
    value.sum().backward()
    assert torch.isfinite(eta.grad).all()
    # d/d eta log C = 1/eta - 1/sinh(eta), which is eta/6 near 0 and 1/eta far out
    torch.testing.assert_close(eta.grad[LOGITS.index(0.0)], torch.tensor(0.0))
    torch.testing.assert_close(eta.grad[LOGITS.index(12.0)], torch.tensor(1 / 12 - 1 / math.sinh(12)))


def test_nll_is_bce_minus_log_normaliser_summed_over_pixels(tiny_images):
    logits = torch.randn(tiny_images.shape, generator=torch.Generator().manual_seed(0)) * 3
    nll = continuous_bernoulli_nll(logits, tiny_images)
    bce = F.binary_cross_entropy_with_logits(logits, tiny_images, reduction="none")
    assert nll.shape == (4,)
    torch.testing.assert_close(nll, (bce - continuous_bernoulli_log_norm(logits)).sum((1, 2, 3)))
    assert not torch.allclose(nll, bernoulli_nll(logits, tiny_images))


def test_nll_matches_torch_continuous_bernoulli_log_prob():
    gen = torch.Generator().manual_seed(1)
    # torch clamps lambda to [eps, 1 - eps], so compare where that clamp does nothing (|eta| < 30)
    logits = torch.cat([torch.tensor(LOGITS[1:-1]), torch.randn(45, generator=gen) * 4]).double()
    x = torch.rand(len(logits), generator=gen).double()
    expected = -ContinuousBernoulli(logits=logits).log_prob(x)
    got = continuous_bernoulli_nll(logits.view(-1, 1, 1, 1), x.view(-1, 1, 1, 1))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-8)


def test_the_density_integrates_to_one():
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    for eta in (-6.0, -0.05, 0.0, 0.5, 20.0):
        logits = torch.full_like(x, eta)
        density = torch.exp(-continuous_bernoulli_nll(logits.view(-1, 1), x.view(-1, 1)))
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-7), eta


# ---------------------------------------------------------------- continuous Bernoulli: the mean


def test_mean_matches_torch_and_a_numerical_integral_and_is_not_the_sigmoid():
    logits = torch.tensor(LOGITS[1:-1], dtype=torch.float64)   # |eta| < 30: torch's clamp does nothing
    mean = continuous_bernoulli_mean(logits)
    torch.testing.assert_close(mean, ContinuousBernoulli(logits=logits).mean, rtol=0, atol=1e-9)
    x = np.linspace(0.0, 1.0, 400_001)
    for eta, m in zip(logits.tolist(), mean.tolist()):
        log_f = -x * np.logaddexp(0.0, -eta) - (1 - x) * np.logaddexp(0.0, eta)
        f = np.exp(log_f)
        assert m == pytest.approx(np.trapezoid(x * f, x) / np.trapezoid(f, x), abs=1e-8), eta
    far = logits.abs() > 1
    assert ((mean[far] - torch.sigmoid(logits[far])).abs() > 0.05).all()


def test_mean_is_in_the_unit_interval_and_smooth_in_float32():
    eta = torch.linspace(-80, 80, 20001).requires_grad_()
    mean = continuous_bernoulli_mean(eta)
    assert mean.min() >= 0 and mean.max() <= 1
    assert (mean.diff() >= 0).all()                           # increasing in eta
    mean.sum().backward()
    assert torch.isfinite(eta.grad).all()
    torch.testing.assert_close(continuous_bernoulli_mean(torch.tensor([0.0, 80.0, -80.0])),
                               torch.tensor([0.5, 1 - 1 / 80, 1 / 80]))


# ---------------------------------------------------------------- continuous Bernoulli in the VAE


def test_cb_vae_trains_on_the_cb_nll(tiny_images):
    model = tiny_vae(likelihood="continuous-bernoulli")
    torch.manual_seed(3)
    out = model(tiny_images)
    torch.testing.assert_close(out.terms["rec"], continuous_bernoulli_nll(out.logits, tiny_images).mean())


def test_cb_vae_reconstructs_samples_and_scores_with_the_cb_mean(tiny_images):
    model = tiny_vae(likelihood="continuous-bernoulli").eval()
    with torch.no_grad():
        mu, logvar = model.encode(tiny_images)
        logits = model.decode(mu)
        recon = model.reconstruct(tiny_images)
    torch.testing.assert_close(recon, continuous_bernoulli_mean(logits))
    assert not torch.allclose(recon, torch.sigmoid(logits))

    torch.manual_seed(4)
    metrics = model.metrics(tiny_images)
    torch.testing.assert_close(metrics["recon_mse"], mse_per_pixel(recon, tiny_images))
    with torch.no_grad():
        torch.manual_seed(4)
        z = reparameterize(mu, logvar)
        rec = continuous_bernoulli_nll(model.decode(z), tiny_images)
    torch.testing.assert_close(metrics["elbo"], -(rec + kl_std_normal(mu, logvar)))

    samples = model.sample(3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        z = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(samples, continuous_bernoulli_mean(model.decode(z)))


def test_other_likelihoods_keep_the_sigmoid_mean(tiny_images):
    for likelihood in ("bernoulli", "gaussian", "mse"):
        model = tiny_vae(likelihood=likelihood).eval()
        with torch.no_grad():
            expected = torch.sigmoid(model.decode(model.embed(tiny_images)))
            torch.testing.assert_close(model.reconstruct(tiny_images), expected)


def test_unknown_likelihood_lists_the_choices():
    with pytest.raises(ConfigError, match="continuous-bernoulli"):
        tiny_vae(likelihood="beta")

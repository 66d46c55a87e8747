"""Loss terms against torch.distributions and torch.nn: per-image values, nats."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli, Normal, kl_divergence

from aelab.losses import (bernoulli_nll, gaussian_nll, kl_normal_diag, kl_std_normal,
                          mse_as_gaussian_nll,
                          mse_per_pixel, reparameterize)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_kl_is_zero_at_the_prior():
    mu, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    kl = kl_std_normal(mu, logvar)
    assert kl.shape == (3,)
    assert torch.equal(kl, torch.zeros(3))


def test_kl_matches_torch_distributions(gen):
    mu = torch.randn(6, 4, generator=gen) * 2
    logvar = torch.randn(6, 4, generator=gen)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    kl = kl_std_normal(mu, logvar)
    assert kl.shape == (6,)
    torch.testing.assert_close(kl, expected)
    assert (kl > 0).all()


def test_kl_between_diagonal_gaussians_matches_torch_distributions(gen):
    mu, mu_p = torch.randn(6, 4, generator=gen) * 2, torch.randn(6, 4, generator=gen)
    logvar, logvar_p = torch.randn(6, 4, generator=gen), torch.randn(6, 4, generator=gen)
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)),
                             Normal(mu_p, torch.exp(0.5 * logvar_p))).sum(-1)
    torch.testing.assert_close(kl_normal_diag(mu, logvar, mu_p, logvar_p), expected)
    zeros = torch.zeros(6, 4)
    torch.testing.assert_close(kl_normal_diag(mu, logvar, zeros, zeros), kl_std_normal(mu, logvar))


def test_bernoulli_nll_matches_bernoulli_log_prob_for_binary_pixels(gen, tiny_images):
    logits = torch.randn(tiny_images.shape, generator=gen) * 3
    x = (tiny_images > 0.5).float()
    expected = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    nll = bernoulli_nll(logits, x)
    assert nll.shape == (4,)
    torch.testing.assert_close(nll, expected)


def test_bernoulli_nll_equals_binary_cross_entropy_for_grey_pixels(gen, tiny_images):
    logits = torch.randn(tiny_images.shape, generator=gen)
    expected = F.binary_cross_entropy(torch.sigmoid(logits), tiny_images, reduction="none").sum((1, 2, 3))
    torch.testing.assert_close(bernoulli_nll(logits, tiny_images), expected)


def test_bernoulli_nll_is_stable_for_large_logits():
    logits = torch.tensor([[200.0, -200.0]])
    nll = bernoulli_nll(logits, torch.tensor([[1.0, 0.0]]))
    assert torch.isfinite(nll).all() and nll.item() == pytest.approx(0.0, abs=1e-6)
    wrong = bernoulli_nll(logits, torch.tensor([[0.0, 1.0]]))
    assert wrong.item() == pytest.approx(400.0)


@pytest.mark.parametrize("log_sigma", [0.0, -1.5, 0.7])
def test_gaussian_nll_matches_normal_log_prob(gen, tiny_images, log_sigma):
    mean = torch.rand(tiny_images.shape, generator=gen)
    expected = -Normal(mean, math.exp(log_sigma)).log_prob(tiny_images).flatten(1).sum(-1)
    nll = gaussian_nll(mean, tiny_images, torch.tensor(log_sigma))
    assert nll.shape == (4,)
    torch.testing.assert_close(nll, expected)


def test_gaussian_nll_gives_log_sigma_a_gradient(gen, tiny_images):
    log_sigma = torch.zeros((), requires_grad=True)
    gaussian_nll(torch.rand(tiny_images.shape, generator=gen), tiny_images, log_sigma).sum().backward()
    assert log_sigma.grad is not None and log_sigma.grad != 0


def test_mse_per_pixel_matches_nn_mse_loss_per_image(gen, tiny_images):
    mean = torch.rand(tiny_images.shape, generator=gen)
    per_image = mse_per_pixel(mean, tiny_images)
    assert per_image.shape == (4,)
    expected = torch.stack([nn.MSELoss()(m, x) for m, x in zip(mean, tiny_images)])
    torch.testing.assert_close(per_image, expected)


def test_mse_loss_is_a_gaussian_nll_with_variance_half_the_pixel_count(gen, tiny_images):
    """The study's per-pixel MSE is, up to a constant, -log N(x; mean, D/2) summed over D pixels."""
    mean = torch.rand(tiny_images.shape, generator=gen)
    n_pixels = tiny_images[0].numel()                                  # D = 64
    expected = -Normal(mean, math.sqrt(n_pixels / 2)).log_prob(tiny_images).flatten(1).sum(-1)
    nll = mse_as_gaussian_nll(mse_per_pixel(mean, tiny_images), n_pixels)
    torch.testing.assert_close(nll, expected)


def test_mse_as_gaussian_nll_for_mnist_sized_images(gen):
    x = torch.rand(2, 1, 28, 28, generator=gen)
    mean = torch.rand(2, 1, 28, 28, generator=gen)
    expected = -Normal(mean, math.sqrt(784 / 2)).log_prob(x).flatten(1).sum(-1)
    torch.testing.assert_close(mse_as_gaussian_nll(mse_per_pixel(mean, x), 784), expected)


def test_reparameterize_has_the_posterior_mean_and_std():
    torch.manual_seed(0)
    n = 200_000
    mu = torch.tensor([1.0, -2.0]).expand(n, 2)
    std = torch.tensor([0.5, 2.0])
    logvar = (2 * std.log()).expand(n, 2)
    z = reparameterize(mu, logvar)
    assert z.shape == (n, 2)
    torch.testing.assert_close(z.mean(0), mu[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), std, atol=0, rtol=0.02)


def test_reparameterize_lets_gradients_reach_mu_and_logvar():
    torch.manual_seed(0)
    mu = torch.zeros(3, 4, requires_grad=True)
    logvar = torch.zeros(3, 4, requires_grad=True)
    z = reparameterize(mu, logvar)
    z.sum().backward()
    torch.testing.assert_close(mu.grad, torch.ones(3, 4))
    torch.testing.assert_close(logvar.grad, 0.5 * (z - mu).detach())   # dz/dlogvar = sigma * eps / 2
    assert (logvar.grad != 0).all()


def test_reparameterize_draws_fresh_noise_each_call():
    mu, logvar = torch.zeros(2, 3), torch.zeros(2, 3)
    assert not torch.equal(reparameterize(mu, logvar), reparameterize(mu, logvar))

"""Loss terms as pure functions returning one value per example, shape (B,), in nats.

Decoders return logits; the mean image is ``sigmoid(logits)`` for every likelihood, so outputs
stay in [0, 1] as the study's sigmoid output layer did.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions (Kingma & Welling, appendix B).

    Per dimension: 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1); zero when mu = 0 and sigma = 1.
    """
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(-1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) for a Bernoulli per pixel, summed over pixels (nats per image).

    Computed from logits for stability and speed; targets in [0, 1] may be grey levels.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


def gaussian_nll(mean: Tensor, x: Tensor, log_sigma: Tensor) -> Tensor:
    """-log N(x; mean, sigma^2) summed over pixels (nats per image); log_sigma broadcasts."""
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    per_pixel = 0.5 * ((x - mean) * torch.exp(-log_sigma)).square() + log_sigma + 0.5 * LOG_2PI
    return per_pixel.flatten(1).sum(-1)


def mse_per_pixel(mean: Tensor, x: Tensor) -> Tensor:
    """Mean squared error per pixel, one value per image (the study's ``nn.MSELoss``)."""
    return (mean - x).square().flatten(1).mean(-1)


def mse_as_gaussian_nll(mse: Tensor, n_pixels: int) -> Tensor:
    """The exact NLL behind ``mse + KL``: a Gaussian with variance n_pixels / 2 per pixel.

    sum((x - mean)^2) / (2 sigma^2) = mse when sigma^2 = D / 2, so the study's loss is an ELBO whose
    decoder is that noisy (sigma ~ 19.8 for D = 784); adding the normaliser makes it a true bound.
    """
    return mse + 0.5 * n_pixels * (LOG_2PI + math.log(n_pixels / 2))

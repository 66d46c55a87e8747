"""Variational autoencoder with a Gaussian encoder and a standard normal prior
(Kingma & Welling 2014, arXiv:1312.6114); ``beta`` != 1 weights the KL term (Higgins et al. 2017).

Likelihoods, each -log p(x|z) per image:
- ``bernoulli``: binary cross-entropy summed over pixels, the usual MNIST ELBO;
- ``gaussian``: Gaussian with a fixed (``obs_sigma`` > 0) or one learned standard deviation;
- ``mse``: the study's loss, mean squared error per pixel. It equals a Gaussian likelihood with
  variance D/2 per pixel (D pixels), so the KL outweighs the reconstruction and the posterior collapses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import (bernoulli_nll, gaussian_nll, kl_std_normal, mse_as_gaussian_nll,
                      mse_per_pixel, reparameterize)
from .base import Autoencoder, ModelConfig, ModelOutput
from .blocks import Decoder, Encoder
from .registry import register

LIKELIHOODS = ("bernoulli", "gaussian", "mse")


@dataclass
class VAEConfig(ModelConfig):
    name: str = "vae"
    latent_dim: int = 20
    hidden_dims: tuple[int, ...] = (400,)
    likelihood: str = "bernoulli"
    beta: float = 1.0             # weight of the KL term; 1.0 is the plain ELBO
    obs_sigma: float = 0.0        # gaussian only: fixed std per pixel; 0 learns one shared std

    def __post_init__(self):
        super().__post_init__()
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
        if self.beta < 0:
            raise ConfigError(f"beta must be non-negative, got {self.beta}")
        if self.obs_sigma < 0:
            raise ConfigError(f"obs_sigma must be non-negative, got {self.obs_sigma}")


@register("vae")
class VAE(Autoencoder):
    """Gaussian encoder q(z|x), reparameterised code, standard normal prior; loss = -ELBO."""

    config_cls = VAEConfig
    can_sample = True

    def __init__(self, cfg: VAEConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg, 2 * cfg.latent_dim)
        self.decoder = Decoder(cfg, cfg.latent_dim)
        if cfg.likelihood == "gaussian" and cfg.obs_sigma == 0:
            self.log_sigma = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(cfg.obs_sigma or 1.0)))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:   # -> mu, logvar: (B, latent_dim) each
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:                   # -> logits (B, C, H, W)
        return self.decoder(z)

    def embed(self, x: Tensor) -> Tensor:
        return self.encode(x)[0]

    def reconstruction_nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """The training reconstruction term per image, (B,)."""
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(logits, x)
        if self.cfg.likelihood == "gaussian":
            return gaussian_nll(torch.sigmoid(logits), x, self.log_sigma)
        return mse_per_pixel(torch.sigmoid(logits), x)

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar)
        logits = self.decode(z)
        rec = self.reconstruction_nll(logits, x)             # (B,)
        kl = kl_std_normal(mu, logvar)                       # (B,)
        loss = (rec + self.cfg.beta * kl).mean()
        return ModelOutput(loss=loss, logits=logits, z=z, terms={"rec": rec.mean(), "kl": kl.mean()})

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """Mean images decoded from z ~ N(0, I), (n, C, H, W) in [0, 1]."""
        device = self.log_sigma.device
        z = torch.randn(n, self.cfg.latent_dim, generator=generator, device=device)
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Adds ``kl`` and ``elbo`` (nats per image, z drawn from q(z|x), beta = 1: the true bound)."""
        out = super().metrics(x, y)
        mu, logvar = self.encode(x)
        rec = self.reconstruction_nll(self.decode(reparameterize(mu, logvar)), x)
        if self.cfg.likelihood == "mse":
            rec = mse_as_gaussian_nll(rec, self.n_pixels)
        kl = kl_std_normal(mu, logvar)
        out.update(kl=kl, elbo=-(rec + kl))
        return out

"""Variational autoencoder with a Gaussian encoder and a standard normal prior
(Kingma & Welling 2014, arXiv:1312.6114); ``beta`` != 1 weights the KL term (Higgins et al. 2017).

Likelihoods, each -log p(x|z) per image:
- ``bernoulli``: binary cross-entropy summed over pixels, the usual MNIST ELBO;
- ``continuous-bernoulli``: the Bernoulli made a proper density on [0, 1] by its normaliser
  (Loaiza-Ganem & Cunningham 2019); its mean image is the CB mean, not sigmoid(logits);
- ``gaussian``: Gaussian with a fixed (``obs_sigma`` > 0) or one learned standard deviation;
- ``mse``: the study's loss, mean squared error per pixel. It equals a Gaussian likelihood with
  variance D/2 per pixel (D pixels), so the KL outweighs the reconstruction and the posterior collapses.

KL warm-up (``kl_warmup: N``): in epoch e (1-based) the KL weight is beta * min(1, (e - 1) / N), so
epoch 1 trains on the reconstruction alone, epoch N on (N - 1) / N of beta, and every epoch from
N + 1 on the full beta. The weight lives on the model (``kl_weight``, beta when built), is moved
only by the trainer's ``start_epoch``, and never enters the reported ELBO (beta = 1 there).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import handgrad
from ..errors import ConfigError
from ..losses import (bernoulli_nll, continuous_bernoulli_mean, continuous_bernoulli_nll,
                      gaussian_nll, kl_std_normal, log_normal_diag, mse_as_gaussian_nll,
                      mse_per_pixel, reparameterize)
from .base import Autoencoder, ModelConfig, ModelOutput
from .blocks import Decoder, Encoder
from .registry import register

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "mse")


@dataclass
class VAEConfig(ModelConfig):
    name: str = "vae"
    latent_dim: int = 20
    hidden_dims: tuple[int, ...] = (400,)
    likelihood: str = "bernoulli"
    beta: float = 1.0             # weight of the KL term; 1.0 is the plain ELBO
    obs_sigma: float = 0.0        # gaussian only: fixed std per pixel; 0 learns one shared std
    kl_warmup: int = 0            # epochs over which the KL weight rises linearly from 0 to beta

    def __post_init__(self):
        super().__post_init__()
        if self.likelihood not in LIKELIHOODS:
            raise ConfigError(f"unknown likelihood {self.likelihood!r}; choose from {', '.join(LIKELIHOODS)}")
        if self.beta < 0:
            raise ConfigError(f"beta must be non-negative, got {self.beta}")
        if self.obs_sigma < 0:
            raise ConfigError(f"obs_sigma must be non-negative, got {self.obs_sigma}")
        if self.kl_warmup < 0:
            raise ConfigError(f"kl_warmup must be a non-negative number of epochs, got {self.kl_warmup}")


def kl_weight_at(epoch: int, beta: float, warmup: int) -> float:
    """The KL weight in ``epoch`` (1-based): beta * min(1, (epoch - 1) / warmup); beta if warmup = 0."""
    if warmup <= 0:
        return beta
    return beta * min(1.0, (epoch - 1) / warmup)


@register("vae")
class VAE(Autoencoder):
    """Gaussian encoder q(z|x), reparameterised code, standard normal prior; loss = -ELBO."""

    config_cls = VAEConfig
    can_sample = True

    def __init__(self, cfg: VAEConfig, n_condition: int = 0):
        """n_condition: size of extra features (a cvae's one-hot label) fed to both networks."""
        super().__init__(cfg)
        self.encoder = Encoder(cfg, 2 * cfg.latent_dim, n_extra=n_condition)
        self.decoder = Decoder(cfg, cfg.latent_dim + n_condition)
        if cfg.likelihood == "gaussian" and cfg.obs_sigma == 0:
            self.log_sigma = nn.Parameter(torch.zeros(()))
        else:
            self.register_buffer("log_sigma", torch.tensor(math.log(cfg.obs_sigma or 1.0)))
        self.kl_weight = cfg.beta     # moved by start_epoch during a KL warm-up; not saved

    # y (B,) holds labels; the VAE ignores them, label-conditional subclasses (cvae) use them.
    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(B, C, H, W) -> mu, logvar: (B, latent_dim) each."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, latent_dim) -> logits (B, C, H, W)."""
        return self.decoder(z)

    # The prior p(z | y): N(0, I) here, whatever y; a cvae may learn one per class.
    def kl(self, mu: Tensor, logvar: Tensor, y: Tensor | None = None) -> Tensor:
        """KL(q(z|x) || p(z)) per image, (B,), analytic."""
        return kl_std_normal(mu, logvar)

    def log_prior(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """log p(z) summed over latent dimensions, z (..., B, D) -> (..., B)."""
        return log_normal_diag(z)

    def draw_prior(self, n: int, generator: torch.Generator | None = None,
                   labels: Tensor | None = None) -> Tensor:
        """n codes z ~ p(z), (n, latent_dim)."""
        return torch.randn(n, self.cfg.latent_dim, generator=generator, device=self.log_sigma.device)

    def start_epoch(self, epoch: int) -> None:
        self.kl_weight = kl_weight_at(epoch, self.cfg.beta, self.cfg.kl_warmup)

    def mean_image(self, logits: Tensor) -> Tensor:
        """E[x | z] in [0, 1]: sigmoid(logits), or the continuous Bernoulli's mean."""
        if self.cfg.likelihood == "continuous-bernoulli":
            return continuous_bernoulli_mean(logits)
        return torch.sigmoid(logits)

    def reconstruction_nll(self, logits: Tensor, x: Tensor) -> Tensor:
        """The training reconstruction term per image, (B,)."""
        if self.cfg.likelihood == "bernoulli":
            return bernoulli_nll(logits, x)
        if self.cfg.likelihood == "continuous-bernoulli":
            return continuous_bernoulli_nll(logits, x)
        if self.cfg.likelihood == "gaussian":
            return gaussian_nll(torch.sigmoid(logits), x, self.log_sigma)
        return mse_per_pixel(torch.sigmoid(logits), x)

    def log_likelihood(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per image, (B,): a normalised density, so that bounds are true bounds
        (for ``mse``, the Gaussian with variance D/2 that the study's loss stands for)."""
        rec = self.reconstruction_nll(logits, x)
        if self.cfg.likelihood == "mse":
            rec = mse_as_gaussian_nll(rec, self.n_pixels)
        return -rec

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        mu, logvar = self.encode(x, y)
        z = reparameterize(mu, logvar)
        logits = self.decode(z, y)
        rec = self.reconstruction_nll(logits, x)             # (B,)
        kl = self.kl(mu, logvar, y)                          # (B,), analytic
        loss = (rec + self.kl_weight * kl).mean()
        return ModelOutput(loss=loss, logits=logits, z=z, terms={"rec": rec.mean(), "kl": kl.mean()})

    @property
    def hand_gradients(self) -> bool:
        """MLP networks, a ``bernoulli`` or ``mse`` likelihood, and VAE's own loss."""
        return self.cfg.likelihood in ("bernoulli", "mse") and handgrad.covers(
            self, VAE, ("forward", "encode", "decode", "kl", "reconstruction_nll"))

    def loss_and_gradients(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        """As ``forward``, gradients by hand. With d_z the gradient reaching the code and
        w = kl_weight / B: d_mu = d_z + w mu and d_logvar = (d_z eps sigma + w (sigma^2 - 1)) / 2."""
        encoder, decoder = handgrad.mlp_networks(self)
        n, pixels = len(x), x.flatten(1)                               # (B, D)
        stats, encoder_inputs = handgrad.mlp_forward(encoder, pixels)
        mu, logvar = stats.chunk(2, dim=-1)
        sigma = torch.exp(0.5 * logvar)
        eps = torch.randn_like(mu)
        z = mu + sigma * eps                                           # as losses.reparameterize
        logits, decoder_inputs = handgrad.mlp_forward(decoder, z)
        if self.cfg.likelihood == "bernoulli":                         # summed over pixels
            rec, d_logits = handgrad.bernoulli_nll_and_grad(logits, pixels, 1 / n)
        else:                                                          # mse: mean over pixels
            rec, d_logits = handgrad.mse_and_grad(logits, pixels, 1 / (n * self.n_pixels))
            rec = rec / self.n_pixels
        variance = sigma.square()
        kl = 0.5 * (mu.square() + variance - logvar - 1).sum()
        d_z = handgrad.mlp_backward(decoder, decoder_inputs, d_logits)
        w = self.kl_weight / n
        d_stats = torch.cat([d_z + w * mu, 0.5 * (d_z * eps * sigma + w * (variance - 1))], dim=1)
        handgrad.mlp_backward(encoder, encoder_inputs, d_stats, input_grad=False)
        rec, kl = rec / n, kl / n
        return ModelOutput(loss=rec + self.kl_weight * kl, logits=logits.view_as(x), z=z,
                           terms={"rec": rec, "kl": kl})

    def log_weights(self, x: Tensor, k: int = 1, y: Tensor | None = None, detach_q: bool = False
                    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Importance weights of k draws z_i ~ q(z|x) per image (Burda et al. 2016, eq. 8).

        log w_i = log p(x|z_i) + log p(z_i) - log q(z_i|x), every term a log density at z_i. Their
        mean is a Monte-Carlo ELBO (the KL estimated at the same z_i rather than analytic, so equal
        to the ELBO of ``metrics`` in expectation only); ``iwae_bound`` of them is the k-sample bound.
        Returns log_w and log p(x|z_i), (k, B) each, z (k, B, latent_dim) and logits (k, B, C, H, W).
        ``detach_q``: log q(z_i|x) with mu and logvar cut from the graph (the encoder's gradient
        then flows through z_i alone, as the DReG estimator needs); the values are unchanged.
        """
        mu, logvar = self.encode(x, y)
        z = reparameterize(mu.expand(k, *mu.shape), logvar.expand(k, *logvar.shape))   # (k, B, D)
        logits = self.decode(z.flatten(0, 1), None if y is None else y.repeat(k))
        log_px = self.log_likelihood(logits, x.expand(k, *x.shape).flatten(0, 1)).view(k, len(x))
        if detach_q:
            mu, logvar = mu.detach(), logvar.detach()
        log_w = log_px + self.log_prior(z, y) - log_normal_diag(z, mu, logvar)
        return log_w, log_px, z, logits.view(k, *x.shape)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """Mean images decoded from z ~ N(0, I), (n, C, H, W) in [0, 1]."""
        device = self.log_sigma.device
        labels = None if labels is None else labels.to(device)
        z = self.draw_prior(n, generator, labels)
        return self.mean_image(self.decode(z, labels))

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The posterior mean, (B, latent_dim)."""
        return self.encode(x, y)[0]

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The mean image decoded from the posterior mean, (B, C, H, W) in [0, 1]."""
        return self.mean_image(self.decode(self.embed(x, y), y))

    def decode_images(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.mean_image(self.decode(z, y))

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """recon_mse / recon_bce from the posterior mean; ``kl`` and ``elbo`` (nats per image,
        z drawn from q(z|x), analytic KL, beta = 1 whatever the training weight: the true bound)."""
        mu, logvar = self.encode(x, y)
        logits = self.decode(mu, y)
        out = {"recon_mse": mse_per_pixel(self.mean_image(logits), x),
               "recon_bce": bernoulli_nll(logits, x)}
        log_px = self.log_likelihood(self.decode(reparameterize(mu, logvar), y), x)
        kl = self.kl(mu, logvar, y)
        out.update(kl=kl, elbo=log_px - kl)
        return out

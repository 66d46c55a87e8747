"""Importance weighted autoencoder (Burda, Grosse & Salakhutdinov 2016, arXiv:1509.00519).

The VAE's networks, trained on the k-sample bound L_k = log (1/k) sum_i p(x, z_i) / q(z_i|x) with
z_i ~ q(z|x) (eq. 8) instead of the ELBO. L_1 is the single-sample Monte-Carlo ELBO, and E[L_k]
rises with k towards log p(x), so the encoder may be broader than a VAE's.

k = 1 against the VAE: this loss equals -mean(log w) of ``VAE.log_weights(x, 1)`` exactly for the
same weights and noise. The VAE's own training loss uses the analytic KL instead of the KL
estimated at z, so the two agree in expectation over z, not draw by draw.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses import dreg_surrogate, iwae_bound
from .base import ModelOutput
from .registry import register
from .vae import VAE, VAEConfig


ESTIMATORS = ("iwae", "dreg")


@dataclass
class IWAEConfig(VAEConfig):
    name: str = "iwae"
    k: int = 5                    # importance samples per image; 1 gives the Monte-Carlo ELBO
    estimator: str = "iwae"       # gradient of the bound: iwae (Burda et al.) | dreg (Tucker et al.)

    def __post_init__(self):
        super().__post_init__()
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"unknown estimator {self.estimator!r}; choose from {', '.join(ESTIMATORS)}")
        if self.k < 1:
            raise ConfigError(f"k (importance samples) must be at least 1, got {self.k}")
        if self.beta != 1 or self.kl_warmup:
            raise ConfigError("the iwae bound has no separate KL term to weight: "
                              f"beta must be 1 and kl_warmup 0, got {self.beta} and {self.kl_warmup}")


@register("iwae")
class IWAE(VAE):
    """The VAE trained on the k-sample importance weighted bound (Burda et al. 2016)."""

    config_cls = IWAEConfig

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        dreg = self.cfg.estimator == "dreg" and torch.is_grad_enabled()
        log_w, log_px, z, logits = self.log_weights(x, self.cfg.k, y, detach_q=dreg)   # (k, B) ...
        loss = -iwae_bound(log_w).mean()
        if dreg:
            loss = loss.detach() + dreg_surrogate(log_w, z)
        # Monte-Carlo parts over the k draws, for the logs: rec + kl = -mean(log w) >= loss
        terms = {"rec": -log_px.mean(), "kl": (log_px - log_w).mean()}
        return ModelOutput(loss=loss, logits=logits[0], z=z[0], terms=terms)

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """The VAE's metrics, plus ``iw_bound``: the k-sample bound in nats per image."""
        out = super().metrics(x, y)
        out["iw_bound"] = iwae_bound(self.log_weights(x, self.cfg.k, y)[0])
        return out

"""Deterministic deep autoencoder: MLP encoder to a code, mirrored MLP decoder, sigmoid output."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..losses import bernoulli_nll, mse_per_pixel
from .base import Autoencoder, ModelConfig, ModelOutput
from .blocks import Decoder, Encoder
from .registry import register

AE_LOSSES = ("mse", "bce")


@dataclass
class AEConfig(ModelConfig):
    name: str = "ae"
    latent_dim: int = 64
    loss: str = "mse"             # mse: per-pixel mean (the study's); bce: summed per image, nats

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in AE_LOSSES:
            raise ConfigError(f"unknown ae loss {self.loss!r}; choose from {', '.join(AE_LOSSES)}")


@register("ae")
class AE(Autoencoder):
    """The study's Part 1: ReLU hidden layers, a linear code, a sigmoid on the output."""

    config_cls = AEConfig

    def __init__(self, cfg: AEConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg, cfg.latent_dim)
        self.decoder = Decoder(cfg, cfg.latent_dim)

    def encode(self, x: Tensor) -> Tensor:      # (B, C, H, W) -> (B, latent_dim)
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:      # (B, latent_dim) -> logits (B, C, H, W)
        return self.decoder(z)

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        z = self.encode(x)
        logits = self.decode(z)
        if self.cfg.loss == "mse":
            rec = mse_per_pixel(torch.sigmoid(logits), x)
        else:
            rec = bernoulli_nll(logits, x)
        loss = rec.mean()
        return ModelOutput(loss=loss, logits=logits, z=z, terms={"rec": loss})

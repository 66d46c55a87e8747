"""What every family shares: ModelConfig, ModelOutput and the Autoencoder base class."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import bernoulli_nll, mse_per_pixel


@dataclass
class ModelConfig:
    name: str = ""
    input_shape: tuple[int, ...] = (1, 28, 28)   # (C, H, W); set from the data, never by hand
    latent_dim: int = 16
    hidden_dims: tuple[int, ...] = (512, 256)    # encoder widths; the decoder mirrors them

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ConfigError(f"latent size must be at least 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"hidden sizes must be at least 1, got {list(self.hidden_dims)}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be (C, H, W), got {list(self.input_shape)}")


@dataclass
class ModelOutput:
    loss: Tensor                  # scalar the optimiser minimises (batch mean)
    logits: Tensor                # decoder output before the sigmoid, (B, C, H, W)
    z: Tensor                     # the code used for decoding, (B, latent_dim)
    terms: dict[str, Tensor] = field(default_factory=dict)  # loss parts, batch means


class Autoencoder(nn.Module):
    """Base class: an encoder to a code, a decoder to logits, a loss in ``forward``."""

    config_cls = ModelConfig
    family = ""                   # set by @register
    can_sample = False

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_pixels = math.prod(cfg.input_shape)

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> ModelOutput:
        raise NotImplementedError

    def embed(self, x: Tensor) -> Tensor:
        """The deterministic code of x, (B, latent_dim)."""
        return self.encode(x)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean reconstruction in [0, 1], (B, C, H, W)."""
        return torch.sigmoid(self.decode(self.embed(x)))

    @torch.no_grad()
    def metrics(self, x: Tensor) -> dict[str, Tensor]:
        """Per-image evaluation measures, each (B,): recon_mse per pixel, recon_bce in nats."""
        logits = self.decode(self.embed(x))
        return {"recon_mse": mse_per_pixel(torch.sigmoid(logits), x),
                "recon_bce": bernoulli_nll(logits, x)}

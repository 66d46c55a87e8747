"""What every family shares: ModelConfig, ModelOutput and the Autoencoder base class."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import bernoulli_nll, mse_per_pixel
from .blocks import ARCHS


@dataclass
class ModelConfig:
    name: str = ""
    input_shape: tuple[int, ...] = (1, 28, 28)   # (C, H, W); set from the data, never by hand
    latent_dim: int = 16
    hidden_dims: tuple[int, ...] = (512, 256)    # fully connected widths; the decoder mirrors them
    arch: str = "mlp"                            # mlp | conv
    conv_channels: tuple[int, ...] = (32, 64)    # conv: channels of the stride-2 convolutions
    n_classes: int = 0                           # set from the data's labels (0: no labels)

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ConfigError(f"latent size must be at least 1, got {self.latent_dim}")
        if any(h < 1 for h in self.hidden_dims):
            raise ConfigError(f"hidden sizes must be at least 1, got {list(self.hidden_dims)}")
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ConfigError(f"input_shape must be (C, H, W), got {list(self.input_shape)}")
        if self.arch not in ARCHS:
            raise ConfigError(f"unknown arch {self.arch!r}; choose from {', '.join(ARCHS)}")
        if self.arch == "conv":
            if not self.conv_channels or min(self.conv_channels) < 1:
                raise ConfigError(f"conv_channels must be positive, got {list(self.conv_channels)}")
            # the image size is checked when the model is built (blocks.conv_grid): only then
            # does input_shape hold the data's size


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
    needs_labels = False          # True: forward/metrics use y, and training data must have labels
    partial_labels = False        # True: trains with some labels hidden (-1): data.labels applies
    codes_use_labels = False      # True: embed(x, y) encodes the label with the image (cvae, m2)
    elbo_uses_labels = False      # True: metrics' elbo bounds log p(x | y), not log p(x) (cvae)
    continuous_code = True        # False: only codebook vectors decode to trained-on inputs (vqvae)

    @classmethod
    def fit_config(cls, cfg: ModelConfig, n_train: int, n_labelled: int) -> None:
        """Fill in options that depend on the training data (n_train images, n_labelled of them
        with a label), before the model is built; nothing for most families."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.n_pixels = math.prod(cfg.input_shape)

    def encode(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        """The training loss on a batch; y (B,) holds labels where the family uses them."""
        raise NotImplementedError

    @property
    def hand_gradients(self) -> bool:
        """True where ``loss_and_gradients`` covers this model's configuration (aelab.handgrad)."""
        return False

    def loss_and_gradients(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        """``forward``'s loss, with every parameter's ``.grad`` set to its gradient by hand
        rather than by autograd; call under torch.no_grad(), only where ``hand_gradients``."""
        raise NotImplementedError(f"{self.family} has no hand-written gradients")

    def start_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (1-based): schedules such as a KL warm-up."""

    def after_training(self, batches) -> None:
        """Called once after the last epoch with the training batches: e.g. fit a prior on codes."""

    def epoch_stats(self) -> dict[str, float]:
        """Called after each training epoch: statistics to log (e.g. codebook usage), then reset."""
        return {}

    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """n new images in [0, 1], (n, C, H, W); only families with ``can_sample``."""
        raise NotImplementedError(f"{self.family} cannot sample")

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The deterministic code of x, (B, latent_dim); y (B,): labels, for families that use them."""
        return self.encode(x)

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """Mean reconstruction in [0, 1], (B, C, H, W); y (B,): labels, for families that use them."""
        return torch.sigmoid(self.decode(self.embed(x)))

    def decode_images(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Codes (B, latent_dim) -> mean images in [0, 1], (B, C, H, W); y (B,): labels, for
        families that use them (pictures of codes that no image was encoded to: aelab.pictures)."""
        return torch.sigmoid(self.decode(z))

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Per-image evaluation measures, each (B,): recon_mse per pixel, recon_bce in nats."""
        logits = self.decode(self.embed(x))
        return {"recon_mse": mse_per_pixel(torch.sigmoid(logits), x),
                "recon_bce": bernoulli_nll(logits, x)}

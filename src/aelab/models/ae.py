"""Deterministic deep autoencoder: an encoder to a code, a mirrored decoder, a sigmoid output; with
optional regularisers, usable together (all off by default, when the forward pass is the plain one):

- ``sparsity``: ``l1:WEIGHT``, an L1 penalty WEIGHT * sum_j |z_j| per image on the code (Goodfellow
  et al. 2016, Deep Learning, eq. 14.2); or ``kl:RHO:WEIGHT``, Ng's sparse autoencoder (CS294A notes,
  2011): the code passed to the decoder is sigmoid(linear code), and WEIGHT * sum_j KL(RHO || rho_hat_j)
  pushes each unit's mean activation over the batch, rho_hat_j, towards RHO;
- ``noise``: a denoising autoencoder (Vincent et al. 2008, 2010): in training only, the encoder sees
  a corrupted image (``gaussian:SIGMA``, ``mask:P``, ``saltpepper:P``, see ``aelab.corruption``)
  and the loss compares the output with the clean one;
- ``contractive``: a contractive autoencoder (Rifai et al. 2011): WEIGHT * ||dz/dx||_F^2 per image,
  the exact Jacobian of the code with respect to the encoder's input (``aelab.penalties``).

Weight decay is the trainer's ``train.weight_decay`` (Adam's L2 penalty), not a model option.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .. import handgrad
from ..corruption import corrupt, parse_corruption
from ..errors import ConfigError
from ..losses import bernoulli_nll, mse_per_pixel
from ..penalties import jacobian_frobenius, kl_sparsity, l1_code
from .base import Autoencoder, ModelConfig, ModelOutput
from .blocks import Decoder, Encoder
from .registry import register

AE_LOSSES = ("mse", "bce")


@dataclass
class AEConfig(ModelConfig):
    name: str = "ae"
    latent_dim: int = 64
    loss: str = "mse"             # mse: per-pixel mean (the study's); bce: summed per image, nats
    sparsity: str = ""            # "" | "l1:WEIGHT" | "kl:RHO:WEIGHT" (kl: sigmoid code)
    noise: str = ""               # "" | "gaussian:SIGMA" | "mask:P" | "saltpepper:P"; training only
    contractive: float = 0.0      # weight of ||dz/dx||_F^2 per image; 0 is off

    def __post_init__(self):
        super().__post_init__()
        if self.loss not in AE_LOSSES:
            raise ConfigError(f"unknown ae loss {self.loss!r}; choose from {', '.join(AE_LOSSES)}")
        if self.sparsity:
            parse_sparsity(self.sparsity)
        if self.noise:
            parse_corruption(self.noise)
        if not (math.isfinite(self.contractive) and self.contractive >= 0):
            raise ConfigError(f"contractive weight must be a non-negative number, got {self.contractive}")


def parse_sparsity(spec: str) -> tuple[str, float, float]:
    """(kind, rho, weight): ``"l1:1e-3"`` -> ``("l1", 0.0, 1e-3)``; ``"kl:0.05:3"`` -> ``("kl", 0.05, 3.0)``.

    A ConfigError naming the spec when it is not one of those forms or a number is out of range.
    """
    kind, *values = str(spec).strip().split(":")
    usage = "use l1:WEIGHT or kl:RHO:WEIGHT"
    if kind not in ("l1", "kl"):
        raise ConfigError(f"unknown sparsity {spec!r}; {usage}")
    try:
        numbers = [float(v) for v in values]
    except ValueError:
        numbers = []
    if len(numbers) != (1 if kind == "l1" else 2) or not all(map(math.isfinite, numbers)):
        raise ConfigError(f"sparsity {spec!r} needs {'l1:WEIGHT' if kind == 'l1' else 'kl:RHO:WEIGHT'}")
    rho, weight = (0.0, *numbers) if kind == "l1" else numbers
    if kind == "kl" and not 0 < rho < 1:
        raise ConfigError(f"sparsity {spec!r}: the target activation RHO must be in (0, 1)")
    if not weight > 0:
        raise ConfigError(f"sparsity {spec!r}: the weight must be positive")
    return kind, rho, weight


@register("ae")
class AE(Autoencoder):
    """Deterministic autoencoder (the study's Part 1); options: sparse, denoising, contractive."""

    config_cls = AEConfig

    def __init__(self, cfg: AEConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg, cfg.latent_dim)
        self.decoder = Decoder(cfg, cfg.latent_dim)
        self.sparsity = parse_sparsity(cfg.sparsity) if cfg.sparsity else None
        self.noise = parse_corruption(cfg.noise) if cfg.noise else None
        self.sigmoid_code = self.sparsity is not None and self.sparsity[0] == "kl"
        self.regularised = bool(self.sparsity or self.noise or cfg.contractive)

    def encode(self, x: Tensor) -> Tensor:      # (B, C, H, W) -> (B, latent_dim)
        if self.sigmoid_code:                   # kl sparsity: activations in (0, 1), as in Ng's notes
            return torch.sigmoid(self.encoder(x))
        return self.encoder(x)

    def decode(self, z: Tensor) -> Tensor:      # (B, latent_dim) -> logits (B, C, H, W)
        return self.decoder(z)

    def reconstruction_loss(self, logits: Tensor, x: Tensor) -> Tensor:
        """The reconstruction term per image, (B,): per-pixel MSE or BCE summed over pixels."""
        if self.cfg.loss == "mse":
            return mse_per_pixel(torch.sigmoid(logits), x)
        return bernoulli_nll(logits, x)

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        if self.regularised:
            return self._regularised_forward(x)
        z = self.encode(x)
        logits = self.decode(z)
        loss = self.reconstruction_loss(logits, x).mean()
        return ModelOutput(loss=loss, logits=logits, z=z, terms={"rec": loss})

    @property
    def hand_gradients(self) -> bool:
        """The plain MLP autoencoder (no regulariser) with AE's own loss."""
        return not self.regularised and handgrad.covers(
            self, AE, ("forward", "encode", "decode", "reconstruction_loss"))

    def loss_and_gradients(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        encoder, decoder = handgrad.mlp_networks(self)
        pixels = x.flatten(1)                                        # (B, D)
        z, encoder_inputs = handgrad.mlp_forward(encoder, pixels)
        logits, decoder_inputs = handgrad.mlp_forward(decoder, z)
        if self.cfg.loss == "mse":                                   # mean over pixels and images
            count = pixels.numel()
            total, d_logits = handgrad.mse_and_grad(logits, pixels, 1 / count)
        else:                                                        # summed over pixels, mean over images
            count = len(x)
            total, d_logits = handgrad.bernoulli_nll_and_grad(logits, pixels, 1 / count)
        d_z = handgrad.mlp_backward(decoder, decoder_inputs, d_logits)
        handgrad.mlp_backward(encoder, encoder_inputs, d_z, input_grad=False)
        loss = total / count
        return ModelOutput(loss=loss, logits=logits.view_as(x), z=z, terms={"rec": loss})

    def _regularised_forward(self, x: Tensor) -> ModelOutput:
        """loss = rec + w_s * sparsity + w_c * contractive; ``terms`` holds each part unweighted."""
        x_in = corrupt(x, self.noise) if self.noise and self.training else x
        code = self.encoder(x_in)                                   # (B, latent_dim), linear
        z = torch.sigmoid(code) if self.sigmoid_code else code
        logits = self.decode(z)
        rec = self.reconstruction_loss(logits, x).mean()            # against the clean image
        loss, terms = rec, {"rec": rec}
        if self.sparsity:
            kind, rho, weight = self.sparsity
            penalty = l1_code(z).mean() if kind == "l1" else kl_sparsity(code, rho)
            loss = loss + weight * penalty
            terms["sparsity"] = penalty
        if self.cfg.contractive:
            # at the input the encoder saw: the corrupted one when denoising too
            penalty = jacobian_frobenius(self.encode, x_in).mean()
            loss = loss + self.cfg.contractive * penalty
            terms["contractive"] = penalty
        return ModelOutput(loss=loss, logits=logits, z=z, terms=terms)

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """Adds ``code_mean_activation`` with sparsity: mean |z_j| over the code units per image
        (for kl the sigmoid activations, so the plain mean)."""
        out = super().metrics(x, y)
        if self.sparsity:
            out["code_mean_activation"] = self.embed(x).abs().mean(-1)
        return out

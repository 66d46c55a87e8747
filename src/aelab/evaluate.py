"""Evaluation: per-image metrics averaged over a split, and the training objective on a split.

Units: ``recon_mse`` is mean squared error per pixel (intensities in [0, 1]); ``recon_bce``,
``kl`` and ``elbo`` are nats per image; ``elbo`` is higher-is-better, with z drawn from q(z|x).
"""
from __future__ import annotations

import torch

from .data import Batches, Split
from .models import Autoencoder

UNITS = {
    "recon_mse": "mean squared error per pixel, intensities in [0, 1], reconstruction from the code mean",
    "recon_bce": "binary cross-entropy in nats per image, reconstruction from the code mean",
    "kl": "KL(q(z|x) || N(0, I)) in nats per image",
    "elbo": "evidence lower bound in nats per image (higher is better), z drawn from q(z|x)",
}


@torch.no_grad()
def evaluate(model: Autoencoder, split: Split, batch_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of each of ``model.metrics`` over the whole split. Seeded, and leaves the global RNG alone."""
    model.eval()
    sums: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=_cuda_devices(split)):
        torch.manual_seed(seed)
        for x, y in Batches(split, batch_size):
            for name, values in model.metrics(x, y).items():
                sums[name] = sums.get(name, 0) + values.double().sum()
    n = len(split)
    return {name: float(total) / n for name, total in sums.items()}


@torch.no_grad()
def mean_loss(model: Autoencoder, batches: Batches) -> dict[str, float]:
    """The training objective and its parts averaged per image (``loss``, ``rec``, ``kl``...)."""
    model.eval()
    sums, n = {}, 0
    for x, y in batches:
        out = model(x, y)
        for name, value in {"loss": out.loss, **out.terms}.items():
            sums[name] = sums.get(name, 0) + value.detach().double() * len(x)
        n += len(x)
    return {name: float(total) / max(n, 1) for name, total in sums.items()}


def _cuda_devices(split: Split) -> list:
    device = split.images.device
    return [device] if device.type == "cuda" else []

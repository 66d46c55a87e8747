"""Evaluation: per-image metrics averaged over a split, and the training objective on a split.

Units: ``recon_mse`` is mean squared error per pixel (intensities in [0, 1]); ``recon_bce``,
``kl`` and ``elbo`` are nats per image; ``elbo`` is higher-is-better, with z drawn from q(z|x).
"""
from __future__ import annotations

import torch

from .data import Batches, Split
from .distributed import all_reduce_sum, shard
from .models import Autoencoder

UNITS = {
    "recon_mse": "mean squared error per pixel, intensities in [0, 1], reconstruction from the code mean",
    "recon_bce": "binary cross-entropy in nats per image, reconstruction from the code mean",
    "kl": "KL(q(z|x) || N(0, I)) in nats per image",
    "elbo": "evidence lower bound in nats per image (higher is better), z drawn from q(z|x)",
    "code_mean_activation": "mean code activation per image: mean |z| (l1 sparsity) or mean "
                            "sigmoid unit activation (kl sparsity)",
    "iw_bound": "importance weighted bound of k samples (Burda et al. 2016) in nats per image, "
                "higher is better; at least the elbo in expectation",
}


@torch.no_grad()
def evaluate(model: Autoencoder, split: Split, batch_size: int = 1000, seed: int = 0) -> dict[str, float]:
    """Mean of each of ``model.metrics`` over the whole split. Seeded, and leaves the global RNG alone.

    Under torchrun each process takes its own part of the split and the sums are added up, so
    every image counts exactly once.
    """
    model.eval()
    rank, world = _rank_world()
    sums: dict[str, torch.Tensor] = {}
    with torch.random.fork_rng(devices=_cuda_devices(split)):
        torch.manual_seed(seed + rank)
        for x, y in Batches(split.part(rank, world), batch_size):
            for name, values in model.metrics(x, y).items():
                sums[name] = sums.get(name, 0) + values.double().sum()
        first = next(iter(Batches(split, 1)))         # the metric names, even for an empty part
        names = list(sums) or list(model.metrics(*first))
    totals = torch.stack([torch.as_tensor(sums.get(k, 0.0), dtype=torch.float64,
                                          device=split.images.device) for k in names])
    all_reduce_sum(totals)
    return {name: float(total) / len(split) for name, total in zip(names, totals)}


@torch.no_grad()
def mean_loss(model: Autoencoder, batches: Batches) -> dict[str, float]:
    """The training objective and its parts averaged per image (``loss``, ``rec``, ``kl``...),
    added up over every process."""
    model.eval()
    names, total = None, None
    for x, y in batches:
        out = model(x, y)
        parts = torch.stack([out.loss.detach(), *(t.detach() for t in out.terms.values())]).double()
        names = names or ["loss", *out.terms]
        total = parts * len(x) if total is None else total + parts * len(x)
    if total is None:
        return {}
    counted = torch.cat([total, total.new_tensor([batches_images(batches)])])
    all_reduce_sum(counted)
    return {name: float(v) / max(float(counted[-1]), 1.0) for name, v in zip(names, counted[:-1])}


def batches_images(batches: Batches) -> int:
    """How many images this process's batches hold."""
    n = len(batches.split)
    usable = n - n % batches.world
    return len(range(usable)[shard(usable, batches.rank, batches.world)]) if batches.world > 1 else n


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cuda_devices(split: Split) -> list:
    device = split.images.device
    return [device] if device.type == "cuda" else []

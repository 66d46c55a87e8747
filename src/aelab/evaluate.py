"""Evaluation: per-image metrics averaged over a split, and the training objective on a split.

Units: ``recon_mse`` is mean squared error per pixel (intensities in [0, 1]); ``recon_bce``,
``kl`` and ``elbo`` are nats per image; ``elbo`` is higher-is-better, with z drawn from q(z|x).

Likelihood (``iw_nll``): the importance weighted estimate of -log p(x) with K samples from q(z|x)
(Burda, Grosse & Salakhutdinov 2016, arXiv:1509.00519, eq. 8), in nats per image, and the same in
bits per pixel value. K in the thousands fits in memory because the K draws are taken ``chunk`` at
a time and folded into a running log-sum-exp (``logsumexp_chunks``). ``binarize_fixed`` gives the
seeded binarisation of a split used to compare with the binarised-MNIST literature.
"""
from __future__ import annotations

import math
import sys
from contextlib import nullcontext
from typing import Iterable

import torch

from .data import Batches, Split
from .distributed import all_reduce_sum
from .errors import ConfigError
from .models import Autoencoder

IW_CHUNK_FLOATS = 2 ** 24     # default chunk: about this many floats per (chunk, B, pixels) tensor

UNITS = {
    "recon_mse": "mean squared error per pixel, intensities in [0, 1], reconstruction from the code mean",
    "recon_bce": "binary cross-entropy in nats per image, reconstruction from the code mean",
    "kl": "KL(q(z|x) || p(z)) in nats per image; p(z) = N(0, I), or p(z|y) for a cvae with a learned prior",
    "elbo": "evidence lower bound in nats per image (higher is better), z drawn from q(z|x)",
    "class_error": "fraction of images whose most likely class under the model's classifier "
                   "q(y|x) is not their label (0 to 1; m2, m1m2)",
    "code_mean_activation": "mean code activation per image: mean |z| (l1 sparsity) or mean "
                            "sigmoid unit activation (kl sparsity)",
    "iw_bound": "importance weighted bound of k samples (Burda et al. 2016) in nats per image, "
                "higher is better; at least the elbo in expectation",
    "nll_iw": "-log p(x) estimated with iw_samples importance samples z ~ q(z|x) (Burda et al. "
              "2016) in nats per image, lower is better; an upper bound in expectation, at most "
              "-elbo and falling with iw_samples; the model's own likelihood on [0, 1] intensities "
              "(a Bernoulli is a true likelihood only on binary images: use --binarize fixed)",
    "bits_per_dim": "nll_iw / (D ln 2), D = pixels x channels: bits per pixel value under the "
                    "model's own likelihood on [0, 1] intensities, not a discrete 8-bit "
                    "likelihood, so not comparable with 8-bit bits/dim figures",
    # eval --fid (sample_quality.py): samples against the split, in a cached classifier's features
    "frechet_distance": "Fréchet distance (feature units^2, lower is better, 0 for identical "
                        "statistics) between Gaussians fitted to the 128-d penultimate features "
                        "of aelab's cached classifier for this dataset on the samples and on the "
                        "split's images; comparable between models on one dataset only",
    "classifier_accuracy": "fraction of the dataset's test images that classifier labels "
                           "correctly (0 to 1): how far its feature space can be trusted",
    "sample_class_entropy": "mean over samples of the entropy of the classifier's p(y|sample) "
                            "in nats (0: every sample looks like one class; log K at most)",
    "sample_marginal_entropy": "entropy of the classifier's mean p(y|sample) over the samples in "
                               "nats: class coverage (log K when spread evenly over K classes)",
    "sample_label_accuracy": "fraction of a label-conditional model's samples (classes drawn in "
                             "turn) that the classifier labels as the class asked for",
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
    names, total, n = None, None, 0
    for x, y in batches:
        out = model(x, y)
        parts = torch.stack([out.loss.detach(), *(t.detach() for t in out.terms.values())]).double()
        names = names or ["loss", *out.terms]
        total = parts * len(x) if total is None else total + parts * len(x)
        n += len(x)
    if total is None:
        return {}
    counted = torch.cat([total, total.new_tensor([n])])
    all_reduce_sum(counted)
    return {name: float(v) / max(float(counted[-1]), 1.0) for name, v in zip(names, counted[:-1])}


def _rank_world() -> tuple[int, int]:
    import torch.distributed as dist
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cuda_devices(split: Split) -> list:
    device = split.images.device
    return [device] if device.type == "cuda" else []


# ---------------------------------------------------------------- likelihood


def require_likelihood(model: Autoencoder) -> None:
    """Raise ConfigError unless the model has a p(x) to estimate (a ``log_weights`` method)."""
    if not callable(getattr(model, "log_weights", None)):
        name = model.family or type(model).__name__
        raise ConfigError(f"a {name} has no likelihood to estimate; only the vae, iwae and "
                          "cvae families have one")


def logsumexp_chunks(chunks: Iterable[torch.Tensor]) -> torch.Tensor:
    """log sum_i exp(a_i) over the rows of a stream of (c, B) chunks, (B,) in float64.

    Each chunk's max-shifted ``logsumexp`` is folded into the running total with ``logaddexp``
    (also max-shifted), so only one chunk is held at a time and log weights near -1e4 or +1e4
    neither underflow to -inf nor overflow to inf, as exp() of them would.
    """
    total = None
    for a in chunks:
        part = torch.logsumexp(a.double(), dim=0)
        total = part if total is None else torch.logaddexp(total, part)
    if total is None:
        raise ValueError("logsumexp_chunks needs at least one chunk")
    return total


@torch.no_grad()
def iw_nll(model: Autoencoder, split: Split, k: int, batch_size: int = 1000,
           chunk: int | None = None, seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Importance weighted estimate of -log p(x) over a split (Burda et al. 2016, eq. 8).

    Per image -log p(x) ~= -log (1/k) sum_i w_i, w_i = p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x).
    An upper bound on -log p(x) in expectation; k = 1 is the single-sample Monte-Carlo -ELBO of
    ``model.log_weights``. Images go ``batch_size`` at a time and the k draws ``chunk`` at a time
    (default: about ``IW_CHUNK_FLOATS`` floats per (chunk, batch, pixels) tensor), so memory does
    not grow with k. Seeded, and leaves the global RNG alone; under torchrun each process takes its
    part of the split and the sums are added up.

    Args:
        model: a family with ``log_weights`` (vae, iwae, cvae); others raise ConfigError.
        split: the images (and labels, for a cvae); binarise them first if wanted.
        k: importance samples per image.
        progress: show a progress bar on stderr.
    Returns:
        ``nll_iw`` in nats per image and ``bits_per_dim`` = nll_iw / (D ln 2), D pixel values.
    """
    require_likelihood(model)
    if k < 1 or batch_size < 1 or (chunk is not None and chunk < 1):
        raise ConfigError(f"k, batch_size and chunk must be at least 1, got {k}, {batch_size}, "
                          f"{chunk}")
    model.eval()
    rank, world = _rank_world()
    part = split.part(rank, world)
    images_per_batch = max(1, min(batch_size, len(part)))
    chunk = min(k, chunk or max(1, IW_CHUNK_FLOATS // (images_per_batch * model.n_pixels)))
    sizes = [min(chunk, k - start) for start in range(0, k, chunk)]      # add up to k
    batches = Batches(part, batch_size)
    bar = _progress_bar(len(batches) * len(sizes), f"nll_iw k={k}") if progress else nullcontext()
    total = torch.zeros((), dtype=torch.float64, device=split.images.device)
    with bar, torch.random.fork_rng(devices=_cuda_devices(split)):
        torch.manual_seed(seed + rank)
        for x, y in batches:
            log_w = (_ticked(model.log_weights(x, c, y)[0], bar) for c in sizes)  # (c, B) each
            total += (logsumexp_chunks(log_w) - math.log(k)).sum()
    all_reduce_sum(total)
    nll = -float(total) / len(split)
    return {"nll_iw": nll, "bits_per_dim": nll / (model.n_pixels * math.log(2))}


def binarize_fixed(split: Split, seed: int = 0) -> Split:
    """The split with every pixel drawn once from a Bernoulli of its intensity, as 0 or 255.

    The draw uses a CPU generator seeded by ``seed``, so every model, batch size and device sees
    the same binary images for a seed (as in the fixed binarisations of the MNIST literature).
    """
    gen = torch.Generator().manual_seed(seed)
    bits = torch.bernoulli(split.images.cpu().float().div_(255), generator=gen)
    return Split(bits.to(torch.uint8).mul_(255).to(split.images.device), split.labels)


def _ticked(value, bar):
    """value, after moving the progress bar (if any) one step."""
    if not isinstance(bar, nullcontext):
        bar.update(1)
    return value


def _progress_bar(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, leave=False, unit="chunk", file=sys.stderr)

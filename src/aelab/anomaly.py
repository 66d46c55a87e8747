"""Anomaly detection with a trained model: per-image scores, their AUROC, a CSV and the top-k grid.

Scores are higher-is-more-anomalous:
- ``recon``: squared error per pixel between an image and ``model.reconstruct(x)``, mean over pixels
  (intensities in [0, 1]); deterministic, every family has it;
- ``elbo``: -ELBO in nats per image from ``model.metrics(x)['elbo']`` (z drawn from q(z|x), so seeded);
  only for families that report an ELBO (vae, iwae).

The usual recipe (e.g. An & Cho 2015): train on every class but one, then score the test split; the
AUROC says how well the score ranks the left-out class above the others (0.5: no better than chance).
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .data import Batches, Split
from .errors import ConfigError, DataError
from .models import Autoencoder
from .runs import atomic_write

SCORES = ("recon", "elbo")
SCORE_UNITS = {
    "recon": "squared error per pixel, mean over the pixels, intensities in [0, 1], reconstruction "
             "from the code mean; higher is more anomalous",
    "elbo": "-ELBO in nats per image, z drawn from q(z|x); higher is more anomalous",
}


@torch.no_grad()
def anomaly_scores(model: Autoencoder, split: Split, kind: str = "recon", batch_size: int = 1000,
                   seed: int = 0) -> Tensor:
    """One score per image of ``split``, in its order: float64 (N,) on the CPU.

    The labels are never shown to the model (a label-conditional family infers its own).
    Seeded (the ELBO's z draws) and leaves the global RNG alone.
    """
    if kind not in SCORES:
        raise ConfigError(f"unknown anomaly score {kind!r}; choose from {', '.join(SCORES)}")
    model.eval()
    scores = []
    devices = [split.images.device] if split.images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for x, _ in Batches(split, batch_size):
            scores.append(_score_batch(model, x, kind).double().cpu())
    return torch.cat(scores) if scores else torch.zeros(0, dtype=torch.float64)


def _score_batch(model: Autoencoder, x: Tensor, kind: str) -> Tensor:
    """(B, C, H, W) in [0, 1] -> (B,) scores."""
    if kind == "recon":
        return (model.reconstruct(x) - x).square().flatten(1).mean(1)
    if model.elbo_uses_labels:
        raise ConfigError(f"--score elbo would need the label of every image for a {model.family}; "
                          "use --score recon")
    metrics = model.metrics(x)
    if "elbo" not in metrics:
        raise ConfigError(f"a {model.family} reports no ELBO; use --score recon (or train a vae)")
    return -metrics["elbo"]


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for telling ``positives`` (bools) from the rest.

    The Mann-Whitney form: the chance that a random positive scores above a random negative, ties
    counting one half (average ranks), as sklearn.metrics.roc_auc_score. 1.0: every positive above
    every negative; 0.0: every one below.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    n_pos = int(positives.sum())
    n_neg = len(positives) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise DataError(f"AUROC needs positives and negatives; got {n_pos} and {n_neg}")
    return float((_average_ranks(scores)[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``, tied values sharing the mean of their ranks."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])  # first of each tie
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + ends + 1) / 2                # mean of the 1-based ranks start+1 .. end
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def top_k(scores: Tensor, k: int) -> Tensor:
    """Indices of the k highest scores, highest first (ties: the earlier image first), (min(k, N),)."""
    order = torch.sort(scores, descending=True, stable=True).indices
    return order[:k]


def write_scores_csv(path: str | Path, scores: Tensor, labels: Tensor | None) -> None:
    """A CSV with columns index,label,score, one row per image; label empty when unknown."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["index", "label", "score"])
    labels = None if labels is None else labels.tolist()
    for i, score in enumerate(scores.tolist()):
        writer.writerow([i, "" if labels is None else labels[i], repr(score)])
    atomic_write(path, buf.getvalue())

"""Pictures of the code space: the codes behind ``aelab interpolate``, ``traverse`` and ``latent-map``.

Codes are ``model.embed`` (the posterior mean for the VAE family, the code itself for an ``ae``), and
every code is turned back into an image by ``model.decode_images`` (mean images in [0, 1]). A
``vqvae`` is refused here: its decoder was trained only on codebook vectors, so codes between them
(an interpolation, a traversal, a grid) show nothing the model learned.

Tensors: codes (N, D), images (N, C, H, W), labels (N,) int64 or None.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError

PRIOR_QUANTILES = (0.05, 0.95)   # the manifold grid of a VAE: Kingma & Welling 2014, figure 4


def check_continuous(model, command: str) -> None:
    """A one-line error for a family whose decoder only knows a discrete set of codes."""
    if not model.continuous_code:
        raise ConfigError(f"{command} decodes codes that no image was encoded to, and this "
                          f"{model.family} decodes only its codebook vectors; use an ae or a vae")


def has_normal_prior(model) -> bool:
    """The VAE family: codes drawn from N(0, I), so 0 is the prior mean and quantiles make sense."""
    return model.can_sample and model.continuous_code


def condition(model, label: int | None, default: int | None, n: int) -> Tensor | None:
    """The labels (n,) to decode n codes with: ``label`` (--label), else ``default`` (an image's
    class, or 0), for a label-conditional model; None for the others, which refuse --label."""
    if not model.needs_labels:
        if label is not None:
            raise ConfigError(f"this {model.family} is not label-conditional, so --label has no "
                              "meaning; train a cvae")
        return None
    n_classes = model.cfg.n_classes
    if label is not None and not 0 <= label < n_classes:
        raise ConfigError(f"--label {label} is outside this {model.family}'s classes "
                          f"0..{n_classes - 1}")
    chosen = label if label is not None else (default or 0)
    return torch.full((n,), int(chosen), dtype=torch.long)


def check_index(split, index: int, flag: str, split_name: str) -> int:
    if not 0 <= index < len(split):
        raise ConfigError(f"{flag} {index} is outside the {split_name} split's images "
                          f"0..{len(split) - 1}")
    return index


def images_at(split, indices: list[int]) -> tuple[Tensor, Tensor | None]:
    """The split's images at ``indices`` as floats in [0, 1] and their labels (or None), on the CPU."""
    x = split.images[indices].float().div(255).cpu()
    return x, None if split.labels is None else split.labels[indices].cpu()


@torch.no_grad()
def embed(model, images: Tensor, labels: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """Codes of images (N, C, H, W) in [0, 1], in batches: (N, D) on the CPU."""
    device = _device(model)
    out = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        out.append(model.embed(x, y).flatten(1).cpu())
    return torch.cat(out)


@torch.no_grad()
def decode(model, codes: Tensor, labels: Tensor | None = None, batch_size: int = 1000) -> Tensor:
    """Mean images (N, C, H, W) in [0, 1] of codes (N, D), on the CPU."""
    device = _device(model)
    out = []
    for start in range(0, len(codes), batch_size):
        z = codes[start:start + batch_size].to(device)
        y = None if labels is None else labels[start:start + batch_size].to(device)
        out.append(model.decode_images(z, y).cpu())
    return torch.cat(out)


def lerp(z0: Tensor, z1: Tensor, n: int) -> Tensor:
    """n points on the straight line from z0 to z1 (D,), both included: (n, D)."""
    t = torch.linspace(0, 1, n, dtype=z0.dtype).unsqueeze(1)
    return (1 - t) * z0 + t * z1


def slerp(z0: Tensor, z1: Tensor, n: int) -> Tensor:
    """n points on the spherical path from z0 to z1 (D,), both included: (n, D), White's slerp
    (2016, "Sampling generative networks"): sin((1-t) w) / sin w * z0 + sin(t w) / sin w * z1, w the
    angle between them. Under a Gaussian prior in many dimensions the middle of a straight line has
    a norm the prior seldom draws; this path keeps it near the ends' norms."""
    t = torch.linspace(0, 1, n, dtype=z0.dtype).unsqueeze(1)
    n0, n1 = z0.norm(), z1.norm()
    if n0 == 0 or n1 == 0:
        return lerp(z0, z1, n)
    omega = torch.arccos(torch.clamp(torch.dot(z0 / n0, z1 / n1), -1, 1))
    if omega < 1e-6 or omega > torch.pi - 1e-6:     # same or opposite directions: no single arc
        return lerp(z0, z1, n)
    points = (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)
    points[0], points[-1] = z0, z1               # exact ends, whatever the rounding
    return points


def traversal(base: Tensor, dims: list[int], values: Tensor) -> Tensor:
    """One row per dimension d in ``dims``: base (D,) with values (S,) added to its d-th entry,
    every other entry left as in base. Returns (len(dims) * S, D), row by row."""
    rows = base.repeat(len(dims), len(values), 1)                 # (R, S, D)
    for r, d in enumerate(dims):
        rows[r, :, d] += values.to(base.dtype)
    return rows.flatten(0, 1)


def prior_quantiles(n: int, low: float = PRIOR_QUANTILES[0], high: float = PRIOR_QUANTILES[1]
                    ) -> Tensor:
    """n values of z under N(0, 1) at evenly spaced probabilities low..high: the inverse CDF."""
    return torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(low, high, n))


def manifold(xs: Tensor, ys: Tensor) -> Tensor:
    """The 2-D codes of a grid, row by row from the top: z[1] = ys descending down the rows, z[0]
    = xs ascending along each row, as on a plot. Returns (len(ys) * len(xs), 2)."""
    rows = ys.flip(0)
    return torch.stack([xs.repeat(len(rows)), rows.repeat_interleave(len(xs))], dim=1)


def code_range(codes: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """n evenly spaced values over the range of each of the two columns of codes (N, 2)."""
    low, high = codes.min(0).values, codes.max(0).values
    return torch.linspace(low[0], high[0], n), torch.linspace(low[1], high[1], n)


def pca_2d(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes (N, D) projected on their first two principal axes: (N, 2) and the fractions of the
    variance those axes explain, (2,)."""
    from sklearn.decomposition import PCA
    pca = PCA(n_components=2)
    return pca.fit_transform(codes), pca.explained_variance_ratio_


def tsne_2d(codes: np.ndarray, seed: int = 0) -> np.ndarray:
    """t-SNE embedding (van der Maaten & Hinton 2008) of codes (N, D): (N, 2). The perplexity is
    scikit-learn's 30, lowered to (N - 1) / 3 for few points (it must stay below N)."""
    from sklearn.manifold import TSNE
    perplexity = min(30.0, (len(codes) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(codes)


def describe(run: str, cfg, split_name: str) -> str:
    """'run NAME · FAMILY · DATA (SPLIT split)': the second line of every picture's title."""
    data = Path(cfg.data.data_dir).name if cfg.data.data_dir else cfg.data.name
    return f"run {Path(run).resolve().name} · {cfg.model.name} · {data} ({split_name} split)"


def _device(model) -> torch.device:
    return next(model.parameters()).device

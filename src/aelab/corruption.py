"""Input corruption for denoising autoencoders (Vincent et al. 2008, ICML, "Extracting and Composing
Robust Features with Denoising Autoencoders"; Vincent et al. 2010, JMLR 11, "Stacked Denoising
Autoencoders", section 4.3, the corruption processes q_D(x~ | x)).

A spec is ``KIND:VALUE``; images are in [0, 1] and stay there:
- ``gaussian:SIGMA``: additive isotropic Gaussian noise x~ = x + N(0, SIGMA^2), clamped to [0, 1];
- ``mask:P``: masking noise, each pixel independently set to 0 with probability P;
- ``saltpepper:P``: each pixel independently, with probability P, set to 0 or 1 (equal chance).

Vincent et al. destroy a fixed fraction P of the pixels of each image; here every pixel is hit
independently, so the fraction per image is P on average (Binomial), which needs no sort per image.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .errors import ConfigError

CORRUPTIONS = ("gaussian", "mask", "saltpepper")
_USAGE = "gaussian:SIGMA, mask:P or saltpepper:P"


def parse_corruption(spec: str) -> tuple[str, float]:
    """``"mask:0.3"`` -> ``("mask", 0.3)``; a ConfigError naming the spec when it is not valid."""
    kind, sep, text = str(spec).strip().partition(":")
    if kind not in CORRUPTIONS:
        raise ConfigError(f"unknown noise {spec!r}; use {_USAGE}")
    try:
        value = float(text) if sep else math.nan
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ConfigError(f"noise {spec!r} needs a number: {kind}:{'SIGMA' if kind == 'gaussian' else 'P'}")
    if kind == "gaussian" and not value > 0:
        raise ConfigError(f"noise {spec!r}: the standard deviation must be positive")
    if kind != "gaussian" and not 0 < value < 1:
        raise ConfigError(f"noise {spec!r}: the probability must be in (0, 1)")
    return kind, value


def corrupt(x: Tensor, spec: str | tuple[str, float], generator: torch.Generator | None = None) -> Tensor:
    """A corrupted copy of the images x (any shape, values in [0, 1]); x itself is left alone.

    Args:
        x: images, e.g. (B, C, H, W), intensities in [0, 1].
        spec: ``"gaussian:SIGMA"``, ``"mask:P"``, ``"saltpepper:P"`` or the pair ``parse_corruption`` gives.
        generator: the random source (on x's device); None uses PyTorch's global one.

    Returns:
        x~ of x's shape and dtype, in [0, 1].
    """
    kind, value = parse_corruption(spec) if isinstance(spec, str) else spec
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (x + value * noise).clamp_(0, 1)
    u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    if kind == "mask":
        return x.masked_fill(u < value, 0)
    # saltpepper: one uniform draw decides both: u < P/2 -> 1 (salt), P/2 <= u < P -> 0 (pepper)
    return torch.where(u < value, (u < value / 2).to(x.dtype), x)

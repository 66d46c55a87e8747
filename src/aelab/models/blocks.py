"""Network bodies shared by every family: an encoder from images to features and a decoder from
features to logits, as an MLP (``arch: mlp``) or a convolutional network (``arch: conv``)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError

ARCHS = ("mlp", "conv")


def mlp(n_in: int, hidden: tuple[int, ...], n_out: int) -> nn.Sequential:
    """Linear layers with ReLU between them and no activation after the last one."""
    sizes = (n_in, *hidden, n_out)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def conv_grid(input_shape, channels) -> tuple[int, int, int]:
    """(channels, height, width) of the last convolution's output: each layer halves H and W."""
    _, h, w = input_shape
    scale = 2 ** len(channels)
    if h % scale or w % scale:
        raise ConfigError(f"conv arch with {len(channels)} stride-2 layers needs image sides "
                          f"divisible by {scale}, got {h}x{w}")
    return channels[-1], h // scale, w // scale


def conv_stack(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """Stride-2 4x4 convolutions, each followed by ReLU: (B, C, H, W) -> (B, channels[-1], H', W'),
    with H' and W' as ``conv_grid`` gives them. The spatial features before any flattening."""
    layers: list[nn.Module] = []
    for c_out in channels:
        layers += [nn.Conv2d(in_channels, c_out, 4, stride=2, padding=1), nn.ReLU(inplace=True)]
        in_channels = c_out
    return nn.Sequential(*layers)


def deconv_stack(channels: tuple[int, ...], out_channels: int) -> nn.Sequential:
    """The mirror of ``conv_stack(out_channels, channels)``: stride-2 4x4 transposed convolutions
    from channels[-1] to out_channels, ReLU between them, none after the last (logits)."""
    sizes = (*reversed(channels), out_channels)
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """Images (B, C, H, W) [+ extra features (B, n_extra)] -> (B, n_out).

    mlp: flatten, then ``hidden_dims``. conv: stride-2 4x4 convolutions with ReLU (``conv_channels``),
    flatten, then ``hidden_dims``. Extra features (e.g. a one-hot label) join after flattening.
    """

    def __init__(self, cfg, n_out: int, n_extra: int = 0):
        super().__init__()
        if cfg.arch == "conv":
            self.features = nn.Sequential(*conv_stack(cfg.input_shape[0], cfg.conv_channels),
                                          nn.Flatten())
            n_features = math.prod(conv_grid(cfg.input_shape, cfg.conv_channels))
        else:
            self.features = nn.Flatten()
            n_features = math.prod(cfg.input_shape)
        self.head = mlp(n_features + n_extra, cfg.hidden_dims, n_out)

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        h = self.features(x)
        if extra is not None:
            h = torch.cat([h, extra], dim=1)
        return self.head(h)


class Decoder(nn.Module):
    """(B, n_in) -> logits (B, C, H, W), mirroring the Encoder of the same config."""

    def __init__(self, cfg, n_in: int):
        super().__init__()
        hidden = tuple(reversed(cfg.hidden_dims))
        if cfg.arch == "conv":
            grid = conv_grid(cfg.input_shape, cfg.conv_channels)
            self.net = nn.Sequential(mlp(n_in, hidden, math.prod(grid)), nn.ReLU(inplace=True),
                                     nn.Unflatten(1, grid),
                                     *deconv_stack(cfg.conv_channels, cfg.input_shape[0]))
        else:
            self.net = nn.Sequential(mlp(n_in, hidden, math.prod(cfg.input_shape)),
                                     nn.Unflatten(1, tuple(cfg.input_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)

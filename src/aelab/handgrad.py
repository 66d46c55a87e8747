"""Gradients written out by hand for the plain fully connected autoencoders.

Why: on a CPU a training step of ``vae-mnist`` spends about a fifth of its time outside the
matrix products, recording the autograd graph and running small separate kernels (a sigmoid, a
mask, a sum, each a pass over memory). The backward pass of an MLP is short enough to write down:
for a layer h_out = h_in W^T + b with output gradient g, dW = g^T h_in, db = sum_rows g and
dh_in = g W, then ReLU's mask. Done here with the products written straight into each parameter's
``.grad``, the loss and gradients are those of autograd (same operations, to float rounding:
``tests/test_handgrad.py`` checks), and an epoch takes 15 to 20 % less time (bench/RESULTS.md).

The model families use these pieces in ``loss_and_gradients`` (models/ae.py, models/vae.py) and
say by ``hand_gradients`` whether their configuration is covered; the trainer falls back to
autograd wherever it is not (other layers, penalties, DDP, autocast, torch.compile).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def covers(model: nn.Module, cls: type, methods: tuple[str, ...]) -> bool:
    """True when the hand-written gradients of ``cls`` apply to ``model``: an ``arch: mlp`` model
    whose networks are plain MLPs (``mlp_networks``), and whose class takes each of ``methods``
    from ``cls`` unchanged (a subclass that redefines one computes another loss)."""
    return (model.cfg.arch == "mlp"
            and all(getattr(type(model), name) is getattr(cls, name) for name in methods)
            and all(is_mlp(seq) for seq in mlp_networks(model)))


def mlp_networks(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """The encoder's and the decoder's MLP of an ``arch: mlp`` model (blocks.Encoder, Decoder)."""
    return model.encoder.head, model.decoder.net[0]


def is_mlp(seq: nn.Module) -> bool:
    """True for a Sequential of Linear layers with a ReLU between each two (``blocks.mlp``)."""
    if not isinstance(seq, nn.Sequential) or len(seq) % 2 == 0:
        return False
    return all(isinstance(m, nn.Linear) if i % 2 == 0 else type(m) is nn.ReLU
               for i, m in enumerate(seq))


def mlp_forward(seq: nn.Sequential, h: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Run ``seq`` on h (B, n_in); returns the output (B, n_out) and each Linear's input, which
    the backward pass needs (after the first, each is a ReLU output: it is also the mask)."""
    inputs = []
    for i in range(0, len(seq), 2):
        layer = seq[i]
        inputs.append(h)
        h = torch.addmm(layer.bias, h, layer.weight.t())
        if i + 1 < len(seq):
            h = h.relu_()
    return h, inputs


def mlp_backward(seq: nn.Sequential, inputs: list[Tensor], grad: Tensor,
                 input_grad: bool = True) -> Tensor | None:
    """Back through ``seq`` from the output gradient (B, n_out): sets each Linear's weight and
    bias ``.grad`` and returns the gradient with respect to the input (None if not ``input_grad``)."""
    for i in reversed(range(0, len(seq), 2)):
        layer, h = seq[i], inputs[i // 2]
        layer.weight.grad = torch.mm(grad.t(), h)
        layer.bias.grad = grad.sum(0)
        if i == 0 and not input_grad:
            return None
        grad = torch.mm(grad, layer.weight)
        if i > 0:           # through the ReLU before this layer: zero where its output was 0
            grad = torch.ops.aten.threshold_backward(grad, h, 0)
    return grad


def bernoulli_nll_and_grad(logits: Tensor, x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The binary cross-entropy from logits summed over all of (B, D), and its gradient with
    respect to the logits times ``scale``: (sigmoid(logits) - x) * scale."""
    total = F.softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1))  # 20 % under
    return total, torch.sigmoid(logits).sub_(x).mul_(scale)


def mse_and_grad(logits: Tensor, x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """The squared error of sigmoid(logits) against x summed over all of (B, D), and its
    gradient with respect to the logits times ``scale``: 2 (p - x) p (1 - p) * scale."""
    p = torch.sigmoid(logits)
    diff = p - x
    total = torch.dot(diff.reshape(-1), diff.reshape(-1))
    return total, diff.mul_(p).mul_(1 - p).mul_(2 * scale)

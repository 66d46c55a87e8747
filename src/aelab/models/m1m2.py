"""M1+M2, the stacked semi-supervised model (Kingma, Rezende, Mohamed & Welling 2014,
arXiv:1406.5298, sec. 3.2): an M2 whose data are the codes z1 of a VAE (M1) instead of pixels.

Generative model: p(y) p(z2) p(z1|y, z2) p(x|z1), with M2's networks on z1 and M1's decoder on x.
The model here *is* M1, a plain vae (its options: ``latent_dim``, ``hidden_dims``, ``arch``,
``likelihood``, ``beta``, ...), and holds the M2 as ``self.m2``, always an mlp (``m2_latent_dim``,
``m2_hidden_dims``, and m2's ``alpha`` and ``classifier_dropout``, here on the codes).
The M2 sees one draw z1 ~ q(z1|x) per image, cut from the graph, and models it with a Gaussian
p(z1|y, z2) whose mean is the M2 decoder's output and whose standard deviation is learned, one per
dimension of z1. Its loss is m2's (``aelab.models.m2``): -ELBO + alpha x cross-entropy for labelled
codes, the expectation over q(y|z1) minus the entropy for the others.

Training: loss = M1's -ELBO (batch mean) + M2's loss on the detached codes (batch mean), in one
run. Because of the stop-gradient M1 learns from its own ELBO only, exactly as if it were trained
alone, while the M2 learns on M1's current codes. The paper trained them in sequence (M1 first,
then M2 on the fixed M1); here both start together.

Evaluation: ``class_error`` from q(y|z1) at z1 = M1's posterior mean; ``recon_*``, ``kl`` and
``elbo`` are M1's (the vae's bound on log p(x) under M1 alone, not under the stacked model). There
is no importance-weighted likelihood (``log_weights``). ``embed`` and ``reconstruct`` are M1's;
``sample`` draws z2 ~ N(0, I) and the given classes (or every class in turn), decodes the M2's
mean z1 and then M1's mean image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..losses import gaussian_nll
from .base import ModelOutput
from .m2 import M2, M2Config, check_classifier_options
from .registry import register
from .vae import VAE, VAEConfig


@dataclass
class M1M2Config(VAEConfig):
    name: str = "m1m2"
    latent_dim: int = 50                      # M1's code z1: the M2's data
    hidden_dims: tuple[int, ...] = (600, 600)  # M1's encoder; its decoder mirrors them
    m2_latent_dim: int = 50                   # the M2's own code z2
    m2_hidden_dims: tuple[int, ...] = (500,)  # the M2's encoder, decoder and classifier
    alpha: float | None = None    # weight of each labelled code's cross-entropy; None: 0.1 N / N_l
    classifier_dropout: float = 0.0   # dropout on the classifier's input codes while training

    def __post_init__(self):
        super().__post_init__()
        if self.m2_latent_dim < 1:
            raise ConfigError(f"m2_latent_dim must be at least 1, got {self.m2_latent_dim}")
        if not self.m2_hidden_dims or min(self.m2_hidden_dims) < 1:
            raise ConfigError("m2_hidden_dims must be positive sizes, got "
                              f"{list(self.m2_hidden_dims)}")
        check_classifier_options(self.alpha, self.classifier_dropout)


class CodeM2(M2):
    """An M2 on codes shaped (B, 1, 1, D): Gaussian p(z1|y, z2), mean = the decoder's output,
    one learned log standard deviation per dimension."""

    def __init__(self, cfg: M2Config):
        super().__init__(cfg)
        self.log_sigma = nn.Parameter(torch.zeros(cfg.input_shape))

    def reconstruction_nll(self, logits: Tensor, x: Tensor) -> Tensor:
        return gaussian_nll(logits, x, self.log_sigma)


@register("m1m2")
class M1M2(VAE):
    """M1+M2 (Kingma et al. 2014): a vae (M1) and an M2 trained on its detached codes, jointly."""

    config_cls = M1M2Config
    needs_labels = True
    partial_labels = True         # trains on labels of -1 (hidden), so --labels N applies
    log_weights = None            # no p(x) estimate of the stacked model

    fit_config = classmethod(M2.fit_config.__func__)   # an unset alpha becomes 0.1 N / N_l

    def __init__(self, cfg: M1M2Config):
        super().__init__(cfg)
        m2_cfg = M2Config(input_shape=(1, 1, cfg.latent_dim), latent_dim=cfg.m2_latent_dim,
                          hidden_dims=tuple(cfg.m2_hidden_dims), n_classes=cfg.n_classes,
                          likelihood="gaussian", alpha=cfg.alpha,
                          classifier_dropout=cfg.classifier_dropout)
        self.m2 = CodeM2(m2_cfg)

    def codes(self, z: Tensor) -> Tensor:
        """M1's codes (B, latent_dim) as the M2's data (B, 1, 1, latent_dim)."""
        return z[:, None, None, :]

    def classify(self, x: Tensor) -> Tensor:
        """log q(y|z1) at z1 = M1's posterior mean, (B, n_classes)."""
        return self.m2.classify(self.codes(self.embed(x)))

    @torch.no_grad()
    def most_likely_labels(self, x: Tensor) -> Tensor:
        """argmax_y q(y|z1) at z1 = M1's posterior mean, (B,), without dropout."""
        return self.m2.most_likely_labels(self.codes(self.embed(x)))

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        """M1's -ELBO plus the M2's loss on one detached draw z1 ~ q(z1|x) per image."""
        out = super().forward(x)
        if not self.cfg.n_classes:
            return out
        m2_out = self.m2(self.codes(out.z.detach()), y)
        # the M2's rec and kl as m2_rec, m2_kl; class_ce, class_error and entropy as in an m2
        terms = dict(out.terms)
        terms.update({f"m2_{k}" if k in terms else k: v for k, v in m2_out.terms.items()})
        return ModelOutput(loss=out.loss + m2_out.loss, logits=out.logits, z=out.z, terms=terms)

    @torch.no_grad()
    def metrics(self, x: Tensor, y: Tensor | None = None) -> dict[str, Tensor]:
        """M1's ``recon_*``, ``kl`` and ``elbo``, and ``class_error`` where labels are given."""
        out = super().metrics(x)
        if y is not None and self.cfg.n_classes:
            out["class_error"] = (self.most_likely_labels(x) != y).float()
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """n images of the given classes (n,), or of classes 0, 1, ..., n_classes-1, 0, ... in turn:
        z2 ~ N(0, I), z1 = the M2 decoder's mean, the image M1's mean."""
        k = self.cfg.n_classes
        if not k:
            return super().sample(n, generator)
        device = self.log_sigma.device
        labels = torch.arange(n) % k if labels is None else torch.as_tensor(labels).long()
        if labels.shape != (n,) or not (0 <= int(labels.min()) and int(labels.max()) < k):
            raise ValueError(f"labels must be {n} classes in [0, {k}), got {labels.tolist()}")
        labels = labels.to(device)
        z2 = self.m2.draw_prior(n, generator, labels)
        z1 = self.m2.decode(z2, labels).flatten(1)
        return self.mean_image(self.decode(z1))

"""VQ-VAE: an autoencoder whose code is a few integers, each naming one of K learned code vectors,
with an autoregressive prior over those integers fitted after training (van den Oord, Vinyals &
Kavukcuoglu 2017, "Neural Discrete Representation Learning", arXiv:1711.00937).

The code. The encoder gives ``n_codes`` vectors z_e of size ``code_dim`` (D); each is replaced by
the nearest of the ``codebook_size`` (K) code vectors e, so an image is stored as n_codes integers
in [0, K), n_codes * log2(K) bits.
- ``arch: mlp``: the MLP head outputs ``latent_dim`` numbers, read as n_codes = latent_dim / code_dim
  vectors (latent_dim = n_codes * code_dim); the decoder is the ``ae``'s MLP. With the same
  ``hidden_dims`` and ``latent_dim`` the networks are exactly an ``ae``'s, so the two differ only
  by the quantisation of the code.
- ``arch: conv``: the code is the last stride-2 convolution's feature map, turned into D channels
  by a 1x1 convolution: a grid of h x w positions (7 x 7 for 28 x 28 images and two layers), in
  raster order; a 3x3 convolution and the transposed convolutions decode it. ``hidden_dims`` and
  ``latent_dim`` are not used.
``embed`` gives the quantised vectors, flattened: (B, n_codes * code_dim).

The loss per image is eq. 3 of the paper: -log p(x | z_q) + ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2,
with the decoder's input z_q = e in the forward pass and the gradient copied straight through to
z_e (``losses.straight_through``). -log p(x | z_q) is the Bernoulli NLL from logits summed over pixels
(nats per image, as the ``vae``'s), so reconstruct() = sigmoid(logits); the two squared distances are
summed over the n_codes * D numbers of the code, as eq. 3 writes them for one image.

The codebook. With ``ema: true`` (the default) the codebook loss is dropped and each code vector is
the moving average (``ema_decay``) of the encoder outputs assigned to it (appendix A.1 of the paper;
Razavi et al. 2019, arXiv:1906.00446), its assignment counts Laplace-smoothed so that a code with no
recent assignments never divides by zero; the codebook is then a buffer with no gradient. With
``ema: false`` it is a parameter trained by the codebook loss. Either way, a code no training batch
has chosen for ``restart_after`` steps is re-initialised from a randomly drawn encoder output of the
current batch (global torch RNG, so a seeded run is reproducible). Every code starts as such a dead
code, so the first training batch initialises the whole codebook from encoder outputs.

The prior (what ``sample`` draws from). After training, ``after_training`` encodes the training
images to their codes and fits p(c) = prod_i p(c_i | c_<i) over the n_codes positions (raster
order for conv) with its own Adam for ``prior_steps`` steps. The network (``CodePrior``) is a small
MADE-like masked model: position i sums learned per-(i, j) channel weightings of the embeddings of
the codes c_j, j < i, adds a position vector, and a two-layer MLP gives the K logits. Fitting
computes every position at once; sampling draws them one after another. Its tensors are buffers of
shapes fixed at construction: saved in model.safetensors, never moved by the trainer's optimiser
(which takes ``parameters()``). Why autoregressive: the codes of one image depend on each other;
with the vqvae preset trained on mnist-5k, a histogram per position scores 72 nats per test image,
this prior 51. Why steps rather than passes: its 3,600 training codes make only 15 batches a pass,
and 5 passes (75 steps) leave the prior at 73 nats.

``epoch_stats`` reports, per training epoch: ``code_usage`` (fraction of the K codes chosen at
least once), ``code_perplexity`` (exp of the entropy of the code histogram: K when every code is
equally used, 1 when one code is) and ``codes_restarted`` (the first epoch counts the K initial ones).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..distributed import all_reduce_sum
from ..errors import ConfigError, RunError
from ..losses import bernoulli_nll, straight_through, vq_codebook_loss, vq_commitment_loss
from .base import Autoencoder, ModelConfig, ModelOutput
from .blocks import Decoder, Encoder, conv_grid, conv_stack, deconv_stack
from .registry import register

log = logging.getLogger(__name__)

EMA_EPSILON = 1e-5      # Laplace smoothing of the EMA assignment counts
PRIOR_EMBED_DIM = 64    # size of the prior's code embeddings
PRIOR_BATCH_SIZE = 256
PRIOR_LR = 3e-3


@dataclass
class VQVAEConfig(ModelConfig):
    name: str = "vqvae"
    latent_dim: int = 64          # mlp: the head's output, n_codes * code_dim; conv: unused
    codebook_size: int = 512      # K code vectors; each code position holds log2(K) bits
    code_dim: int = 0             # D; 0: 16 for conv, for mlp the largest of 4, 2, 1 dividing latent_dim
    commitment: float = 0.25      # beta in eq. 3, the paper's value
    ema: bool = True              # codebook as moving averages (appendix A.1), not by its loss
    ema_decay: float = 0.99
    restart_after: int = 100      # steps a code may go unchosen before it is re-initialised; 0: never
    prior_hidden: int = 128       # width of the code prior's hidden layer
    prior_steps: int = 1000       # Adam steps (batches of 256 codes) fitting the prior after training

    def __post_init__(self):
        super().__post_init__()
        if self.code_dim == 0:
            self.code_dim = 16 if self.arch == "conv" else math.gcd(self.latent_dim, 4)
        if self.code_dim < 1:
            raise ConfigError(f"code_dim must be at least 1, got {self.code_dim}")
        if self.arch == "mlp" and self.latent_dim % self.code_dim:
            raise ConfigError(f"vqvae: latent_dim {self.latent_dim} is not a multiple of code_dim "
                              f"{self.code_dim} (latent_dim = n_codes * code_dim)")
        if self.codebook_size < 2:
            raise ConfigError(f"codebook_size must be at least 2, got {self.codebook_size}")
        if self.commitment < 0:
            raise ConfigError(f"commitment must be non-negative, got {self.commitment}")
        if not 0 < self.ema_decay < 1:
            raise ConfigError(f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.restart_after < 0:
            raise ConfigError(f"restart_after must be a non-negative step count, got {self.restart_after}")
        if self.prior_hidden < 1 or self.prior_steps < 1:
            raise ConfigError(f"prior_hidden and prior_steps must be at least 1, got "
                              f"{self.prior_hidden} and {self.prior_steps}")


def perplexity(counts: Tensor) -> float:
    """exp of the entropy (nats) of a histogram: the number of equally used codes it is worth."""
    p = counts.double() / counts.sum()
    p = p[p > 0]
    return math.exp(-(p * p.log()).sum().item())


class VectorQuantizer(nn.Module):
    """K code vectors of size D, the nearest-neighbour lookup, and the updates made by training
    batches: code histogram, dead-code restarts and (``ema``) moving-average code vectors."""

    def __init__(self, codebook_size: int, code_dim: int, ema: bool = True, decay: float = 0.99,
                 restart_after: int = 100):
        super().__init__()
        self.ema, self.decay, self.restart_after = ema, decay, restart_after
        codebook = torch.randn(codebook_size, code_dim)                  # (K, D)
        if ema:
            self.register_buffer("codebook", codebook)
            # as if each code had been assigned itself once: codebook = ema_sum / ema_count
            self.register_buffer("ema_count", torch.ones(codebook_size))
            self.register_buffer("ema_sum", codebook.clone())
        else:
            self.codebook = nn.Parameter(codebook)
        # every code starts dead, so the first training batch initialises the codebook
        self.register_buffer("steps_unused", torch.full((codebook_size,), restart_after))
        self.register_buffer("counts", torch.zeros(codebook_size, dtype=torch.long), persistent=False)
        self.register_buffer("restarts", torch.zeros((), dtype=torch.long), persistent=False)

    @torch.no_grad()
    def nearest(self, z_e: Tensor) -> Tensor:
        """Index of the nearest code vector (Euclidean) for each row: (N, D) -> (N,)."""
        e = self.codebook
        distance = z_e.square().sum(1, keepdim=True) - 2 * z_e @ e.t() + e.square().sum(1)   # (N, K)
        return distance.argmin(1)

    def forward(self, z_e: Tensor) -> tuple[Tensor, Tensor]:
        """z_e (B, L, D) -> the nearest code vectors e (B, L, D) and their indices (B, L).

        e carries the codebook's gradient when it is a parameter. In training mode, dead codes are
        first restarted from this batch, and after the lookup the histogram and EMA are updated.
        """
        flat = z_e.detach().flatten(0, 1)                                 # (B*L, D)
        if self.training and self.restart_after > 0:
            self._restart_dead(flat)
        idx = self.nearest(flat)                                          # (B*L,)
        e = F.embedding(idx, self.codebook).view_as(z_e)
        if self.training:
            self._update(flat, idx)
        return e, idx.view(z_e.shape[:2])

    @torch.no_grad()
    def _restart_dead(self, flat: Tensor) -> None:
        # No host synchronisation: replacements are drawn for every code, kept only for dead ones.
        n_codes = len(self.codebook)
        if len(flat) >= n_codes:
            pick = torch.randperm(len(flat), device=flat.device)[:n_codes]
        else:
            pick = torch.randint(len(flat), (n_codes,), device=flat.device)
        fresh = flat[pick]                                                # (K, D)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(fresh, src=0)   # under DDP every process restarts with rank 0's vectors
        dead = (self.steps_unused >= self.restart_after).unsqueeze(1)     # (K, 1)
        self.codebook.copy_(torch.where(dead, fresh, self.codebook))
        if self.ema:
            self.ema_sum.copy_(torch.where(dead, fresh, self.ema_sum))
            self.ema_count.masked_fill_(dead.squeeze(1), 1.0)
        self.steps_unused.masked_fill_(dead.squeeze(1), 0)
        self.restarts += dead.sum()

    @torch.no_grad()
    def _update(self, flat: Tensor, idx: Tensor) -> None:
        # Under DDP the counts and sums are added over all processes, so that every process
        # makes the same update (and the same restarts) from the whole global batch.
        n_assigned = all_reduce_sum(torch.bincount(idx, minlength=len(self.codebook)))   # (K,)
        self.counts += n_assigned
        self.steps_unused.add_(1).masked_fill_(n_assigned > 0, 0)
        if self.ema:   # appendix A.1: N_i and m_i as moving averages, e_i = m_i / N_i
            sums = all_reduce_sum(torch.zeros_like(self.ema_sum).index_add_(0, idx, flat))   # (K, D)
            self.ema_count.mul_(self.decay).add_(n_assigned.to(flat.dtype), alpha=1 - self.decay)
            self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
            n = self.ema_count.sum()
            smoothed = (self.ema_count + EMA_EPSILON) / (n + len(self.codebook) * EMA_EPSILON) * n
            self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))

    def take_stats(self) -> dict[str, float]:
        """Usage, perplexity and restarts since the last call, then reset; {} if nothing was coded."""
        if int(self.counts.sum()) == 0:
            return {}
        stats = {"code_usage": (self.counts > 0).double().mean().item(),
                 "code_perplexity": perplexity(self.counts),
                 "codes_restarted": int(self.restarts)}
        self.counts.zero_()
        self.restarts.zero_()
        return stats


class CodePrior(nn.Module):
    """p(c) = prod_i p(c_i | c_<i) over L code positions, each c_i one of K symbols.

    h_i = sum_{j<i} mix[i, j] * embed[c_j] + position[i] (elementwise, size E), then
    logits_i = out(ReLU(hidden(ReLU(h_i)))). The masked sum makes it autoregressive, as in MADE
    (Germain et al. 2015, arXiv:1502.03509). Its tensors are buffers; ``fit`` trains copies of them.
    """

    WEIGHTS = ("embed", "mix", "position", "hidden_w", "hidden_b", "out_w", "out_b")

    def __init__(self, n_positions: int, n_symbols: int, hidden: int, embed_dim: int = PRIOR_EMBED_DIM):
        super().__init__()
        L, K, H, E = n_positions, n_symbols, hidden, embed_dim
        initial = {"embed": torch.randn(K, E), "mix": torch.randn(L, L, E) / math.sqrt(L),
                   "position": torch.zeros(L, E),
                   "hidden_w": (2 * torch.rand(H, E) - 1) / math.sqrt(E), "hidden_b": torch.zeros(H),
                   "out_w": (2 * torch.rand(K, H) - 1) / math.sqrt(H), "out_b": torch.zeros(K)}
        for name in self.WEIGHTS:
            self.register_buffer(name, initial[name])
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def logits(self, codes: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        """codes (B, L) integers -> logits (B, L, K) of p(c_i | c_<i); position i sees codes j < i only."""
        w = weights or {name: getattr(self, name) for name in self.WEIGHTS}
        n = codes.shape[1]
        causal = torch.ones(n, n, device=codes.device).tril(-1).unsqueeze(2)        # (L, L, 1)
        h = torch.einsum("ije,bje->bie", w["mix"] * causal, w["embed"][codes]) + w["position"]
        h = F.relu(F.linear(F.relu(h), w["hidden_w"], w["hidden_b"]))               # (B, L, H)
        return F.linear(h, w["out_w"], w["out_b"])

    def fit(self, codes: Tensor, steps: int, batch_size: int = PRIOR_BATCH_SIZE, lr: float = PRIOR_LR
            ) -> float:
        """Maximum likelihood on codes (N, L): ``steps`` Adam steps on batches of shuffled passes
        (global torch RNG). Returns the fitted prior's mean NLL of the codes, nats per image."""
        weights = {name: getattr(self, name).detach().clone().requires_grad_() for name in self.WEIGHTS}
        opt = torch.optim.Adam(weights.values(), lr=lr)
        step = 0
        with torch.enable_grad():
            while step < steps:
                order = torch.randperm(len(codes), device=codes.device)
                for start in range(0, len(codes), batch_size):
                    c = codes[order[start:start + batch_size]]                      # (b, L)
                    nll = F.cross_entropy(self.logits(c, weights).flatten(0, 1), c.flatten())
                    opt.zero_grad(set_to_none=True)
                    nll.backward()                   # mean per position: the step ignores L and b
                    opt.step()
                    step += 1
                    if step == steps:
                        break
        with torch.no_grad():
            for name, value in weights.items():
                getattr(self, name).copy_(value)
            self.fitted.fill_(True)
            total = sum(F.cross_entropy(self.logits(c).flatten(0, 1), c.flatten(), reduction="sum")
                        for c in codes.split(4 * batch_size))
        return float(total) / len(codes)

    @torch.no_grad()
    def sample(self, n: int, n_positions: int, generator: torch.Generator | None = None) -> Tensor:
        """n code sequences (n, L), position by position."""
        codes = torch.zeros(n, n_positions, dtype=torch.long, device=self.out_b.device)
        for i in range(n_positions):
            probs = F.softmax(self.logits(codes)[:, i], dim=-1)                   # (n, K)
            codes[:, i] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return codes


@register("vqvae")
class VQVAE(Autoencoder):
    """VQ-VAE: the code snapped to the nearest of K learned vectors; samples from a code prior."""

    config_cls = VQVAEConfig
    can_sample = True
    continuous_code = False       # a code between codebook vectors was never decoded in training

    def __init__(self, cfg: VQVAEConfig):
        super().__init__(cfg)
        if cfg.arch == "conv":
            channels, h, w = conv_grid(cfg.input_shape, cfg.conv_channels)
            self.code_grid: tuple[int, int] | None = (h, w)
            self.n_codes = h * w
            self.encoder = nn.Sequential(conv_stack(cfg.input_shape[0], cfg.conv_channels),
                                         nn.Conv2d(channels, cfg.code_dim, 1))
            self.decoder = nn.Sequential(nn.Conv2d(cfg.code_dim, channels, 3, padding=1),
                                         nn.ReLU(inplace=True),
                                         deconv_stack(cfg.conv_channels, cfg.input_shape[0]))
        else:
            self.code_grid = None
            self.n_codes = cfg.latent_dim // cfg.code_dim
            self.encoder = Encoder(cfg, cfg.latent_dim)
            self.decoder = Decoder(cfg, cfg.latent_dim)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.code_dim, cfg.ema, cfg.ema_decay,
                                         cfg.restart_after)
        self.prior = CodePrior(self.n_codes, cfg.codebook_size, cfg.prior_hidden)

    def encode(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(B, C, H, W) -> z_e, the encoder's vectors before quantisation, (B, n_codes, code_dim)."""
        z_e = self.encoder(x)
        if self.code_grid is not None:
            return z_e.flatten(2).transpose(1, 2)          # (B, D, h, w) -> (B, h*w, D), raster order
        return z_e.view(len(x), self.n_codes, self.cfg.code_dim)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """Code vectors, flattened (B, n_codes * code_dim) -> logits (B, C, H, W)."""
        if self.code_grid is not None:
            z = z.view(len(z), *self.code_grid, self.cfg.code_dim).permute(0, 3, 1, 2)   # (B, D, h, w)
        return self.decoder(z)

    def codes(self, x: Tensor) -> Tensor:
        """The code of each image: (B, n_codes) integers in [0, codebook_size)."""
        z_e = self.encode(x)
        return self.quantizer.nearest(z_e.detach().flatten(0, 1)).view(z_e.shape[:2])

    def embed(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """The quantised vectors, flattened: (B, n_codes * code_dim)."""
        return F.embedding(self.codes(x), self.quantizer.codebook).flatten(1)

    def forward(self, x: Tensor, y: Tensor | None = None) -> ModelOutput:
        z_e = self.encode(x)                                # (B, n_codes, D)
        e, _ = self.quantizer(z_e)                          # nearest code vectors, (B, n_codes, D)
        z_q = straight_through(z_e, e).flatten(1)           # (B, n_codes * D)
        logits = self.decode(z_q)
        rec = bernoulli_nll(logits, x)                      # (B,) nats
        commit = vq_commitment_loss(z_e, e)                 # (B,)
        loss = rec + self.cfg.commitment * commit
        terms = {"rec": rec.mean(), "commit": commit.mean()}
        if not self.cfg.ema:
            codebook = vq_codebook_loss(z_e, e)
            loss = loss + codebook
            terms["codebook"] = codebook.mean()
        return ModelOutput(loss=loss.mean(), logits=logits, z=z_q, terms=terms)

    def epoch_stats(self) -> dict[str, float]:
        return self.quantizer.take_stats()

    def after_training(self, batches) -> None:
        """Fit the code prior on the codes of the training images (``batches``: (x, y) pairs)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            codes = torch.cat([self.codes(x) for x, _ in batches])               # (N, n_codes)
        self.train(was_training)
        nll = self.prior.fit(codes, self.cfg.prior_steps)
        log.info("code prior: %.1f nats per image on the %d training codes (uniform: %.1f)",
                 nll, len(codes), self.n_codes * math.log(self.cfg.codebook_size))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None,
               labels: Tensor | None = None) -> Tensor:
        """Codes drawn from the fitted prior, decoded: (n, C, H, W) in [0, 1]."""
        if not self.prior.fitted:
            raise RunError("this vqvae's code prior has not been fitted; it is fitted when "
                           "training ends (after_training)")
        codes = self.prior.sample(n, self.n_codes, generator)                     # (n, n_codes)
        return torch.sigmoid(self.decode(F.embedding(codes, self.quantizer.codebook).flatten(1)))

"""Loss terms as pure functions returning one value per example, shape (B,), in nats.

Decoders return logits; the mean image is ``sigmoid(logits)`` for every likelihood, so outputs
stay in [0, 1] as the study's sigmoid output layer did.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def reparameterize(mu: Tensor, logvar: Tensor) -> Tensor:
    """z = mu + sigma * eps with eps ~ N(0, I) (Kingma & Welling 2014, eq. 10)."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def kl_std_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) summed over latent dimensions (Kingma & Welling, appendix B).

    Per dimension: 0.5 * (mu^2 + sigma^2 - log sigma^2 - 1); zero when mu = 0 and sigma = 1.
    """
    return 0.5 * (mu.square() + logvar.exp() - logvar - 1).sum(-1)


def bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | logits) for a Bernoulli per pixel, summed over pixels (nats per image).

    Computed from logits for stability and speed; targets in [0, 1] may be grey levels.
    """
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(-1)


def gaussian_nll(mean: Tensor, x: Tensor, log_sigma: Tensor) -> Tensor:
    """-log N(x; mean, sigma^2) summed over pixels (nats per image); log_sigma broadcasts."""
    log_sigma = torch.as_tensor(log_sigma, dtype=mean.dtype, device=mean.device)
    per_pixel = 0.5 * ((x - mean) * torch.exp(-log_sigma)).square() + log_sigma + 0.5 * LOG_2PI
    return per_pixel.flatten(1).sum(-1)


def mse_per_pixel(mean: Tensor, x: Tensor) -> Tensor:
    """Mean squared error per pixel, one value per image (the study's ``nn.MSELoss``)."""
    return (mean - x).square().flatten(1).mean(-1)


def mse_as_gaussian_nll(mse: Tensor, n_pixels: int) -> Tensor:
    """The exact NLL behind ``mse + KL``: a Gaussian with variance n_pixels / 2 per pixel.

    sum((x - mean)^2) / (2 sigma^2) = mse when sigma^2 = D / 2, so the study's loss is an ELBO whose
    decoder is that noisy (sigma ~ 19.8 for D = 784); adding the normaliser makes it a true bound.
    """
    return mse + 0.5 * n_pixels * (LOG_2PI + math.log(n_pixels / 2))


# ---------------------------------------------------------------- continuous Bernoulli


def continuous_bernoulli_log_norm(logits: Tensor) -> Tensor:
    """log C(lambda), the continuous Bernoulli's log normaliser, per element, from logits eta.

    Loaiza-Ganem & Cunningham 2019 (arXiv:1907.06845), eq. 7: C(lambda) = 2 artanh(1 - 2 lambda) /
    (1 - 2 lambda), and C(1/2) = 2. With lambda = sigmoid(eta) this is eta / tanh(eta / 2), so
    log C = log|eta| - log tanh(|eta| / 2): exact for large |eta| (C ~ |eta|). Near eta = 0 both logs
    cancel, so there the Taylor series log C = log 2 + eta^2 / 12 - 7 eta^4 / 1440 is used (its error
    is below 1e-9 for |eta| < 0.1), as PyTorch's ContinuousBernoulli does near lambda = 1/2.
    """
    a = logits.abs()
    small = a < 0.1
    safe = torch.where(small, torch.ones_like(a), a)   # no 0/0 in the unused branch, nor in its grad
    far = torch.log(safe) - torch.log(torch.tanh(safe / 2))
    near = math.log(2) + a.square() / 12 - 7 * a.pow(4) / 1440
    return torch.where(small, near, far)


def continuous_bernoulli_nll(logits: Tensor, x: Tensor) -> Tensor:
    """-log p(x | lambda) of a continuous Bernoulli per pixel, summed over pixels (nats per image).

    Loaiza-Ganem & Cunningham 2019, eq. 7: p(x | lambda) = C(lambda) lambda^x (1 - lambda)^(1 - x)
    on x in [0, 1], so -log p = BCE-with-logits(eta, x) - log C(lambda). A proper density for grey
    pixels, unlike the Bernoulli, so the ELBO it gives is a real bound (and can be positive).
    """
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    return (bce - continuous_bernoulli_log_norm(logits)).flatten(1).sum(-1)


def continuous_bernoulli_mean(logits: Tensor) -> Tensor:
    """E[x] of a continuous Bernoulli, per element, in [0, 1] (not sigmoid(eta)).

    Loaiza-Ganem & Cunningham 2019, section 3: E[x] = lambda / (2 lambda - 1) + 1 / (2 artanh(1 - 2
    lambda)). With u = eta / 2 this is 1/2 + (coth u - 1/u) / 2 (half the Langevin function), taken
    from its Taylor series u/3 - u^3/45 + 2 u^5/945 for |u| < 0.05, where coth u - 1/u cancels.
    """
    u = logits / 2
    small = u.abs() < 0.05
    safe = torch.where(small, torch.ones_like(u), u)
    far = 1 / torch.tanh(safe) - 1 / safe
    near = u / 3 - u.pow(3) / 45 + 2 * u.pow(5) / 945
    return 0.5 + 0.5 * torch.where(small, near, far)


# ---------------------------------------------------------------- importance weighting


def kl_normal_diag(mu: Tensor, logvar: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu, diag(exp(logvar))) || N(mu_p, diag(exp(logvar_p)))) summed over the last dimension:
    0.5 * sum(logvar_p - logvar + (exp(logvar) + (mu - mu_p)^2) / exp(logvar_p) - 1)."""
    return 0.5 * (logvar_p - logvar + (logvar.exp() + (mu - mu_p).square()) * torch.exp(-logvar_p)
                  - 1).sum(-1)


def log_normal_diag(z: Tensor, mu: Tensor | float = 0.0, logvar: Tensor | float = 0.0) -> Tensor:
    """log N(z; mu, diag(exp(logvar))) summed over the last dimension; the defaults give N(0, I).

    Used for log q(z|x) and log p(z) in the importance weights of Burda et al. 2016
    (arXiv:1509.00519), eq. 8: w = p(x, z) / q(z|x).
    """
    mu = torch.as_tensor(mu, dtype=z.dtype, device=z.device)
    logvar = torch.as_tensor(logvar, dtype=z.dtype, device=z.device)
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar + LOG_2PI).sum(-1)


def iwae_bound(log_w: Tensor, dim: int = 0) -> Tensor:
    """The k-sample importance weighted bound log (1/k) sum_i w_i from log weights, k = size of dim.

    Burda et al. 2016 (arXiv:1509.00519), eq. 8: L_k = E[log (1/k) sum_i p(x, z_i) / q(z_i|x)],
    z_i ~ q(z|x). logsumexp keeps it finite when every w_i underflows (log w ~ -1000 nats).
    L_1 is the ELBO; E[L_k] rises with k towards log p(x). Higher is better.
    """
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


def dreg_surrogate(log_w: Tensor, z: Tensor) -> Tensor:
    """Zero in value; its gradient is the DReG estimate of the k-sample bound's gradient
    (Tucker, Lawson, Gu & Maddison 2019, arXiv:1810.04152, eq. 5), batch-mean, to be minimised.

    ``log_w`` (k, B) must hold log q(z_i|x) with q's parameters detached and ``z`` (k, B, D) the
    reparameterised draws it was computed at. The decoder gets the IWAE gradient,
    sum_i w~_i grad log w_i, with w~ the normalised weights; the encoder, through z alone,
    sum_i w~_i^2 (d log w_i / d z_i)(d z_i / d phi), whose variance does not grow with k as the
    IWAE encoder gradient's signal-to-noise ratio falls (Rainforth et al. 2018).
    """
    w = torch.softmax(log_w.detach(), dim=0)                        # (k, B)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * w.unsqueeze(-1))         # w~_i -> w~_i^2 on z's path
    surrogate = -(w * log_w).sum(0).mean()
    return surrogate - surrogate.detach()


# ---------------------------------------------------------------- vector quantisation


def straight_through(z_e: Tensor, z_q: Tensor) -> Tensor:
    """z_q in the forward pass, the identity towards z_e in the backward pass.

    van den Oord et al. 2017 (arXiv:1711.00937), section 3.2: the decoder's input gradient is
    copied to the encoder output, since the nearest-neighbour lookup has no useful gradient.
    """
    return z_e + (z_q - z_e).detach()


def vq_codebook_loss(z_e: Tensor, e: Tensor) -> Tensor:
    """||sg[z_e] - e||^2 summed over all but the batch dimension, (B,): moves the chosen code
    vectors e towards the encoder outputs z_e. van den Oord et al. 2017, eq. 3, second term."""
    return (z_e.detach() - e).square().flatten(1).sum(-1)


def vq_commitment_loss(z_e: Tensor, e: Tensor) -> Tensor:
    """||z_e - sg[e]||^2 summed over all but the batch dimension, (B,): keeps the encoder outputs
    near their code vectors. van den Oord et al. 2017, eq. 3, third term (weighted by beta there)."""
    return (z_e - e.detach()).square().flatten(1).sum(-1)

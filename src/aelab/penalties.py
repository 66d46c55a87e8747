"""Penalties of the regularised deterministic autoencoders, as pure functions (unweighted: the model
multiplies each by its weight). Per-example penalties return (B,); batch-level ones a scalar.

- ``l1_code``: sparse autoencoder with an L1 penalty on the code (Goodfellow, Bengio & Courville 2016,
  Deep Learning, section 14.2.1, eq. 14.2 with Omega(h) = lambda * sum_i |h_i|, a Laplace prior on h);
- ``kl_sparsity``: Ng's sparse autoencoder (A. Ng, CS294A lecture notes "Sparse autoencoder", 2011,
  section "Autoencoders and sparsity": J_sparse = J + beta * sum_j KL(rho || rho_hat_j));
- ``jacobian_frobenius``: contractive autoencoder (Rifai, Vincent, Muller, Glorot & Bengio 2011, ICML,
  "Contractive Auto-Encoders", eq. 1: ||J_f(x)||_F^2 = sum_ij (dh_j(x) / dx_i)^2; also Deep Learning,
  eq. 14.18).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def l1_code(z: Tensor) -> Tensor:
    """sum_j |z_j| per example, (B,): the L1 sparsity penalty Omega(h) of Deep Learning eq. 14.2.

    Args:
        z: the code, (B, latent_dim).
    """
    return z.abs().sum(-1)


def kl_sparsity(code_logits: Tensor, rho: float) -> Tensor:
    """sum_j KL(rho || rho_hat_j), a scalar for the batch (Ng 2011, "Autoencoders and sparsity").

    rho_hat_j = mean over the batch of sigmoid(code_logits[:, j]), the average activation of unit j;
    KL(rho || rho_hat) = rho log(rho / rho_hat) + (1 - rho) log((1 - rho) / (1 - rho_hat)), the KL
    divergence between Bernoulli variables with means rho and rho_hat. It is a batch statistic,
    so it has no per-example value. log rho_hat is taken as logsumexp(logsigmoid(a)) - log B, which
    stays finite when every activation of a unit saturates at 0 or 1 in float32.

    Args:
        code_logits: the code before its sigmoid, (B, n_units).
        rho: the target mean activation, in (0, 1).
    """
    log_n = math.log(code_logits.shape[0])
    log_rho_hat = torch.logsumexp(F.logsigmoid(code_logits), 0) - log_n          # (n_units,)
    log_one_minus = torch.logsumexp(F.logsigmoid(-code_logits), 0) - log_n       # log(1 - rho_hat)
    kl = (rho * (math.log(rho) - log_rho_hat)
          + (1 - rho) * (math.log(1 - rho) - log_one_minus))
    return kl.sum()


def jacobian_frobenius(encode: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """||d encode(x_b) / d x_b||_F^2 per example, (B,): the contractive penalty (Rifai et al. 2011, eq. 1).

    Exact: the Jacobian of each example's code with respect to its own input, by reverse mode
    (one vector-Jacobian product per code unit, ``torch.func.jacrev``) vectorised over the batch with
    ``torch.func.vmap``. It works for any encoder that treats the examples of a batch independently
    (no batch norm), and stays differentiable with respect to the encoder's parameters.

    Args:
        encode: maps inputs (B, *input_shape) to codes (B, latent_dim).
        x: inputs, (B, *input_shape).
    """
    def one(x_b: Tensor) -> Tensor:                       # (*input_shape) -> (latent_dim,)
        return encode(x_b.unsqueeze(0)).squeeze(0)

    jac = torch.func.vmap(torch.func.jacrev(one))(x)      # (B, latent_dim, *input_shape)
    return jac.square().flatten(1).sum(-1)

"""Reparameterization + Gaussian KL to the N(0, I) prior, per row.

Math (mu, logvar, eps: [B, D]):
    sigma = exp(0.5 * logvar)
    z     = mu + sigma * eps                                   # reparameterization trick
    kl[i] = 0.5 * sum_j (mu^2 + exp(logvar) - 1 - logvar)      # KL(N(mu, sigma^2) || N(0, 1))

Vector-Jacobian products (dz, dkl upstream; dkl is [B], broadcast along j):
    dmu     = dz + dkl * mu
    dlogvar = dz * 0.5 * sigma * eps + dkl * 0.5 * (exp(logvar) - 1)

This file holds the plain-PyTorch reference; autograd derives the VJPs above.
"""
from __future__ import annotations

import torch
from torch import Tensor


def reparam_kl_torch(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Reference: z = mu + exp(0.5 logvar) * eps and the per-row KL to N(0, I).

    mu, logvar: [B, D]; eps: [B, D] or None (drawn from torch's generator). Returns z [B, D], kl [B].
    """
    if mu.shape != logvar.shape or mu.dim() != 2:
        raise ValueError(f"mu and logvar must both be [B, D]; got {tuple(mu.shape)} and {tuple(logvar.shape)}")
    if eps is None:
        eps = torch.randn_like(mu)
    elif eps.shape != mu.shape:
        raise ValueError(f"eps must match mu's shape {tuple(mu.shape)}; got {tuple(eps.shape)}")
    z = mu + torch.exp(0.5 * logvar) * eps
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(dim=1)
    return z, kl


def reparam_kl_multi_torch(
    mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor] | None = None
) -> tuple[list[Tensor], Tensor]:
    """Reference for all ladder levels at once: one (z_l, kl_l) per level.

    mus[l], logvars[l]: [B, D_l] (widths may differ); eps: a matching list or None.
    Returns the list of z_l [B, D_l] and kl [B, L] (column l = level l's KL).
    """
    if len(mus) != len(logvars) or (eps is not None and len(eps) != len(mus)):
        raise ValueError("mus, logvars (and eps) must have one entry per level")
    zs, kls = [], []
    for l, (mu, logvar) in enumerate(zip(mus, logvars)):
        z, kl = reparam_kl_torch(mu, logvar, None if eps is None else eps[l])
        zs.append(z)
        kls.append(kl)
    return zs, torch.stack(kls, dim=1)

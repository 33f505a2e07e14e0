"""Figure 3: per-level noise resampling in a Markov HVAE (section 3.2).

Ancestral sampling is reparameterised as z_L = eps_L, z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) * eps_l,
eps_l ~ N(0, I). A traversal of level K fixes eps at every level but K to one draw per row and redraws
eps_K across the row, so everything that changes along a row is level K's noise at work.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


def traverse_noise(model: nn.Module, layer: int, steps: int, seed: int = 0) -> list[Tensor]:
    """eps for a steps x steps grid, bottom first, each [steps * steps, d_l] in row-major order:
    every level but `layer` (1-based) repeats one draw per row; level `layer` is fresh in every cell."""
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    k = layer - 1
    eps = [e.repeat_interleave(steps, dim=0) for e in model.prior_noise(steps, g)]  # one draw per row
    eps[k] = model.prior_noise(steps * steps, g)[k]  # eps_K redrawn across the row
    return eps


@torch.no_grad()
def noise_traverse(model: nn.Module, layer: int, steps: int = 10, seed: int = 0) -> Tensor:
    """Image means for traverse_noise's grid: [steps, steps, C, H, W]."""
    model.eval()
    x = model.generate(model.ancestral(traverse_noise(model, layer, steps, seed)))
    return x.view(steps, steps, *x.shape[1:])


@torch.no_grad()
def variance_shares(model: nn.Module, steps: int = 32, seed: int = 0) -> list[float]:
    """Share of the pixel variance that each level's noise produces, bottom first (sums to 1).

    For level K: the variance across each row of a level-K traversal (steps x steps images; the
    default 32 x 32 keeps the estimate within about a percentage point),
    summed over pixels and averaged over rows; then each level's figure over the sum of all levels'.
    """
    v = []
    for layer in range(1, model.cfg.layers + 1):
        x = noise_traverse(model, layer, steps, seed).flatten(2)  # [rows, cols, pixels]
        v.append(x.var(dim=1, unbiased=False).sum(dim=1).mean().item())
    total = sum(v)
    return [vk / total if total > 0 else 0.0 for vk in v]

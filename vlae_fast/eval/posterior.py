"""How far q(z | x) is from the model's own posterior p(z | x), split by level: why a Gibbs chain collapses.

Proposition 1's chain on z_1 samples the model's p(x) only when q(z_1 | x) = p(z_1 | x) (section 3.1). The
whole gap is
    log p(x) - ELBO(x) = KL(q(z | x) || p(z | x)),
estimated with the importance-weighted bound (K samples) standing in for log p(x): the bound is below log p(x),
so the estimate is below the true gap, by the bound's own looseness.

For a Markov HVAE (q(z_{l+1} | z_l) up, p(z_l | z_{l+1}) down, x reading z_1 alone) the chain rule of KL splits
it by level, z_0 = x:
    KL(q(z | x) || p(z | x)) = sum_l E_q KL(q(z_l | z_{l-1}) || p(z_l | z_{l-1})),
where p(z_l | z_{l-1}) is the model's posterior over z_l given the level below. Term l is D_l - D_{l+1}, with
    D_l = E_{z_{l-1} ~ q}[log p(z_{l-1}) - ELBO(z_{l-1})]
the gap of the levels l .. L modelling z_{l-1} as their data (model.log_weight_above) and D_{L+1} = 0.
Level 1's term is the distance of q(z_1 | x) from p(z_1 | x): the chain's own error. Other models (LVAE's
top-down q, the autoregressive HVAE) get the whole gap only, which bounds level 1's from above.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.base import LatentModel
from .likelihood import log_weights

GAP_K = 100  # importance samples per image
ROWS = 2000  # images x samples per call: bounds the memory


def _gap(log_weight, h: Tensor, k: int) -> float:
    """Mean over the rows of h of (IW bound - ELBO estimate) from the same K samples: log mean exp w - mean w."""
    per, total = max(1, ROWS // k), 0.0
    for start in range(0, len(h), per):
        w = log_weights(log_weight, h[start : start + per], k, ROWS)
        total += (torch.logsumexp(w, dim=1) - math.log(k) - w.mean(dim=1)).sum().item()
    return total / len(h)


@torch.no_grad()
def posterior_gaps(model: LatentModel, x: Tensor, k: int = GAP_K, seed: int = 0) -> dict:
    """{'k', 'images', 'total': log p(x) - ELBO in nats/image (IW estimate), 'levels': [KL(q(z_l | z_{l-1}) ||
    p(z_l | z_{l-1})) per level, bottom first] for a Markov HVAE, else None}. x: [N, C, H, W] data images.
    The global random stream is forked: the caller's draws are the same as without this call."""
    if k < 2:
        raise ConfigError(f"the posterior gap needs at least 2 importance samples per image; got {k}")
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        if model.MARKOV_BOTH_WAYS:
            z = model.posterior_sample(x)  # one path z_1 .. z_L ~ q(z | x) per image: the data of the upper levels
            d = [_gap(lambda h, s=s: model.log_weight_above(h, s), x if s == 0 else z[s - 1], k)
                 for s in range(model.cfg.layers)] + [0.0]
            levels = [d[s] - d[s + 1] for s in range(model.cfg.layers)]
            total = d[0]
        else:
            total, levels = _gap(model.log_weight, x, k), None
    model.train(was_training)
    return {"k": k, "images": len(x), "total": total, "levels": levels}

"""`vlae swap`: give image B the level-K control of image A, one level at a time (Figures 5-6 as style
transfer: A's stroke width on B's digit). Controls are the model interface's per-level handles (VLAE: the
code z_l; HVAE: the noise eps_l, so the levels below K follow the swapped one as in ancestral sampling)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..models.base import LatentModel


@torch.no_grad()
def swap_levels(model: LatentModel, xa: Tensor, xb: Tensor, levels: list[int] | None = None) -> dict:
    """xa, xb: [N, C, H, W] (or one image on a side, used for every pair); levels: 1-based, default all.

    Returns {'grid': [3 + len(levels), N, C, H, W] rows A, B, B reconstructed, then B with A's level k for
    each k; 'labels': one per row; 'controls': the controls decoded in each swapped row, bottom first}.
    """
    L = len(model.latent_dims)
    levels = list(range(1, L + 1)) if not levels else list(levels)
    bad = [k for k in levels if not 1 <= k <= L]
    if bad:
        raise ConfigError(f"--level must be between 1 and {L} for this {L}-level model; got {bad[0]}")
    if xa.shape[0] != xb.shape[0] and 1 not in (xa.shape[0], xb.shape[0]):
        raise ConfigError(f"--from gives {xa.shape[0]} images and --to {xb.shape[0]}; give as many, or one on a side")
    n = max(xa.shape[0], xb.shape[0])
    xa, xb = (x.expand(n, *x.shape[1:]).to(model.device) for x in (xa, xb))
    model.eval()
    ca, cb = model.encode_controls(xa), model.encode_controls(xb)  # posterior means, as controls
    rows, labels, controls = [xa, xb, model.decode_controls(cb)], ["A", "B", "B reconstructed"], []
    for k in levels:
        c = [a if l == k - 1 else b for l, (a, b) in enumerate(zip(ca, cb))]  # B's levels, A's level k
        rows.append(model.decode_controls(c))
        labels.append(f"B with A's level {k}")
        controls.append(c)
    return {"grid": torch.stack(rows), "labels": labels, "controls": controls}

"""What each level does to generated images (Figures 3 and 5 as numbers).

variation shares: generate.variance_shares, the share of generated-pixel variance that redrawing one
    level's control alone produces (VLAE: z_l; HVAE: eps_l), the other levels held at fixed draws.
image factors (1-channel images): on the same redraw grids (generate.redraw_controls: each row holds the
    other levels at one prior draw and redraws level K in every cell), four factors of each decoded mean
    image x (H x W, in [0, 1]; r = row, c = column, pixel coordinates):
      ink    mass of ink, mean_rc x(r, c): grows with stroke width (and length)
      width  bounding-box width in pixels of the columns holding a pixel > 0.5 (0 for an empty image)
      slant  second-moment shear -Cov(r, c) / Var(r) under the weights x: columns moved per row up the
             image, > 0 when the digit leans right (the shear that MNIST deskewing removes)
      class  the digit the cached MNIST classifier (vlae_fast.classifier) predicts; 28 x 28 images only
    A factor's variation from level K: the variance of the factor across each row, averaged over rows
    (class: the Gini impurity 1 - sum_c p_c^2 of the row's predicted classes); its share per level is that
    over the sum of all levels'.
The grid is 32 x 32 per level (grid_for: smaller when fewer than 1024 images are evaluated).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .. import generate
from ..models.base import LatentModel

GRID = 32  # a 32 x 32 redraw grid per level, as variance_shares: estimates within about a percentage point
FACTORS = ("ink", "width", "slant", "class")
INK_THRESHOLD = 0.5  # a pixel is "ink" for the bounding box when its mean is above this


def grid_for(images: int) -> int:
    """The redraw grid's side for an evaluation of `images` images: GRID, or sqrt(images) (at least 4) when
    fewer than GRID^2 images are evaluated, so that a quick run's evaluation stays quick."""
    return min(GRID, max(4, math.isqrt(images)))


def variation_shares(model: LatentModel, steps: int = GRID, seed: int = 0) -> list[float]:
    """Share of generated-pixel variance from each level's control alone, bottom first (sums to 1)."""
    return generate.variance_shares(model, steps, seed)


def image_factors(x: Tensor) -> dict[str, Tensor]:
    """ink, width and slant of 1-channel images x [N, 1, H, W] in [0, 1]: each [N] (module docstring)."""
    img = x[:, 0].double()  # [N, H, W]
    N, H, W = img.shape
    ink = img.mean(dim=(1, 2))
    cols = (img > INK_THRESHOLD).any(dim=1)  # [N, W] columns holding ink
    idx = torch.arange(W, dtype=torch.float64)
    first = torch.where(cols, idx, torch.inf).min(dim=1).values
    last = torch.where(cols, idx, -torch.inf).max(dim=1).values
    width = torch.where(cols.any(dim=1), last - first + 1, torch.zeros_like(first))
    mass = img.sum(dim=(1, 2)).clamp_min(1e-12)
    r = torch.arange(H, dtype=torch.float64).view(1, H, 1)
    c = torch.arange(W, dtype=torch.float64).view(1, 1, W)
    r_mean = (img * r).sum(dim=(1, 2)) / mass
    c_mean = (img * c).sum(dim=(1, 2)) / mass
    dr, dc = r - r_mean.view(N, 1, 1), c - c_mean.view(N, 1, 1)
    cov_rc = (img * dr * dc).sum(dim=(1, 2)) / mass
    var_r = (img * dr.square()).sum(dim=(1, 2)) / mass
    slant = torch.where(var_r > 1e-9, -cov_rc / var_r.clamp_min(1e-9), torch.zeros_like(var_r))
    return {"ink": ink, "width": width, "slant": slant}


def gini(classes: Tensor, n_classes: int = 10) -> Tensor:
    """Gini impurity 1 - sum_c p_c^2 of each row of integer classes [R, S]: [R]."""
    counts = torch.nn.functional.one_hot(classes, n_classes).sum(dim=1).double()  # [R, C]
    p = counts / classes.shape[1]
    return 1 - p.square().sum(dim=1)


def shares(v: list[float]) -> list[float]:
    total = sum(v)
    return [vk / total if total > 0 else 0.0 for vk in v]


@torch.no_grad()
def factor_shares(model: LatentModel, classifier: nn.Module | None = None, steps: int = GRID,
                  seed: int = 0) -> dict[str, list[float] | None]:
    """For each factor, the share of its variation each level produces, bottom first (module docstring):
    {'ink': [...], 'width': [...], 'slant': [...], 'class': [...] or None without a classifier}."""
    model.eval()
    var: dict[str, list[float]] = {f: [] for f in FACTORS}
    for layer in range(1, len(model.latent_dims) + 1):
        g = torch.Generator(device=model.device).manual_seed(seed)
        x = model.decode_controls(generate.redraw_controls(model, layer, steps, g)).cpu()  # [steps * steps, 1, H, W]
        for name, f in image_factors(x).items():
            var[name].append(f.view(steps, steps).var(dim=1, unbiased=False).mean().item())  # across each row
        if classifier is not None:
            classifier.eval()
            pred = classifier(x.float()).argmax(dim=1)
            var["class"].append(gini(pred.view(steps, steps)).mean().item())
    return {f: shares(v) if v else None for f, v in var.items()}

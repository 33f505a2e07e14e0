"""Deskewing by image moments: a grey image with its slant taken out (--first-target deskew, schedule.py).

The classic MNIST normalisation. Read the image as a distribution of ink over pixel centres (x = column,
y = row): p(y, x) = img[y, x] / sum(img). With the centroid c_y = E[y] and the moments

    var_y = E[(y - c_y)^2],   cov = E[(x - c_x)(y - c_y)],   alpha = cov / var_y,

the ink's principal slant is x - c_x = alpha (y - c_y): each row y leans alpha (y - c_y) columns away from
the centroid. The deskewed image reads each pixel from where its row leans to (bilinear, zero outside):

    out[y, x] = img[y, x + alpha (y - c_y)]

so its ink has cov = 0: upright, same rows, same ink per row. Stroke width, height and identity stay.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def moments(img: Tensor) -> tuple[Tensor, Tensor]:
    """(c_y, alpha) of each image's ink, each [B]; alpha = cov / var_y, 0 for a blank or one-row image.
    img: [B, 1, H, W], values >= 0 (negative ones count as no ink)."""
    B, _, H, W = img.shape
    p = img[:, 0].float().clamp_min(0)
    mass = p.sum((1, 2)).clamp_min(1e-12)
    ys = torch.arange(H, dtype=p.dtype, device=p.device)[:, None]
    xs = torch.arange(W, dtype=p.dtype, device=p.device)[None, :]
    c_y = (p * ys).sum((1, 2)) / mass
    c_x = (p * xs).sum((1, 2)) / mass
    dy = ys - c_y[:, None, None]
    var_y = (p * dy * dy).sum((1, 2)) / mass
    cov = (p * dy * (xs - c_x[:, None, None])).sum((1, 2)) / mass
    return c_y, torch.where(var_y > 1e-6, cov / var_y.clamp_min(1e-6), torch.zeros_like(cov))


def deskew(img: Tensor) -> Tensor:
    """Each image of img [B, 1, H, W] with its slant removed (the module's equation), same shape and dtype."""
    if img.dim() != 4 or img.shape[1] != 1:
        raise ValueError(f"deskew takes grey images [B, 1, H, W]; got shape {tuple(img.shape)}")
    B, _, H, W = img.shape
    p = img.float()
    c_y, alpha = moments(p)
    ys = torch.arange(H, dtype=p.dtype, device=p.device)[None, :, None]
    xs = torch.arange(W, dtype=p.dtype, device=p.device)[None, None, :]
    src_x = xs + alpha[:, None, None] * (ys - c_y[:, None, None])  # [B, H, W]: where each pixel reads from
    return resample(p, src_x, ys.expand(B, H, W)).to(img.dtype)


def resample(img: Tensor, src_x: Tensor, src_y: Tensor) -> Tensor:
    """out[b, 0, y, x] = img[b, 0, src_y[b, y, x], src_x[b, y, x]] in pixel coordinates (bilinear, zero outside).
    img: [B, 1, H, W] float; src_x, src_y: [B, H, W]."""
    H, W = img.shape[-2:]
    grid = torch.stack(((src_x + 0.5) * 2 / W - 1, (src_y + 0.5) * 2 / H - 1), dim=-1)  # pixel centres, align_corners=False
    return F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

"""Style normalisation: a grey digit with its slant, width and stroke width made common (--first-target normalize).

The first stage of progressive training (schedule.py) shapes the top level's 2-d code alone. Scored on x, that
code spends its nats on whatever explains the most pixels: identity, but also slant, digit width and stroke width,
the factors the paper puts at the levels below. Scored on this image instead, each of those three is the same for
every image, so the top's code has only identity left to learn (docs/hierarchy.md). Three steps, each from the
image's ink read as a distribution over pixel centres (deskew.py):

1. slant: deskew.deskew (x - c_x = alpha (y - c_y) taken out).
2. width: columns scaled about the centroid c_x so the ink's horizontal spread sd_x = sqrt(E[(x - c_x)^2]) becomes
   WIDTH * W, the scale clamped to [1 / MAX_SCALE, MAX_SCALE] (a "1" is narrow by identity, not by style: it is
   widened at most MAX_SCALE times):  out[y, x] = img[y, c_x + (x - c_x) / s],  s = clamp(WIDTH * W / sd_x).
3. stroke width: a stroke of length l and width t covers A = l t pixels and has a boundary of about 2 l, so
   t = 2 A / P with A the inked pixels (> 1/2) and P their boundary length. P is counted along rows and columns
   (Manhattan length), on average 4 / pi times the true length over stroke directions (Cauchy-Crofton), so
   P_true = P pi / 4. The image with stroke width STROKE keeps its strokes' length and has A* = STROKE P_true / 2
   inked pixels: the image blurred (a 3 x 3 binomial filter) and thresholded at its A*-th largest value tau, softly
   (a linear ramp from 0 to 1 over tau -+ SOFT / 2, in units of the blurred image's peak), so ink stays grey at the
   edges like MNIST's and the background exactly 0.

WIDTH and STROKE are MNIST's medians (measured on the training set after the steps before them); the image size
and rows are kept, and blank images stay blank.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .deskew import deskew, resample

WIDTH = 0.125  # the ink's horizontal spread sd_x as a fraction of the image width (MNIST's median, deskewed)
MAX_SCALE = 1.5  # the width step scales by at most this factor either way
STROKE = 2.6  # the common stroke width in pixels (MNIST's median)
SOFT = 0.2  # the width of the threshold's linear ramp, as a fraction of the blurred image's peak


def spread_x(img: Tensor) -> tuple[Tensor, Tensor]:
    """(c_x, sd_x) of each image's ink, each [B]; sd_x 0 for a blank image. img: [B, 1, H, W]."""
    p = img[:, 0].float().clamp_min(0)
    mass = p.sum((1, 2)).clamp_min(1e-12)
    xs = torch.arange(img.shape[-1], dtype=p.dtype, device=p.device)
    col = p.sum(1) / mass[:, None]  # [B, W]: the ink's distribution over columns
    c_x = (col * xs).sum(1)
    return c_x, ((col * (xs - c_x[:, None]) ** 2).sum(1)).sqrt()


def normalize_width(img: Tensor) -> Tensor:
    """Step 2 of the module's docstring: columns scaled about c_x to a common spread; same shape."""
    B, _, H, W = img.shape
    c_x, sd_x = spread_x(img)
    s = (WIDTH * W / sd_x.clamp_min(1e-6)).clamp(1 / MAX_SCALE, MAX_SCALE)
    s = torch.where(sd_x > 0, s, torch.ones_like(s))
    xs = torch.arange(W, dtype=torch.float32, device=img.device)
    src_x = c_x[:, None] + (xs[None, :] - c_x[:, None]) / s[:, None]  # [B, W]: where each column reads from
    ys = torch.arange(H, dtype=torch.float32, device=img.device)
    return resample(img.float(), src_x[:, None, :].expand(B, H, W), ys[None, :, None].expand(B, H, W))


def stroke_width(img: Tensor) -> tuple[Tensor, Tensor]:
    """(t, P_true) of each image: its stroke width t = 2 A / P_true and boundary length P_true (step 3), each [B]."""
    ink = (img[:, 0] > 0.5).float()
    area = ink.sum((1, 2))
    padded = F.pad(ink, (1, 1, 1, 1))
    boundary = (padded[:, :, 1:] - padded[:, :, :-1]).abs().sum((1, 2)) + (padded[:, 1:] - padded[:, :-1]).abs().sum((1, 2))
    p_true = boundary * math.pi / 4
    return 2 * area / p_true.clamp_min(1e-6), p_true


def normalize_stroke(img: Tensor) -> Tensor:
    """Step 3 of the module's docstring: the strokes redrawn STROKE pixels wide; same shape, values in [0, 1]."""
    H, W = img.shape[-2:]
    _, p_true = stroke_width(img)
    k = (STROKE * p_true / 2).round().clamp(1, H * W).long()  # A*: how many pixels to ink
    kernel = torch.tensor([1.0, 2.0, 1.0], device=img.device)
    kernel = (kernel[:, None] * kernel[None, :] / 16).view(1, 1, 3, 3)
    blurred = F.conv2d(img.float(), kernel, padding=1)
    ranked = blurred.flatten(1).sort(dim=1, descending=True).values  # [B, H W]
    tau = ranked.gather(1, (k - 1)[:, None])[:, 0]  # the A*-th largest blurred value
    peak = ranked[:, 0].clamp_min(1e-6)
    out = ((blurred - tau[:, None, None, None]) / (SOFT * peak[:, None, None, None]) + 0.5).clamp(0, 1)
    return torch.where((p_true > 0)[:, None, None, None], out, torch.zeros_like(out))  # blank stays blank


def normalize(img: Tensor) -> Tensor:
    """Each image of img [B, 1, H, W] with slant, width and stroke width made common (the module's three steps);
    same shape and dtype."""
    if img.dim() != 4 or img.shape[1] != 1:
        raise ValueError(f"normalize takes grey images [B, 1, H, W]; got shape {tuple(img.shape)}")
    return normalize_stroke(normalize_width(deskew(img))).to(img.dtype)

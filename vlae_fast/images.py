"""The one image writer: tensors of images -> a PNG grid, an animated GIF of its rows, or the raw array as .npz.

A GIF shows the PNG grid one row at a time: frame r is exactly the PNG's row r (pads included), so a
traversal animates down its grid and a Gibbs chain (rows = steps) plays forward. Pillow merges
consecutive identical frames into one longer frame. Grey images are stored exactly; colour frames are
limited to 256 colours each (GIF's palette).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import ConfigError


GIF_FRAME_MS = 200  # one GIF frame (a grid row) on screen: 5 frames a second


def as_grid(x: Tensor, ncol: int | None = None, pad_value: float = 1.0) -> Tensor:
    """x as [rows, cols, C, H, W] float in [0, 1] on the CPU: a grid as it is, or [N, C, H, W] tiled ncol
    per row (default ~sqrt(N)), the last row filled with blank (pad_value) images."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 4:
        N = x.shape[0]
        ncol = ncol or max(1, int(np.ceil(np.sqrt(N))))
        nrow = (N + ncol - 1) // ncol
        fill = torch.full((nrow * ncol - N, *x.shape[1:]), pad_value)
        x = torch.cat([x, fill]).view(nrow, ncol, *x.shape[1:])
    if x.dim() != 5:
        raise ValueError(f"expected [N, C, H, W] or [rows, cols, C, H, W]; got {tuple(x.shape)}")
    return x


def grid(x: Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one uint8 array [H', W'] (grey) or [H', W', 3] (colour).

    x: [rows, cols, C, H, W] (a grid already) or [N, C, H, W] (tiled ncol per row, default ~sqrt(N)).
    """
    x = as_grid(x, ncol, pad_value)
    R, K, C, H, W = x.shape
    canvas = torch.full((C, pad + R * (H + pad), pad + K * (W + pad)), pad_value)
    for r in range(R):
        for k in range(K):
            top, left = pad + r * (H + pad), pad + k * (W + pad)
            canvas[:, top : top + H, left : left + W] = x[r, k]
    arr = (canvas * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if C == 1 else arr


def save_gif(frames: list[np.ndarray], path: Path, frame_ms: int = GIF_FRAME_MS) -> None:
    """uint8 frames ([H, W] or [H, W, 3], one size) as a looping GIF."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0)


def check_writable(path: str | Path, suffixes: tuple[str, ...] = (".png", ".gif", ".npz")) -> Path:
    """Fail early (before long work) if `path` has the wrong suffix or its folder cannot be written."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"--out {path}: use a file name ending in {' or '.join(suffixes)}")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot create folder {parent} ({e.strerror})") from None
    if path.is_dir() or not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"--out {path}: not writable; choose another path")
    return path


def save_images(x: Tensor, path: str | Path, ncol: int | None = None, **arrays: Tensor) -> Path:
    """Write x as a PNG grid, a GIF of that grid's rows (path ending in .gif: frame r = the PNG's row r),
    or (path ending in .npz) the raw float32 array under key 'x' plus `arrays`."""
    path = check_writable(path)
    try:
        if path.suffix.lower() == ".npz":
            extra = {k: v.detach().float().cpu().numpy() for k, v in arrays.items()}
            np.savez_compressed(path, x=x.detach().float().cpu().numpy(), **extra)
        elif path.suffix.lower() == ".gif":
            rows = as_grid(x, ncol)
            save_gif([grid(rows[r : r + 1]) for r in range(rows.shape[0])], path)
        else:
            Image.fromarray(grid(x, ncol)).save(path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path


def _side_by_side(panels: list[tuple[str, np.ndarray]], gap: int) -> np.ndarray:
    """uint8 tiles side by side on white, each under its label: [H, W] (grey) or [H, W, 3]."""
    from PIL import ImageDraw  # only this writer draws text

    label_h = 14  # PIL's default bitmap font is ~11 px high
    height = label_h + max(t.shape[0] for _, t in panels)
    width = sum(t.shape[1] for _, t in panels) + gap * (len(panels) - 1)
    mode = "L" if panels[0][1].ndim == 2 else "RGB"
    canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
    draw, left = ImageDraw.Draw(canvas), 0
    for label, tile in panels:
        draw.text((left + 2, 1), label, fill=0 if mode == "L" else (0, 0, 0))
        canvas.paste(Image.fromarray(tile), (left, label_h))
        left += tile.shape[1] + gap
    return np.asarray(canvas)


def save_panels(panels: list[tuple[str, Tensor]], path: str | Path, gap: int = 8,
                **arrays: Tensor) -> Path:
    """Write labelled image grids side by side as one PNG (label above each panel), a GIF, or (path
    ending in .npz) the given `arrays` by name. Each panel: [N, C, H, W] or [rows, cols, C, H, W], as for grid().

    GIF: a [rows, cols, C, H, W] panel plays its rows over time (frame t tiles row t's images as a flat
    panel is tiled, label "... (t/rows)"); [N, C, H, W] panels stay still beside it.
    """
    path = check_writable(path)
    try:
        if path.suffix.lower() == ".npz":
            np.savez_compressed(path, **{k: v.detach().float().cpu().numpy() for k, v in arrays.items()})
            return path
        if path.suffix.lower() != ".gif":
            Image.fromarray(_side_by_side([(label, grid(x)) for label, x in panels], gap)).save(path)
            return path
        T = max(x.shape[0] if x.dim() == 5 else 0 for _, x in panels)
        if T == 0:
            raise ConfigError(f"--out {path}: nothing here moves over time to animate (no panel has rows of "
                              "steps; for `vlae gibbs` add --every K); write a .png instead")
        frames = []
        for t in range(T):
            frames.append(_side_by_side([(f"{label} ({min(t, x.shape[0] - 1) + 1}/{x.shape[0]})",
                                          grid(x[min(t, x.shape[0] - 1)])) if x.dim() == 5 else (label, grid(x))
                                         for label, x in panels], gap))
        save_gif(frames, path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path

"""The one image writer: tensors of images -> a PNG grid, or the raw array as .npz."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .errors import ConfigError


def grid(x: Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one uint8 array [H', W'] (grey) or [H', W', 3] (colour).

    x: [rows, cols, C, H, W] (a grid already) or [N, C, H, W] (tiled ncol per row, default ~sqrt(N)).
    """
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 4:
        N = x.shape[0]
        ncol = ncol or max(1, int(np.ceil(np.sqrt(N))))
        nrow = (N + ncol - 1) // ncol
        fill = torch.full((nrow * ncol - N, *x.shape[1:]), pad_value)
        x = torch.cat([x, fill]).view(nrow, ncol, *x.shape[1:])
    if x.dim() != 5:
        raise ValueError(f"expected [N, C, H, W] or [rows, cols, C, H, W]; got {tuple(x.shape)}")
    R, K, C, H, W = x.shape
    canvas = torch.full((C, pad + R * (H + pad), pad + K * (W + pad)), pad_value)
    for r in range(R):
        for k in range(K):
            top, left = pad + r * (H + pad), pad + k * (W + pad)
            canvas[:, top : top + H, left : left + W] = x[r, k]
    arr = (canvas * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    return arr[:, :, 0] if C == 1 else arr


def check_writable(path: str | Path, suffixes: tuple[str, ...] = (".png", ".npz")) -> Path:
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
    """Write x as a PNG grid, or (path ending in .npz) the raw float32 array under key 'x' plus `arrays`."""
    path = check_writable(path)
    try:
        if path.suffix.lower() == ".npz":
            extra = {k: v.detach().float().cpu().numpy() for k, v in arrays.items()}
            np.savez_compressed(path, x=x.detach().float().cpu().numpy(), **extra)
        else:
            Image.fromarray(grid(x, ncol)).save(path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path


def save_panels(panels: list[tuple[str, Tensor]], path: str | Path, gap: int = 8,
                **arrays: Tensor) -> Path:
    """Write labelled image grids side by side as one PNG (label above each panel), or (path ending
    in .npz) the given `arrays` by name. Each panel: [N, C, H, W] or [rows, cols, C, H, W], as for grid()."""
    from PIL import ImageDraw  # only this writer draws text

    path = check_writable(path)
    try:
        if path.suffix.lower() == ".npz":
            np.savez_compressed(path, **{k: v.detach().float().cpu().numpy() for k, v in arrays.items()})
            return path
        tiles = [grid(x) for _, x in panels]
        label_h = 14  # PIL's default bitmap font is ~11 px high
        height = label_h + max(t.shape[0] for t in tiles)
        width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
        mode = "L" if tiles[0].ndim == 2 else "RGB"
        canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
        draw, left = ImageDraw.Draw(canvas), 0
        for (label, _), tile in zip(panels, tiles):
            draw.text((left + 2, 1), label, fill=0 if mode == "L" else (0, 0, 0))
            canvas.paste(Image.fromarray(tile), (left, label_h))
            left += tile.shape[1] + gap
        canvas.save(path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path

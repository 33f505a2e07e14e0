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
MAX_PNG_PIXELS = Image.MAX_IMAGE_PIXELS  # ~89 M: larger PNGs trip PIL's (and viewers') decompression-bomb guard
MAX_ARRAY_BYTES = 2 << 30  # the most float32 image data one command builds in memory, whatever the machine has


def columns(n: int, nrow: int | None = None) -> int:
    """Images per row for n images: n / nrow for a given row count, else the most square layout that fills
    every row (8 -> 2 x 4), or ~sqrt(n) per row where no divisor is close to square (7 -> 3 x 3, one empty)."""
    if nrow:
        return max(1, -(-n // nrow))
    root = np.sqrt(n)
    fits = [c for c in range(int(np.ceil(root)), int(2 * root) + 1) if n % c == 0]
    return fits[0] if fits else max(1, int(np.ceil(root)))


def as_grid(x: Tensor, ncol: int | None = None, pad_value: float = 1.0) -> Tensor:
    """x as [rows, cols, C, H, W] float in [0, 1] on the CPU: a grid as it is, or [N, C, H, W] tiled ncol
    per row (default: columns(N)), the last row filled with blank (pad_value) images."""
    x = x.detach().float().cpu().clamp(0, 1)
    if x.dim() == 4:
        N = x.shape[0]
        ncol = ncol or columns(N)
        nrow = (N + ncol - 1) // ncol
        fill = torch.full((nrow * ncol - N, *x.shape[1:]), pad_value)
        x = torch.cat([x, fill]).view(nrow, ncol, *x.shape[1:])
    if x.dim() != 5:
        raise ValueError(f"expected [N, C, H, W] or [rows, cols, C, H, W]; got {tuple(x.shape)}")
    return x


def grid(x: Tensor, ncol: int | None = None, pad: int = 2, pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one uint8 array [H', W'] (grey) or [H', W', 3] (colour).

    x: [rows, cols, C, H, W] (a grid already) or [N, C, H, W] (tiled ncol per row, default: columns(N)).
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
    """uint8 frames ([H, W] or [H, W, 3], one size) as a looping GIF. Without Pillow's frame optimisation: its
    delta frames (unchanged pixels made transparent) showed wrong pixels for some frames using all 256 grey levels."""
    images = [Image.fromarray(f) for f in frames]
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:], duration=frame_ms, loop=0,
                   optimize=False)


def check_writable(path: str | Path, suffixes: tuple[str, ...] = (".png", ".gif", ".npz"), option: str = "--out") -> Path:
    """Fail early (before long work) if `path` has the wrong suffix or its folder is missing or read-only.
    Creates nothing: a folder that does not exist is an error, not a guess. `option` names it in messages."""
    path = Path(path)
    if path.suffix.lower() not in suffixes:
        raise ConfigError(f"{option} {path}: use a file name ending in {' or '.join(suffixes)}")
    parent = path.parent
    if not parent.is_dir():
        what = "is a file, not a folder" if parent.exists() else "does not exist"
        raise ConfigError(f"{option} {path}: folder {parent} {what}; create the folder first or choose another path")
    if path.is_dir() or not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ConfigError(f"{option} {path}: not writable; choose another path")
    return path


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def available_memory() -> int:
    """Bytes of memory available now (Linux: MemAvailable), or MAX_ARRAY_BYTES where that is unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return MAX_ARRAY_BYTES


def check_request(n: int, image_shape: tuple[int, ...], path: str | Path, option: str, ncol: int | None = None) -> None:
    """Refuse, before any work, a request for n images that will not fit: the float32 array in memory
    (at most MAX_ARRAY_BYTES, and a quarter of the memory available: the array, its NumPy copy and the
    writer's buffers) or, for a PNG, a grid beyond MAX_PNG_PIXELS. `option` names what asked for them
    (e.g. "--n 100000")."""
    C, H, W = image_shape
    need = 4 * n * C * H * W
    limit = min(MAX_ARRAY_BYTES, available_memory() // 4)
    if need > limit:
        fit = max(1, limit // (4 * C * H * W))
        raise ConfigError(f"{option} asks for {n} images of {C}x{H}x{W}: {_gb(need)} as float32, more than the "
                          f"{_gb(limit)} this command may use here; ask for at most {fit} images")
    if Path(path).suffix.lower() == ".png":
        ncol = ncol or columns(n)
        nrow = -(-n // ncol)
        pixels = (2 + nrow * (H + 2)) * (2 + ncol * (W + 2))
        if pixels > MAX_PNG_PIXELS:
            raise ConfigError(f"{option} asks for a {nrow} x {ncol} grid of {H}x{W} images: a PNG of "
                              f"{pixels / 1e6:.0f} M pixels, more than the {MAX_PNG_PIXELS / 1e6:.0f} M that image "
                              "readers accept; ask for fewer images or write .npz")


def _font():
    from PIL import ImageFont

    return ImageFont.load_default()


def _text_size(text: str) -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox(text)
    return right - left, bottom


def labelled(tile: np.ndarray, title: str | None = None, row_labels: list[str] | None = None,
             rows: int = 1, margin: int = 4) -> np.ndarray:
    """A grid (grid()'s array) with a title line above it and a label left of each of its `rows` rows."""
    from PIL import ImageDraw

    font = _font()
    line_h = _text_size("Ag")[1] + 2 * margin  # text plus a margin above and below
    top = line_h * len(title.splitlines()) if title else 0
    left = (max(_text_size(t)[0] for t in row_labels) + 2 * margin) if row_labels else 0
    mode = "L" if tile.ndim == 2 else "RGB"
    white, black = (255, 0) if mode == "L" else ((255, 255, 255), (0, 0, 0))
    title_w = max((_text_size(t)[0] + 2 * margin for t in title.splitlines()), default=0) if title else 0
    canvas = Image.new(mode, (max(left + tile.shape[1], title_w), top + tile.shape[0]), white)
    canvas.paste(Image.fromarray(tile), (left, top))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(title.splitlines() if title else []):
        draw.text((left + margin, i * line_h + margin), line, fill=black, font=font)
    if row_labels:
        row_h = tile.shape[0] / rows
        for r, text in enumerate(row_labels):
            y = top + int(r * row_h + row_h / 2 - _text_size(text)[1] / 2)
            draw.text((margin, y), text, fill=black, font=font)
    return np.asarray(canvas)


def save_images(x: Tensor, path: str | Path, ncol: int | None = None, title: str | None = None,
                row_labels: list[str] | None = None, **arrays: Tensor) -> Path:
    """Write x as a PNG grid (with an optional title above and labels left of the rows), a GIF of that
    grid's rows (path ending in .gif: frame r = the PNG's row r), or (path ending in .npz) the raw float32
    array under key 'x' plus `arrays`."""
    path = check_writable(path)
    try:
        if path.suffix.lower() == ".npz":
            extra = {k: v.detach().float().cpu().numpy() for k, v in arrays.items()}
            np.savez_compressed(path, x=x.detach().float().cpu().numpy(), **extra)
        elif path.suffix.lower() == ".gif":
            rows = as_grid(x, ncol)
            save_gif([grid(rows[r : r + 1]) for r in range(rows.shape[0])], path)
        else:
            tile = grid(x, ncol)
            if title or row_labels:
                tile = labelled(tile, title, row_labels, rows=x.shape[0] if x.dim() == 5 else 1)
            Image.fromarray(tile).save(path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path


def _side_by_side(panels: list[tuple[str, np.ndarray]], gap: int) -> np.ndarray:
    """uint8 tiles side by side on white, each under its label (labelled(): a margin above and below the
    text): [H, W] (grey) or [H, W, 3]."""
    tiles = [labelled(tile, label) for label, tile in panels]
    height = max(t.shape[0] for t in tiles)
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    mode = "L" if tiles[0].ndim == 2 else "RGB"
    canvas = Image.new(mode, (width, height), 255 if mode == "L" else (255, 255, 255))
    left = 0
    for tile in tiles:
        canvas.paste(Image.fromarray(tile), (left, 0))
        left += tile.shape[1] + gap
    return np.asarray(canvas)


def save_panels(panels: list[tuple[str, Tensor]], path: str | Path, gap: int = 8,
                **arrays: Tensor) -> Path:
    """Write labelled image grids side by side as one PNG (a title above each panel), a GIF, or (path
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
        H, W = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)  # labels "(t/T)" vary in width
        frames = [np.pad(f, [(0, H - f.shape[0]), (0, W - f.shape[1])] + [(0, 0)] * (f.ndim - 2), constant_values=255)
                  for f in frames]
        save_gif(frames, path)
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path

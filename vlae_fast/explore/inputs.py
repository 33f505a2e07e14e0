"""Images from outside the data set (an upload, a file named on the command line), decoded safely, and the
`--from` / `--to` image lists of `vlae swap`."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from ..data.imagecache import DECODE_ERRORS, decode
from ..errors import ConfigError

FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")  # what Pillow may decode here; nothing more exotic
MAX_BYTES = 4 << 20  # 4 MiB: a photo of a digit or a face; the page refuses larger uploads before reading them
MAX_PIXELS = 4096 * 4096  # checked from the header, before decoding: no decompression bombs


class InputError(ConfigError):
    """A request or input image the explorer cannot use; `status` is the HTTP status that says so."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def decode_image(data: bytes, image_shape: tuple[int, int, int], what: str = "the image") -> Tensor:
    """An image file's bytes -> [C, H, W] float32 in [0, 1] in the model's shape: centre-cropped to a
    square and resized as the folder data set is (grey-level for a 1-channel model). InputError if it is
    empty, too large, not one of FORMATS, or corrupt."""
    C, H, W = image_shape
    if not data:
        raise InputError(f"{what} is empty; send a PNG or JPEG file")
    if len(data) > MAX_BYTES:
        raise InputError(f"{what} is {len(data)} bytes; the limit is {MAX_BYTES} ({MAX_BYTES >> 20} MiB)", 413)
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as img:  # reads the header only
            w, h = img.size
    except Image.DecompressionBombError:  # Pillow's own limit (far above ours) refuses it already
        raise InputError(f"{what} claims too many pixels; the limit is {MAX_PIXELS} pixels (4096x4096)", 413) from None
    except (UnidentifiedImageError, *DECODE_ERRORS):
        raise InputError(f"{what} is not a {', '.join(FORMATS)} image", 415) from None
    if w * h > MAX_PIXELS:
        raise InputError(f"{what} is {w}x{h} pixels; the limit is {MAX_PIXELS} pixels (4096x4096)", 413)
    if H != W:
        raise InputError(f"this model's images are {H}x{W}; only square models take outside images")
    try:
        a = decode(data, H, "L" if C == 1 else "RGB")  # [C, H, W] uint8
    except DECODE_ERRORS as e:
        raise InputError(f"{what} could not be decoded ({e}); it may be truncated or corrupt", 415) from None
    return torch.from_numpy(a.copy()).float().div_(255.0)


def read_images(specs: str, image_shape: tuple[int, int, int], test_images: Callable[[], "object"],
                option: str) -> Tensor:
    """Images named by a comma-separated list of test-set indices and/or image files: [N, C, H, W].

    test_images: called once, only if an index is given; returns the test split (an ImageSet)."""
    items = [s.strip() for s in specs.split(",") if s.strip()]
    if not items:
        raise ConfigError(f"{option}: give test-set indices or image files, comma-separated")
    data, out = None, []
    for item in items:
        if item.isdigit():
            data = data if data is not None else test_images()
            i = int(item)
            if not 0 <= i < len(data):
                raise ConfigError(f"{option} {item}: the test set has images 0 to {len(data) - 1}")
            out.append(data.batch(torch.tensor([i], device=data.x.device))[0].cpu())
        else:
            path = Path(item)
            try:
                blob = path.read_bytes()
            except OSError as e:
                raise ConfigError(f"{option} {item}: neither a test-set index nor a readable image file ({e.strerror})") from None
            out.append(decode_image(blob, image_shape, f"{option} {item}"))
    return torch.stack(out)

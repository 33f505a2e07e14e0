"""Any folder of PNG/JPEG images (recursive): center crop to a square, resize to --image-size,
grey-level or RGB (detected from the first images, or forced). Decoded once into a uint8 cache.
Split: 80/20 by sorted file name (every fifth image is a test image). No labels."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import ImageSet
from .imagecache import cached_images, detect_mode, list_folder, split_by_name, take

COLORS = {"auto": None, "grayscale": "L", "rgb": "RGB"}


def load_folder(split: str, data_dir: str | Path | None = None, image_size: int = 64, color: str = "auto",
                show_progress: bool = True) -> ImageSet:
    """The images under data_dir as uint8 [N, C, image_size, image_size]; C = 1 (grey) or 3 (RGB)."""
    if data_dir is None:
        raise DataError("the folder data set needs --data-dir PATH, the folder that holds your images")
    if color not in COLORS:
        raise DataError(f"color must be one of {', '.join(COLORS)}; got {color!r}")
    if image_size < 4:
        raise DataError(f"--image-size must be at least 4 pixels; got {image_size}")
    files = list_folder(Path(data_dir).expanduser())
    mode = COLORS[color] or detect_mode(files)
    images, names = cached_images(files, "folder", image_size, mode, None, show_progress)
    return ImageSet("folder", split, take(images, split_by_name(names, split, files.root)), None)

"""What every data set returns: all images of one split in one tensor, batches drawn by index."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..paths import cache_root


@dataclass
class ImageSet:
    """One split of a data set, held in memory.

    x: [N, C, H, W], float32 in [0, 1] (or uint8, converted per batch for large sets);
    labels: [N] int64, or None where the data set has none.
    """

    name: str
    split: str
    x: Tensor
    labels: Tensor | None

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        C, H, W = self.x.shape[1:]
        return int(C), int(H), int(W)

    def to(self, device: torch.device | str) -> "ImageSet":
        labels = None if self.labels is None else self.labels.to(device)
        return ImageSet(self.name, self.split, self.x.to(device), labels)

    def head(self, n: int | None) -> "ImageSet":
        """The first n images (all of them for n None or 0)."""
        if not n:
            return self
        labels = None if self.labels is None else self.labels[:n]
        return ImageSet(self.name, self.split, self.x[:n], labels)

    def batch(self, idx: Tensor) -> Tensor:
        """Images at `idx` ([B] int64 on x's device) as float32 in [0, 1]: [B, C, H, W]."""
        x = self.x.index_select(0, idx)
        return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def default_data_root() -> Path:
    """The user cache directory where data sets are looked for (and downloaded to) by default."""
    return cache_root() / "data"


def resolve_data_dir(name: str, data_dir: str | Path | None) -> tuple[Path, str]:
    """Where to read data set `name` from, and how that place was chosen (for error messages).

    --data-dir wins, then $VLAE_DATA_DIR, then the user cache. An env or cache root may hold the
    files directly or in a `<name>/` subfolder.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "--data-dir"
    env = os.environ.get("VLAE_DATA_DIR")
    root, how = (Path(env).expanduser(), "$VLAE_DATA_DIR") if env else (default_data_root(), "the user cache")
    return (root / name if (root / name).is_dir() or not env else root), how

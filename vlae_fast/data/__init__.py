"""Data sets by name. Each loader returns an ImageSet (all of one split in memory)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DataError
from .base import ImageSet, default_data_root, resolve_data_dir
from .mnist import load_mnist

LOADERS: dict[str, Callable[..., ImageSet]] = {
    "mnist": load_mnist,
}


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, **options) -> ImageSet:
    """Load split 'train' or 'test' of data set `name`, reading from data_dir if given."""
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, data_dir, **options)


__all__ = ["ImageSet", "LOADERS", "default_data_root", "load_dataset", "resolve_data_dir"]

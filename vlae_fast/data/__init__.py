"""Data sets by name. Each loader returns an ImageSet (all of one split in memory)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import DataError
from .base import ImageSet, default_data_root, resolve_data_dir
from .celeba import load_celeba
from .folder import load_folder
from .mnist import load_mnist
from .svhn import load_svhn

LOADERS: dict[str, Callable[..., ImageSet]] = {
    "mnist": load_mnist,
    "svhn": load_svhn,
    "celeba": load_celeba,
    "folder": load_folder,
}


def load_dataset(name: str, split: str, data_dir: str | Path | None = None, **options) -> ImageSet:
    """Load split 'train' or 'test' of data set `name`, reading from data_dir if given."""
    if name not in LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](split, data_dir, **options)


def data_options(name: str, image_size: int | None = None, color: str | None = None,
                 svhn_extra: bool = False) -> dict:
    """The loader options of `vlae train` for data set `name` (stored in the checkpoint so that
    reconstruct / encode reload the same images); DataError for an option the set does not take."""
    opts: dict = {}
    if image_size is not None or color is not None:
        if name != "folder":
            raise DataError(f"--image-size, --grayscale and --rgb apply to the folder data set only, not {name}")
        opts.update({"image_size": image_size} if image_size is not None else {})
        opts.update({"color": color} if color is not None else {})
    if svhn_extra:
        if name != "svhn":
            raise DataError(f"--svhn-extra applies to the svhn data set only, not {name}")
        opts["extra"] = True
    return opts


def image_shape_of(name: str, data_dir: str | Path | None = None, **options) -> tuple[int, int, int] | None:
    """(C, H, W) of a data set whose shape depends on its files and options (folder), else None."""
    if name != "folder":
        return None
    return load_folder("train", data_dir, **options).image_shape


__all__ = ["ImageSet", "LOADERS", "checkpoint_data_dir", "data_options", "default_data_root", "image_shape_of", "load_dataset", "load_for_checkpoint",
           "resolve_data_dir"]


def checkpoint_data_dir(ckpt, data_dir: str | Path | None = None) -> str | Path | None:
    """Where every command that takes a checkpoint reads data: --data-dir, else the folder the run was
    trained from (if it still exists), else None (= $VLAE_DATA_DIR, else the user cache)."""
    stored = ckpt.train.get("data_dir")
    if data_dir is None and stored and Path(stored).is_dir():
        return stored
    return data_dir


def load_for_checkpoint(ckpt, split: str, data_dir: str | Path | None = None) -> ImageSet:
    """The data set a checkpoint was trained on (its config's name and the loader options it stored),
    read from checkpoint_data_dir(ckpt, data_dir)."""
    return load_dataset(ckpt.config.dataset, split, checkpoint_data_dir(ckpt, data_dir),
                        **ckpt.train.get("data_options", {}))


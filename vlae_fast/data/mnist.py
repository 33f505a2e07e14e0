"""MNIST from the four standard IDX files (gzipped or not), downloaded with SHA-256 checks if missing."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import ImageSet, resolve_data_dir
from .download import download

FILES = {  # split -> (images, labels)
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# SHA-256 of the published .gz files (what the mirrors serve).
SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]
IDX_DTYPE = {0x08: np.uint8}  # MNIST uses only unsigned bytes


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file (https://yann.lecun.com/exdb/mnist/ format), gzipped if its name ends in .gz."""
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; replace it with an intact copy") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPE:
        raise DataError(f"{path} is not an IDX file of unsigned bytes (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims)) if dims else 0
    if len(raw) - header != expected:
        raise DataError(f"{path} holds {len(raw) - header} data bytes but its header promises {expected} ({dims}); "
                        "the file is truncated or corrupt")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _fetch_missing(directory: Path, stems: list[str], how: str, mirrors: list[str]) -> None:
    missing = [s for s in stems if _find(directory, s) is None]
    if not missing or os.environ.get("VLAE_NO_DOWNLOAD"):
        return
    errors = []
    for stem in missing:
        try:
            download(stem + ".gz", mirrors, SHA256[stem + ".gz"], directory)
        except DataError as e:
            errors.append(str(e))
    if errors:
        wanted = ", ".join(s + ".gz" for s in missing)
        raise DataError(f"MNIST files missing in {directory} (chosen by {how}) and the download failed. "
                        f"Put {wanted} (gzipped or not) there, or point --data-dir / $VLAE_DATA_DIR at a "
                        f"folder that holds them. Download errors: {' | '.join(errors)}")


def load_mnist(split: str, data_dir: str | Path | None = None, mirrors: list[str] | None = None) -> ImageSet:
    """MNIST `split` ('train' or 'test') as float32 [N, 1, 28, 28] in [0, 1] with int64 labels."""
    if split not in FILES:
        raise DataError(f"MNIST has splits 'train' and 'test'; got {split!r}")
    directory, how = resolve_data_dir("mnist", data_dir)
    stems = list(FILES[split])
    _fetch_missing(directory, stems, how, MIRRORS if mirrors is None else mirrors)
    paths = [_find(directory, s) for s in stems]
    if None in paths:
        wanted = ", ".join(s + ".gz" for s, p in zip(stems, paths) if p is None)
        raise DataError(f"MNIST files missing in {directory} (chosen by {how}): put {wanted} there "
                        "(downloading is turned off by $VLAE_NO_DOWNLOAD)")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{paths[0]} holds an array of shape {images.shape}, not [N, 28, 28] images")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(f"{paths[1]} holds {labels.shape} labels for {images.shape[0]} images in {paths[0]}")
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)  # [N, 1, 28, 28]
    return ImageSet("mnist", split, x, torch.from_numpy(labels.astype(np.int64)))

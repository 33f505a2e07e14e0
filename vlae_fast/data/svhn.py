"""SVHN cropped digits from the official MATLAB v5 files train_32x32.mat, test_32x32.mat and
(optionally, added to training as the authors did) extra_32x32.mat: X [32, 32, 3, N] uint8 and
y [N, 1] with label 10 meaning digit 0. Read with scipy; downloaded with a checksum if missing."""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import scipy.io
import torch

from ..errors import DataError
from .base import ImageSet, resolve_data_dir
from .download import download

FILES = {"train": "train_32x32.mat", "test": "test_32x32.mat", "extra": "extra_32x32.mat"}
# The publisher gives no SHA-256; these are the MD5s every SVHN loader checks (as torchvision).
MD5 = {
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
    "extra_32x32.mat": "a93ce644f1a588dc4d68dda5feec44a7",
}
MIRRORS = ["http://ufldl.stanford.edu/housenumbers/"]
HOME = "http://ufldl.stanford.edu/housenumbers/"
MAT_ERRORS = (OSError, ValueError, TypeError, KeyError, struct.error, zlib.error, scipy.io.matlab.MatReadError)


def read_svhn_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One SVHN .mat -> images uint8 [N, 3, 32, 32] and labels int64 [N] in 0..9."""
    try:
        mat = scipy.io.loadmat(path, variable_names=["X", "y"])
    except NotImplementedError:  # scipy's answer to MATLAB v7.3 (HDF5) files
        raise DataError(f"{path} is a MATLAB v7.3 file; SVHN's official files are MATLAB v5: "
                        f"replace it with the file from {HOME}") from None
    except MAT_ERRORS as e:
        raise DataError(f"cannot read {path} as a MATLAB file ({e}); it may be truncated: "
                        f"replace it with an intact copy from {HOME}") from None
    if "X" not in mat or "y" not in mat:
        raise DataError(f"{path} lacks the variables X and y of an SVHN cropped-digits file "
                        f"(it has {sorted(k for k in mat if not k.startswith('__'))})")
    X, y = mat["X"], mat["y"]
    if X.ndim != 4 or X.shape[:3] != (32, 32, 3) or X.dtype != np.uint8:
        raise DataError(f"{path}: X is {X.dtype} of shape {list(X.shape)}, not uint8 [32, 32, 3, N]")
    y = y.reshape(-1) if y.ndim == 2 and 1 in y.shape else y
    if y.ndim != 1 or y.shape[0] != X.shape[3]:
        raise DataError(f"{path}: y has shape {list(mat['y'].shape)} for {X.shape[3]} images; expected [N, 1]")
    if y.size and (y.min() < 0 or y.max() > 10):
        raise DataError(f"{path}: labels range over {int(y.min())}..{int(y.max())}; SVHN's are 1..10")
    images = np.ascontiguousarray(X.transpose(3, 2, 0, 1))  # [32, 32, 3, N] -> [N, 3, 32, 32]
    return images, (y.astype(np.int64) % 10)  # label 10 is digit 0


def _fetch(directory: Path, name: str, how: str) -> Path:
    path = directory / name
    if path.is_file():
        return path
    where = (f"put {name} in {directory} (chosen by {how}), or point --data-dir / $VLAE_DATA_DIR at the "
             f"folder that holds it; get it from {HOME}")
    if os.environ.get("VLAE_NO_DOWNLOAD"):
        raise DataError(f"SVHN file {name} missing: {where} (downloading is turned off by $VLAE_NO_DOWNLOAD)")
    try:
        return download(name, MIRRORS, MD5[name], directory, algorithm="md5")
    except DataError as e:
        raise DataError(f"SVHN file {name} missing and the download failed ({e}): {where}") from None


def load_svhn(split: str, data_dir: str | Path | None = None, extra: bool = False) -> ImageSet:
    """SVHN `split` ('train', 'test' or 'extra') as uint8 [N, 3, 32, 32] with labels 0..9;
    extra=True appends extra_32x32.mat to the training split (the authors' setting)."""
    if split not in FILES:
        raise DataError(f"SVHN has splits {', '.join(FILES)}; got {split!r}")
    directory, how = resolve_data_dir("svhn", data_dir)
    names = [FILES[split]] + ([FILES["extra"]] if extra and split == "train" else [])
    parts = [read_svhn_mat(_fetch(directory, n, how)) for n in names]
    x = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    return ImageSet("svhn", split, torch.from_numpy(x), torch.from_numpy(y))

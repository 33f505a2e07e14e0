"""Image files (a folder, recursive, or a zip read in place) decoded once into a uint8 cache.

The cache is a raw numpy memmap [N, C, S, S] uint8 plus a JSON sidecar (shape, kept file names,
skipped files), written into `.vlae-cache/` beside the data (or the user cache if that folder is
read-only). Its name carries a signature of the file list (names, sizes, times) and the decoding
settings, so adding, removing or changing an image builds a fresh cache. The sidecar is written
last: a build that was interrupted is never reused.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..progress import progress_bar
from .base import default_data_root

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
CACHE_VERSION = 1  # bump when decoding changes, so old caches are not reused
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, zipfile.BadZipFile, zlib.error)


class DataWarning(UserWarning):
    """Something in a data set was skipped (e.g. a corrupt image); training goes on without it."""


@dataclass
class ImageFiles:
    """The images of a data set: sorted names relative to `root` (a folder) or members of a zip."""

    root: Path
    names: list[str]
    zip_path: Path | None = None

    def read(self, name: str, zf: zipfile.ZipFile | None) -> bytes:
        return zf.read(name) if zf is not None else (self.root / name).read_bytes()

    def signature(self) -> str:
        h = hashlib.sha256()
        if self.zip_path is not None:
            st = self.zip_path.stat()
            h.update(f"zip {self.zip_path.resolve()} {st.st_size} {st.st_mtime_ns}\n".encode())
        for name in self.names:
            if self.zip_path is None:
                st = (self.root / name).stat()
                h.update(f"{name} {st.st_size} {st.st_mtime_ns}\n".encode())
            else:
                h.update(f"{name}\n".encode())
        return h.hexdigest()


def list_folder(root: Path) -> ImageFiles:
    """Every PNG/JPEG under `root` (recursive; hidden folders such as .vlae-cache are skipped)."""
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; point --data-dir at a folder of PNG or JPEG images")
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for f in filenames:
            if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."):
                names.append(os.path.relpath(os.path.join(dirpath, f), root))
    if not names:
        raise DataError(f"{root} holds no PNG or JPEG images (searched recursively); put images there "
                        "or point --data-dir at the folder that holds them")
    return ImageFiles(root, sorted(names))


def list_zip(path: Path) -> ImageFiles:
    """Every PNG/JPEG member of the zip at `path`, read in place (nothing is unpacked)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.lower().endswith(IMAGE_SUFFIXES)
                     and not os.path.basename(n).startswith(".")]
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"cannot read {path} as a zip file ({e}); the download may be truncated: "
                        "replace it with an intact copy") from None
    if not names:
        raise DataError(f"{path} holds no PNG or JPEG images")
    return ImageFiles(path.parent, sorted(names), zip_path=path)


def decode(data: bytes, size: int, mode: str, crop: int | None = None) -> np.ndarray:
    """One image file's bytes -> [C, size, size] uint8: center crop (crop x crop, or the largest
    square), resize to size x size (bilinear, antialiased), mode 'RGB' or 'L'."""
    img = Image.open(io.BytesIO(data))
    img.load()  # decode now: a truncated or corrupt file raises here, not later
    img = img.convert(mode)
    w, h = img.size
    c = min(w, h) if crop is None else crop
    if c > min(w, h):
        raise ValueError(f"image of {w}x{h} pixels is smaller than the {c}x{c} crop")
    left, top = (w - c) // 2, (h - c) // 2
    img = img.crop((left, top, left + c, top + c)).resize((size, size), Image.BILINEAR)
    a = np.asarray(img, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # [C, S, S]


def detect_mode(files: ImageFiles, sample: int = 16) -> str:
    """'L' if the first images are all grey-level, else 'RGB'."""
    zf = zipfile.ZipFile(files.zip_path) if files.zip_path else None
    try:
        for name in files.names[:sample]:
            try:
                img = Image.open(io.BytesIO(files.read(name, zf)))  # header only
            except DECODE_ERRORS:
                continue
            if img.mode not in ("L", "LA", "1", "I", "I;16", "F"):
                return "RGB"
    finally:
        if zf is not None:
            zf.close()
    return "L"


def _cache_dir(files: ImageFiles) -> Path:
    here = files.root / ".vlae-cache"
    try:
        here.mkdir(exist_ok=True)
        if os.access(here, os.W_OK):
            return here
    except OSError:
        pass
    elsewhere = default_data_root() / "cache" / hashlib.sha256(str(files.root.resolve()).encode()).hexdigest()[:16]
    elsewhere.mkdir(parents=True, exist_ok=True)
    return elsewhere


def _warn_skipped(files: ImageFiles, skipped: list[list[str]], total: int) -> None:
    if skipped:
        shown = "; ".join(f"{n} ({why})" for n, why in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        where = files.zip_path or files.root
        warnings.warn(f"skipped {len(skipped)} unreadable image(s) of {total} in {where}: {shown}",
                      DataWarning, stacklevel=3)


def cached_images(files: ImageFiles, tag: str, size: int, mode: str, crop: int | None = None,
                  show_progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """All images of `files` as a uint8 memmap [N, C, size, size] (decoded once, then reused) and the
    names of the N images kept (corrupt ones are skipped with a DataWarning)."""
    C = 1 if mode == "L" else 3
    key = hashlib.sha256(f"{CACHE_VERSION} {size} {mode} {crop} {files.signature()}".encode()).hexdigest()[:16]
    directory = _cache_dir(files)
    data_path = directory / f"{tag}-{size}px-{mode}-{key}.u8"
    meta_path = data_path.with_suffix(".json")
    shape_of = lambda n: (n, C, size, size)  # noqa: E731
    if meta_path.is_file() and data_path.is_file():
        meta = json.loads(meta_path.read_text())
        n = len(meta["names"])
        if data_path.stat().st_size == int(np.prod(shape_of(n))):
            _warn_skipped(files, meta["skipped"], n + len(meta["skipped"]))
            # mode 'c' (copy-on-write): torch gets a writable array; the cache file is never changed
            return np.memmap(data_path, np.uint8, "c", shape=shape_of(n)), meta["names"]

    tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    N = len(files.names)
    out = np.memmap(tmp, np.uint8, "w+", shape=shape_of(N))
    kept, skipped = [], []
    zf = zipfile.ZipFile(files.zip_path) if files.zip_path else None
    try:
        with progress_bar(show_progress) as bar:
            task = bar.add_task(f"decoding {tag} once into a cache", total=N, stats="")
            for i, name in enumerate(files.names):
                try:
                    out[len(kept)] = decode(files.read(name, zf), size, mode, crop)
                    kept.append(name)
                except DECODE_ERRORS as e:
                    skipped.append([name, str(e) or type(e).__name__])
                if i % 256 == 0 or i == N - 1:
                    bar.update(task, completed=i + 1, stats=f"{len(skipped)} skipped" if skipped else "")
        out.flush()
        del out
        if not kept:
            first, why = skipped[0]
            raise DataError(f"none of the {N} images in {files.zip_path or files.root} could be read "
                            f"(first: {first}: {why}); check that these are PNG or JPEG files")
        os.truncate(tmp, int(np.prod(shape_of(len(kept)))))
        os.replace(tmp, data_path)
        meta_tmp = meta_path.with_name(f".{meta_path.name}.{os.getpid()}.tmp")
        meta_tmp.write_text(json.dumps({"shape": shape_of(len(kept)), "names": kept, "skipped": skipped}))
        os.replace(meta_tmp, meta_path)
    finally:
        if zf is not None:
            zf.close()
        if tmp.exists():
            tmp.unlink()
    _warn_skipped(files, skipped, N)
    return np.memmap(data_path, np.uint8, "c", shape=shape_of(len(kept))), kept


def take(images: np.ndarray, idx: list[int]) -> torch.Tensor:
    """Rows `idx` of the cache as a uint8 tensor: a view of the memmap when they are one run of
    consecutive rows (nothing read until used), else a copy in memory."""
    x = torch.from_numpy(images)
    if idx and idx == list(range(idx[0], idx[0] + len(idx))):
        return x[idx[0] : idx[0] + len(idx)]
    return x[torch.tensor(idx, dtype=torch.long)]


def split_by_name(names: list[str], split: str, where: Path) -> list[int]:
    """The fixed 80/20 split by sorted file name: every fifth image (4, 9, 14, ...) is a test image."""
    if split not in ("train", "test"):
        raise DataError(f"{where} has splits 'train' and 'test' (80/20 by sorted file name); got {split!r}")
    idx = [i for i in range(len(names)) if (i % 5 == 4) == (split == "test")]
    if not idx:
        raise DataError(f"the {split} split of {where} is empty ({len(names)} images); "
                        "it needs at least 5 images for an 80/20 split")
    return idx

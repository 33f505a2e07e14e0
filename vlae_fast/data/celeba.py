"""CelebA, aligned and cropped release: img_align_celeba/ (178x218 JPEGs) or img_align_celeba.zip
read in place, optional list_eval_partition.txt. Authors' preprocessing: center crop 108x108, resize
to 64x64, pixels in [0, 1]. Decoded once into a uint8 cache (imagecache.py), then read from it."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .base import ImageSet, resolve_data_dir
from .imagecache import ImageFiles, cached_images, list_folder, list_zip, split_by_name, take

CROP, SIZE = 108, 64  # authors' center crop, then resize
PARTITION = "list_eval_partition.txt"
PARTITION_SPLITS = {"train": 0, "val": 1, "test": 2}  # the release's codes
HOME = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


def find_images(directory: Path, how: str) -> ImageFiles:
    """img_align_celeba/ (preferred), else img_align_celeba.zip, else JPEGs directly in `directory`."""
    if (directory / "img_align_celeba").is_dir():
        return list_folder(directory / "img_align_celeba")
    if (directory / "img_align_celeba.zip").is_file():
        return list_zip(directory / "img_align_celeba.zip")
    if directory.is_dir() and any(p.suffix.lower() == ".jpg" for p in directory.iterdir()):
        return list_folder(directory)
    raise DataError(f"CelebA not found in {directory} (chosen by {how}): put the aligned-and-cropped release "
                    f"there, as the folder img_align_celeba/ of 178x218 JPEGs or img_align_celeba.zip "
                    f"(optionally with {PARTITION}). It cannot be downloaded automatically; get it from {HOME}")


def read_partition(path: Path) -> dict[str, int]:
    """list_eval_partition.txt: one '<file name> <0|1|2>' per line -> {file name: split code}."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}; replace it with the release's copy or delete it") from None
    parts = {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise DataError(f"{path} line {i} is {line.strip()!r}, not '<image name> <0|1|2>'; "
                            "replace it with the release's copy or delete it for an 80/20 split")
        parts[fields[0]] = int(fields[1])
    return parts


def load_celeba(split: str, data_dir: str | Path | None = None, show_progress: bool = True) -> ImageSet:
    """CelebA `split` ('train', 'val' with the partition file, or 'test') as uint8 [N, 3, 64, 64]."""
    directory, how = resolve_data_dir("celeba", data_dir)
    files = find_images(directory, how)
    images, names = cached_images(files, "celeba", SIZE, "RGB", CROP, show_progress)
    part_path = directory / PARTITION
    if part_path.is_file():
        if split not in PARTITION_SPLITS:
            raise DataError(f"CelebA has splits {', '.join(PARTITION_SPLITS)}; got {split!r}")
        parts = read_partition(part_path)
        base = [n.rsplit("/", 1)[-1] for n in names]  # zip members carry the folder name
        missing = [b for b in base if b not in parts]
        if missing:
            raise DataError(f"{part_path} does not list {len(missing)} of the images (e.g. {missing[0]}); "
                            "use the partition file of the same release, or delete it for an 80/20 split")
        idx = [i for i, b in enumerate(base) if parts[b] == PARTITION_SPLITS[split]]
        if not idx:
            raise DataError(f"{part_path} puts none of the {len(names)} images in the {split} split")
    else:
        idx = split_by_name(names, split, files.zip_path or files.root)
    return ImageSet("celeba", split, take(images, idx), None)

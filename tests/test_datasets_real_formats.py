"""SVHN, CelebA and folder loaders on small files written here in the real formats."""
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from vlae_fast.data import data_options, image_shape_of, load_dataset
from vlae_fast.data.imagecache import DataWarning
from vlae_fast.errors import DataError


def write_svhn(path, n, seed=0):
    """A MATLAB v5 file as the official release: X [32, 32, 3, n] uint8, y [n, 1] in 1..10 (10 = digit 0)."""
    rng = np.random.default_rng(seed)
    X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)
    scipy.io.savemat(path, {"X": X, "y": y})
    return X, y


def write_jpegs(folder, n, size=(178, 218), seed=0, prefix=""):
    """n random RGB JPEGs named as CelebA's (000001.jpg, ...); returns their names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(1, n + 1):
        name = f"{prefix}{i:06d}.jpg"
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(folder / name, quality=90)
        names.append(name)
    return names


def write_celeba_zip(d, src, names):
    """The release's img_align_celeba.zip in folder d, holding the JPEGs `names` from folder src."""
    d.mkdir()
    with zipfile.ZipFile(d / "img_align_celeba.zip", "w") as zf:
        for n in names:
            zf.write(src / n, f"img_align_celeba/{n}")


@pytest.fixture
def svhn_dir(tmp_path):
    d = tmp_path / "svhn"
    d.mkdir()
    write_svhn(d / "train_32x32.mat", 12)
    write_svhn(d / "test_32x32.mat", 6, seed=1)
    write_svhn(d / "extra_32x32.mat", 4, seed=2)
    return d


def test_svhn_reads_official_layout_and_maps_label_10_to_0(svhn_dir):
    X, y = write_svhn(svhn_dir / "test_32x32.mat", 6, seed=1)
    data = load_dataset("svhn", "test", svhn_dir)
    assert data.x.shape == (6, 3, 32, 32) and data.x.dtype == torch.uint8
    # pixel (row 5, col 7, channel 2) of image 3 lands at x[3, 2, 5, 7]
    assert data.x[3, 2, 5, 7].item() == X[5, 7, 2, 3]
    assert data.labels.tolist() == [int(v) % 10 for v in y[:, 0]]
    assert data.labels[9 % 6].item() in range(10) and 0 in load_dataset("svhn", "train", svhn_dir).labels.tolist()
    b = data.batch(torch.arange(2))
    assert b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1


def test_svhn_extra_is_added_to_training_only(svhn_dir):
    opts = data_options("svhn", svhn_extra=True)
    assert len(load_dataset("svhn", "train", svhn_dir, **opts)) == 16
    assert len(load_dataset("svhn", "test", svhn_dir, **opts)) == 6


def test_svhn_wrong_mat_truncated_and_missing_files_name_the_file(tmp_path):
    d = tmp_path / "bad"
    d.mkdir()
    scipy.io.savemat(d / "train_32x32.mat", {"X": np.zeros((28, 28, 3, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DataError, match=r"train_32x32.mat: X is uint8 of shape \[28, 28, 3, 2\]"):
        load_dataset("svhn", "train", d)
    scipy.io.savemat(d / "train_32x32.mat", {"images": np.zeros((2, 2))})
    with pytest.raises(DataError, match="lacks the variables X and y"):
        load_dataset("svhn", "train", d)
    write_svhn(d / "test_32x32.mat", 4)
    raw = (d / "test_32x32.mat").read_bytes()
    (d / "test_32x32.mat").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="test_32x32.mat.*truncated"):
        load_dataset("svhn", "test", d)
    write_svhn(d / "train_32x32.mat", 2)
    with pytest.raises(DataError, match="extra_32x32.mat missing: put extra_32x32.mat in .*bad"):
        load_dataset("svhn", "train", d, extra=True)


def test_celeba_folder_crop_resize_and_80_20_split(tmp_path):
    names = write_jpegs(tmp_path / "celeba" / "img_align_celeba", 10)
    train = load_dataset("celeba", "train", tmp_path / "celeba", show_progress=False)
    test = load_dataset("celeba", "test", tmp_path / "celeba", show_progress=False)
    assert train.x.shape == (8, 3, 64, 64) and test.x.shape == (2, 3, 64, 64) and train.labels is None
    # the authors' preprocessing: center crop 108x108, resize to 64x64
    img = Image.open(tmp_path / "celeba" / "img_align_celeba" / names[4]).convert("RGB")
    ref = np.asarray(img.crop((35, 55, 143, 163)).resize((64, 64), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.array_equal(test.x[0].numpy(), ref)  # names[4] is the first test image (every fifth)


def test_celeba_zip_in_place_with_partition_file_and_cache_reuse(tmp_path):
    src = tmp_path / "src"
    names = write_jpegs(src, 6)
    d = tmp_path / "celeba"
    write_celeba_zip(d, src, names)
    (d / "list_eval_partition.txt").write_text("".join(f"{n} {c}\n" for n, c in zip(names, [0, 0, 0, 1, 2, 2])))
    test = load_dataset("celeba", "test", d, show_progress=False)
    val = load_dataset("celeba", "val", d, show_progress=False)
    assert len(test) == 2 and len(val) == 1 and len(load_dataset("celeba", "train", d, show_progress=False)) == 3
    caches = list((d / ".vlae-cache").glob("celeba-64px-RGB-*.u8"))
    assert len(caches) == 1 and caches[0].stat().st_size == 6 * 3 * 64 * 64
    mtime = caches[0].stat().st_mtime_ns
    again = load_dataset("celeba", "test", d, show_progress=False)  # read from the cache, not re-decoded
    assert caches[0].stat().st_mtime_ns == mtime and torch.equal(again.x, test.x)
    (d / "list_eval_partition.txt").write_text("000001.jpg zero\n")
    with pytest.raises(DataError, match="list_eval_partition.txt line 1"):
        load_dataset("celeba", "test", d, show_progress=False)


def test_celeba_missing_and_truncated_zip_are_clear(tmp_path):
    with pytest.raises(DataError, match="img_align_celeba.zip.*cannot be downloaded automatically"):
        load_dataset("celeba", "train", tmp_path)
    (tmp_path / "img_align_celeba.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match="img_align_celeba.zip as a zip file"):
        load_dataset("celeba", "train", tmp_path)


def test_one_corrupt_jpeg_is_skipped_with_a_warning_and_counted(tmp_path):
    folder = tmp_path / "imgs"
    names = write_jpegs(folder, 6, size=(40, 30))
    raw = (folder / names[2]).read_bytes()
    (folder / names[2]).write_bytes(raw[: len(raw) // 3])  # truncated JPEG
    (folder / "zz-not-an-image.png").write_bytes(b"hello")
    with pytest.warns(DataWarning, match=r"skipped 2 unreadable image\(s\) of 7 .*000003.jpg"):
        train = load_dataset("folder", "train", folder, image_size=16, show_progress=False)
    assert train.x.shape == (4, 3, 16, 16)
    with pytest.warns(DataWarning, match="skipped 2"):  # the cache remembers, and says so again
        load_dataset("folder", "test", folder, image_size=16, show_progress=False)


def test_folder_detects_grey_and_forces_modes_recursively(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):
        sub = tmp_path / "digits" / f"class{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(sub / f"{i}.png")
    d = tmp_path / "digits"
    assert image_shape_of("folder", d, image_size=32) == (1, 32, 32)
    assert load_dataset("folder", "test", d, image_size=8, color="rgb", show_progress=False).x.shape == (1, 3, 8, 8)
    with pytest.raises(DataError, match="apply to the folder data set only"):
        data_options("mnist", image_size=32)


def test_empty_folder_and_all_unreadable_name_the_place(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty holds no PNG or JPEG images"):
        load_dataset("folder", "train", tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"none of the 1 images .*junk could be read \(first: a.jpg"):
        load_dataset("folder", "train", tmp_path / "junk", show_progress=False)
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset("folder", "train", None)

"""MNIST loader: real files, IDX parsing, where files are looked for, download checks, clear errors."""
import gzip
import hashlib

import numpy as np
import pytest
import torch

from vlae_fast.data import load_dataset
from vlae_fast.data import mnist as mnist_mod
from vlae_fast.data.download import download
from vlae_fast.errors import DataError


def write_idx(path, arr: np.ndarray, gz: bool = True) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    data = header + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def write_fixture(d, n=12, gz=True, splits=("train", "test")):
    rng = np.random.default_rng(0)
    for split in splits:
        img, lab = mnist_mod.FILES[split]
        sfx = ".gz" if gz else ""
        write_idx(d / (img + sfx), rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(d / (lab + sfx), rng.integers(0, 10, (n,)), gz)


def test_real_mnist_test_split(mnist_dir):
    ds = load_dataset("mnist", "test", mnist_dir)
    assert ds.x.shape == (10000, 1, 28, 28) and ds.x.dtype == torch.float32
    assert 0.0 == ds.x.min() and ds.x.max() == 1.0
    assert ds.labels.shape == (10000,) and set(ds.labels.unique().tolist()) == set(range(10))
    assert ds.labels[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first test digits


@pytest.mark.parametrize("gz", [True, False])
def test_idx_fixture_gz_or_plain(tmp_path, gz):
    write_fixture(tmp_path, gz=gz)
    ds = load_dataset("mnist", "train", tmp_path)
    raw = mnist_mod.read_idx(tmp_path / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    assert torch.equal(ds.x[:, 0], torch.from_numpy(raw.astype(np.float32) / 255))
    idx = torch.tensor([3, 0, 7])
    assert torch.equal(ds.batch(idx), ds.x[idx])


def test_env_variable_and_subfolder(tmp_path, monkeypatch):
    (tmp_path / "mnist").mkdir()
    write_fixture(tmp_path / "mnist", n=5)
    monkeypatch.setenv("VLAE_DATA_DIR", str(tmp_path))
    assert len(load_dataset("mnist", "test")) == 5


def test_missing_files_say_which_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("VLAE_NO_DOWNLOAD", "1")
    write_fixture(tmp_path, splits=("train",))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz, t10k-labels-idx1-ubyte\.gz") as e:
        load_dataset("mnist", "test", tmp_path)
    assert str(tmp_path) in str(e.value)


def test_truncated_and_bad_magic_files(tmp_path):
    write_fixture(tmp_path)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    raw = gzip.open(p).read()
    gzip.open(p, "wb").write(raw[:-100])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset("mnist", "test", tmp_path)
    gzip.open(p, "wb").write(b"\x01\x02" + raw[2:])
    with pytest.raises(DataError, match="bad magic"):
        load_dataset("mnist", "test", tmp_path)
    p.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", "test", tmp_path)


def test_unknown_dataset_and_split(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'cifar'"):
        load_dataset("cifar", "train", tmp_path)
    with pytest.raises(DataError, match="splits 'train' and 'test'"):
        load_dataset("mnist", "val", tmp_path)


def test_download_verifies_sha256(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "f.gz").write_bytes(b"payload")
    good = hashlib.sha256(b"payload").hexdigest()
    got = download("f.gz", [mirror.as_uri() + "/"], good, tmp_path / "dest")
    assert got.read_bytes() == b"payload"
    (mirror / "f.gz").write_bytes(b"tampered")
    with pytest.raises(DataError, match="checksum mismatch"):
        download("f.gz", [mirror.as_uri() + "/"], good, tmp_path / "dest2")
    assert not any((tmp_path / "dest2").iterdir())  # the rejected file is not kept


def test_missing_files_are_downloaded_from_a_mirror(tmp_path, monkeypatch):
    """The loader fetches what is missing, checking each file against the published SHA-256."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    write_fixture(mirror, n=4, splits=("test",))
    monkeypatch.delenv("VLAE_NO_DOWNLOAD", raising=False)
    sums = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in mirror.iterdir()}
    monkeypatch.setattr(mnist_mod, "SHA256", sums)
    ds = mnist_mod.load_mnist("test", tmp_path / "data", mirrors=[mirror.as_uri()])
    assert len(ds) == 4
    monkeypatch.setattr(mnist_mod, "SHA256", {k: "0" * 64 for k in sums})
    with pytest.raises(DataError, match="checksum mismatch"):
        mnist_mod.load_mnist("test", tmp_path / "other", mirrors=[mirror.as_uri()])

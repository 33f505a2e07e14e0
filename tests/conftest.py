"""Shared fixtures. Tests run on the CPU; Triton kernels run in Triton's interpreter there.

TRITON_INTERPRET is read when @triton.jit decorates a function, so it is set here, before any test
module imports vlae_fast.kernels.
"""
import os

if not os.environ.get("VLAE_TEST_GPU"):  # set VLAE_TEST_GPU=1 on a CUDA machine to test compiled kernels
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("VLAE_NO_DOWNLOAD", "1")  # tests never reach for the web

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parent.parent
MNIST_DIR = Path(os.environ.get("VLAE_TEST_MNIST", REPO.parent / "shared" / "data" / "mnist"))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files (../shared/data/mnist beside the checkout, or $VLAE_TEST_MNIST)."""
    if not (MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail(f"real MNIST not found in {MNIST_DIR}; set VLAE_TEST_MNIST to the folder holding the four files")
    return MNIST_DIR


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, mnist_dir) -> Path:
    """A 3-level MNIST VLAE trained for 3 steps on 200 images: enough for every command to run on."""
    from vlae_fast.models import default_config
    from vlae_fast.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny")
    cfg = TrainConfig(steps=3, batch_size=50, train_limit=200, eval_limit=100, data_dir=str(mnist_dir),
                      save_every=0, device="cpu")
    train(default_config("mnist"), cfg, out, show_progress=False)
    return out / "ckpt.safetensors"

"""Every command through Typer's runner on a tiny checkpoint; outputs decode; bad input -> one line, exit 2."""
import json
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlae_fast.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def grid_px(n_rows, n_cols, size=28, pad=2):
    return (n_cols * (size + pad) + pad, n_rows * (size + pad) + pad)  # PIL size: (width, height)


def test_train_writes_checkpoint_log_and_prints_elbo(tmp_path, mnist_dir):
    r = run("train", "mnist", "--layers", "2", "--latent-dim", "2,3", "--steps", "2", "--batch-size", "20",
            "--train-limit", "100", "--eval-limit", "40", "--data-dir", mnist_dir, "--out", tmp_path / "run",
            "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "test ELBO" in r.output and "reconstruction error" in r.output
    assert (tmp_path / "run" / "ckpt.safetensors").is_file() and (tmp_path / "run" / "metrics.jsonl").is_file()


def test_sample_png_and_npz(tmp_path, tiny_ckpt):
    r = run("sample", tiny_ckpt, "--n", 10, "--out", tmp_path / "s.png")
    assert r.exit_code == 0, r.output
    assert Image.open(tmp_path / "s.png").size == grid_px(2, 5)  # 10 images fill 2 rows of 5
    r = run("sample", tiny_ckpt, "--n", 5, "--out", tmp_path / "s.npz")
    x = np.load(tmp_path / "s.npz")["x"]
    assert x.shape == (5, 1, 28, 28) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("layer", [1, 2, 3])
def test_traverse_each_level(tmp_path, tiny_ckpt, layer):
    r = run("traverse", tiny_ckpt, "--layer", layer, "--steps", 4, "--out", tmp_path / "t.png")
    assert r.exit_code == 0, r.output
    width, height = Image.open(tmp_path / "t.png").size  # the 4 x 4 grid under its title lines
    assert width >= grid_px(4, 4)[0] and height > grid_px(4, 4)[1]
    run("traverse", tiny_ckpt, "--layer", layer, "--steps", 3, "--out", tmp_path / "t.npz")
    assert np.load(tmp_path / "t.npz")["x"].shape == (3, 3, 1, 28, 28)


def test_traverse_shares_can_be_skipped(tmp_path, tiny_ckpt):
    r = run("traverse", tiny_ckpt, "--layer", 1, "--steps", 2, "--out", tmp_path / "t.npz", "--json")
    shares = json.loads(r.stdout)["variance_shares"]
    assert len(shares) == 3 and sum(shares) == pytest.approx(1)
    r = run("traverse", tiny_ckpt, "--layer", 1, "--steps", 2, "--out", tmp_path / "t.npz", "--json", "--no-shares")
    assert r.exit_code == 0 and json.loads(r.stdout)["variance_shares"] is None
    r = run("traverse", tiny_ckpt, "--layer", 1, "--steps", 2, "--out", tmp_path / "t.npz", "--no-shares")
    assert r.exit_code == 0 and "wrote the level-1 traversal" in r.output and "share of pixel" not in r.output


def test_reconstruct_and_encode(tmp_path, tiny_ckpt, mnist_dir):
    r = run("reconstruct", tiny_ckpt, "--n", 6, "--data-dir", mnist_dir, "--out", tmp_path / "r.png")
    assert r.exit_code == 0, r.output
    width, height = Image.open(tmp_path / "r.png").size  # 2 rows of 6, row labels on the left
    assert width > grid_px(2, 6)[0] and height == grid_px(2, 6)[1]
    r = run("encode", tiny_ckpt, "--split", "test", "--data-dir", mnist_dir, "--out", tmp_path / "c.npz")
    assert r.exit_code == 0, r.output
    codes = np.load(tmp_path / "c.npz")
    assert [codes[f"z{l}"].shape for l in (1, 2, 3)] == [(10000, 2)] * 3
    assert codes["labels"][:3].tolist() == [7, 2, 1]


def test_evaluate_prints_the_library_figures(tiny_ckpt, mnist_dir):
    from vlae_fast.checkpoint import load_model
    from vlae_fast.data import load_dataset
    from vlae_fast.train import evaluate

    model, _ = load_model(tiny_ckpt)
    expect = evaluate(model, load_dataset("mnist", "test", mnist_dir), seed=0)
    r = run("evaluate", tiny_ckpt, "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    assert f"test ELBO {expect['elbo']:.2f} nats/image" in r.output and "checkpoint at step 3" in r.output
    assert f"{expect['mse']:.5f} mean squared error" in r.output


def test_reconstruct_finds_the_training_data_without_data_dir(tmp_path, tiny_ckpt, monkeypatch):
    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # nothing to find there
    r = run("reconstruct", tiny_ckpt, "--n", 2, "--out", tmp_path / "r.png")  # the run's --data-dir is stored
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,message", [
    (["sample", "{tmp}/missing.safetensors"], "no checkpoint at"),
    (["sample", "{tmp}/text.safetensors"], "not a readable safetensors file"),
    (["sample", "{tmp}/trunc.safetensors"], "truncated or corrupt"),
    (["sample", "{tmp}/other.safetensors"], "not a vlae-fast checkpoint"),
    (["traverse", "{ckpt}", "--layer", "4"], "--layer must be between 1 and 3"),
    (["encode", "{ckpt}", "--data-dir", "{tmp}"], "MNIST files missing"),
    (["sample", "{ckpt}", "--out", "{tmp}/text.safetensors/x.png"], "is a file, not a folder"),
    (["sample", "{ckpt}", "--out", "{tmp}/no/such/x.png"], "does not exist"),
    (["sample", "{tmp}"], "without a ckpt.safetensors"),
    (["sample", "{ckpt}", "--out", "{tmp}/x.jpg"], "ending in .png or .gif or .npz"),
])
def test_bad_input_one_line_exit_2(tmp_path, tiny_ckpt, args, message):
    from safetensors.torch import save_file
    import torch

    (tmp_path / "text.safetensors").write_text("plain text")
    blob = tiny_ckpt.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(blob[:1000])
    save_file({"w": torch.zeros(1)}, tmp_path / "other.safetensors")
    r = runner.invoke(app, [a.format(tmp=tmp_path, ckpt=tiny_ckpt) for a in args])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1  # one line, however long

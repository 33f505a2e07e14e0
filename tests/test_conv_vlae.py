"""The paper's SVHN / CelebA ladders: shapes, gradients, and a few training steps per data set via the CLI."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from test_datasets_real_formats import write_celeba_zip, write_jpegs, write_svhn
from vlae_fast.checkpoint import load_model
from vlae_fast.cli.app import app
from vlae_fast.errors import ConfigError
from vlae_fast.models import ConvVLAEConfig, build_model, default_config


@pytest.mark.parametrize("dataset, shape, dims, maps", [
    ("svhn", (3, 32, 32), (5, 5, 5, 10), [(64, 16, 16), (128, 8, 8), (256, 4, 4)]),
    ("celeba", (3, 64, 64), (10, 10, 10, 10), [(64, 32, 32), (256, 8, 8), (512, 4, 4)]),
])
def test_forward_backward_shapes(dataset, shape, dims, maps):
    cfg = default_config(dataset)
    assert cfg.model == "conv_vlae" and cfg.image_shape == shape and cfg.latent_dims == dims
    torch.manual_seed(0)
    model = build_model(cfg)
    assert model.maps == maps  # h_l's map per convolutional level: where z_l joins the generator
    x = torch.rand(3, *shape)
    out = model(x)
    assert out.logits.shape == (3, *shape) and out.recon.shape == (3,) and out.kl.shape == (3, 4)
    assert [z.shape for z in out.z] == [(3, d) for d in dims]
    (out.recon.mean() + out.kl.sum(1).mean()).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # every level reaches the image: changing only z_l changes the output
    model.eval()
    z = model.prior_sample(2, torch.Generator().manual_seed(1))
    base = model.generate(z)
    for l in range(4):
        z2 = [zi.clone() for zi in z]
        z2[l] += 1.0
        assert (model.generate(z2) - base).abs().max() > 0, f"level {l + 1} does not reach the image"


def test_config_rejects_what_it_cannot_build():
    with pytest.raises(ValueError, match="divisible by 8"):
        ConvVLAEConfig(image_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="2 to 4 levels"):
        ConvVLAEConfig(latent_dims=(5,) * 5)
    with pytest.raises(ValueError, match="concatenation"):
        ConvVLAEConfig(join="gated_add")
    with pytest.raises(ConfigError, match="image shape comes from its files"):
        default_config("folder")
    assert default_config("folder", image_shape=(3, 64, 64)).latent_dims == (10,) * 4
    assert default_config("svhn", layers=3).latent_dims == (5, 5, 5)


def run_cli(args):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.stdout, result.stderr if result.stderr_bytes else "", result.exception)
    return result


def train_args(dataset, data_dir, out, batch=4, extra=()):
    return ["train", dataset, "--data-dir", str(data_dir), "--out", str(out), "--steps", "2", "--batch-size",
            str(batch), "--save-every", "0", "--device", "cpu", "--no-progress", *extra]


def test_svhn_trains_through_the_cli_and_traverses_in_colour(tmp_path):
    d = tmp_path / "svhn"
    d.mkdir()
    write_svhn(d / "train_32x32.mat", 8)
    write_svhn(d / "test_32x32.mat", 4, seed=1)
    write_svhn(d / "extra_32x32.mat", 4, seed=2)
    run_cli(train_args("svhn", d, tmp_path / "run", extra=["--svhn-extra"]))
    ckpt = tmp_path / "run" / "ckpt.safetensors"
    model, info = load_model(ckpt, torch.device("cpu"))
    assert info.config.model == "conv_vlae" and info.config.layers == 4 and info.train["data_options"] == {"extra": True}
    run_cli(["traverse", str(ckpt), "--layer", "4", "--steps", "3", "--out", str(tmp_path / "t.npz"), "--device", "cpu"])
    grid = np.load(tmp_path / "t.npz")["x"]
    assert grid.shape == (3, 3, 3, 32, 32)
    run_cli(["traverse", str(ckpt), "--layer", "1", "--steps", "3", "--out", str(tmp_path / "t.png"), "--device", "cpu",
             "--no-shares"])  # the call above printed the shares of this colour ladder; they do not depend on --layer
    assert Image.open(tmp_path / "t.png").mode == "RGB"
    run_cli(["encode", str(ckpt), "--data-dir", str(d), "--out", str(tmp_path / "codes.npz"), "--device", "cpu"])
    assert np.load(tmp_path / "codes.npz")["z4"].shape == (4, 10)


def test_celeba_zip_trains_through_the_cli(tmp_path):
    src = tmp_path / "src"
    names = write_jpegs(src, 10)
    d = tmp_path / "celeba"
    write_celeba_zip(d, src, names)
    run_cli(train_args("celeba", d, tmp_path / "run"))
    ckpt = tmp_path / "run" / "ckpt.safetensors"
    out = run_cli(["traverse", str(ckpt), "--layer", "2", "--steps", "2", "--out", str(tmp_path / "t.npz"), "--device",
                   "cpu", "--no-shares"])  # the shares: 4 x 1024 decodes of 64x64 images, ~85 s on 2 cores
    assert np.load(tmp_path / "t.npz")["x"].shape == (2, 2, 3, 64, 64) and "share of pixel variance" not in out.output


def test_folder_trains_with_its_options_and_reconstructs_from_them(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "pngs"
    d.mkdir()
    for i in range(10):
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L").save(d / f"{i:05d}.png")
    run_cli(train_args("folder", d, tmp_path / "run", extra=["--image-size", "16", "--layers", "3"]))
    ckpt = tmp_path / "run" / "ckpt.safetensors"
    _, info = load_model(ckpt, torch.device("cpu"))
    assert info.config.image_shape == (1, 16, 16) and info.train["data_options"] == {"image_size": 16}
    run_cli(["reconstruct", str(ckpt), "--data-dir", str(d), "--n", "2", "--out", str(tmp_path / "r.npz"), "--device", "cpu"])
    assert np.load(tmp_path / "r.npz")["x"].shape == (2, 2, 1, 16, 16)


def test_cli_errors_are_one_line_not_tracebacks(tmp_path):
    result = CliRunner().invoke(app, ["train", "folder", "--data-dir", str(tmp_path), "--steps", "1"])
    assert result.exit_code == 2 and "holds no PNG or JPEG images" in result.stderr
    result = CliRunner().invoke(app, ["train", "mnist", "--image-size", "32", "--steps", "1"])
    assert result.exit_code == 2 and "folder data set only" in result.stderr
    result = CliRunner().invoke(app, ["train", "folder", "--grayscale", "--rgb"])
    assert result.exit_code == 2 and "--grayscale and --rgb contradict each other" in result.stderr


@pytest.mark.parametrize("dataset", ["svhn", "celeba"])
def test_progressive_recipe_runs_on_the_conv_ladders(tmp_path, dataset):
    """The MNIST hierarchy recipe on the 4-level SVHN / CelebA ladders (files in the real formats): every level
    switches on in turn from the top, and the run ends with all four on."""
    d = tmp_path / dataset
    if dataset == "svhn":
        d.mkdir()
        write_svhn(d / "train_32x32.mat", 8)
        write_svhn(d / "test_32x32.mat", 4, seed=1)
    else:
        src = tmp_path / "src"
        write_celeba_zip(d, src, write_jpegs(src, 10))
    args = train_args(dataset, d, tmp_path / "run", extra=["--recipe", "hierarchy", "--log-every", "1"])
    run_cli([*args, "--steps", "8"])  # 4 levels: stages of 2 steps, no fade
    lines = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert [l["fade"] for l in lines[::2]] == [[0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]]
    _, info = load_model(tmp_path / "run" / "ckpt.safetensors", torch.device("cpu"))
    assert info.train["schedule"] == "progressive" and info.train["stage_steps"] == 2

"""`vlae swap` (levels carried from A to B one at a time) and `vlae export` (weights + config, shareable)."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from typer.testing import CliRunner

from vlae_fast import generate
from vlae_fast.checkpoint import load_model, read_checkpoint
from vlae_fast.cli.app import app
from vlae_fast.data import load_dataset
from vlae_fast.explore.swap import swap_levels
from vlae_fast.models import build_model, default_config

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def test_set(mnist_dir):
    return load_dataset("mnist", "test", mnist_dir).head(20)


def models(tiny_ckpt):
    torch.manual_seed(0)
    hvae = build_model(default_config("mnist", "hvae", layers=3)).eval()  # eps controls: untrained weights will do
    return [load_model(tiny_ckpt)[0].eval(), hvae]


def test_swap_rows_keep_b_everywhere_but_the_swapped_level(tiny_ckpt, test_set):
    xa, xb = test_set.x[:4], test_set.x[4:8]
    for model in models(tiny_ckpt):
        res = swap_levels(model, xa, xb)
        g = res["grid"]
        assert g.shape == (3 + 3, 4, 1, 28, 28) and res["labels"][3:] == [f"B with A's level {k}" for k in (1, 2, 3)]
        assert torch.equal(g[0], xa) and torch.equal(g[1], xb)
        torch.testing.assert_close(g[2], model.generate(model.encode(xb)[0]))  # B's plain reconstruction
        ca, cb = model.encode_controls(xa), model.encode_controls(xb)
        for k, c in enumerate(res["controls"]):
            for l in range(3):
                torch.testing.assert_close(c[l], ca[l] if l == k else cb[l])  # un-swapped levels are B's
            torch.testing.assert_close(g[3 + k], model.decode_controls(c))
        same = swap_levels(model, xb, xb)["grid"]  # swapping B's own levels changes nothing
        for row in same[3:]:
            torch.testing.assert_close(row, g[2])


def test_swap_cli_takes_indices_and_image_files(tiny_ckpt, test_set, mnist_dir, tmp_path):
    a = (test_set.x[5, 0] * 255).round().to(torch.uint8).numpy()  # MNIST is uint8: a PNG holds it exactly
    Image.fromarray(a).save(tmp_path / "five.png")
    for name, src in (("idx", "5"), ("file", tmp_path / "five.png")):
        r = run("swap", tiny_ckpt, "--from", src, "--to", "6,7", "--level", 2, "--level", 3,
                "--data-dir", mnist_dir, "--device", "cpu", "--out", tmp_path / f"{name}.npz")
        assert r.exit_code == 0, r.output
        assert "B with A's level 2, B with A's level 3" in r.output
    x_idx, x_file = np.load(tmp_path / "idx.npz")["x"], np.load(tmp_path / "file.npz")["x"]
    assert x_idx.shape == (5, 2, 1, 28, 28)
    np.testing.assert_array_equal(x_idx, x_file)
    r = run("swap", tiny_ckpt, "--from", 0, "--to", 1, "--data-dir", mnist_dir, "--out", tmp_path / "s.png")
    assert r.exit_code == 0 and Image.open(tmp_path / "s.png").size == (2 + 30, 2 + 6 * 30)  # 6 rows, 1 pair


@pytest.mark.parametrize("args,message", [
    (["--from", "0", "--to", "1", "--level", "4"], "--level must be between 1 and 3"),
    (["--from", "10000", "--to", "1"], "test set has images 0 to 9999"),
    (["--from", "nothere.png", "--to", "1"], "neither a test-set index nor a readable image file"),
    (["--from", "0,1", "--to", "2,3,4"], "give as many"),
])
def test_swap_errors_are_one_line(tiny_ckpt, mnist_dir, tmp_path, args, message):
    r = run("swap", tiny_ckpt, *args, "--data-dir", mnist_dir, "--out", tmp_path / "s.png")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_fp16_export_samples_within_fp16_tolerance(tiny_ckpt, tmp_path):
    r = run("export", tiny_ckpt, "--out", tmp_path / "m16.safetensors", "--dtype", "float16")
    assert r.exit_code == 0, r.output
    exp = read_checkpoint(tmp_path / "m16.safetensors")
    assert exp.optim_state == {} and exp.rng == {} and exp.optim_meta == {}  # weights and config only
    full = read_checkpoint(tiny_ckpt)
    assert full.optim_state and exp.config == full.config and exp.step == full.step and exp.train == full.train
    with safe_open(str(tmp_path / "m16.safetensors"), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16", "I64"}  # float weights at half precision; batch-norm step counters stay integers
    # Adam keeps two moments per weight: a third of the bytes are weights, and fp16 halves those
    assert (tmp_path / "m16.safetensors").stat().st_size < tiny_ckpt.stat().st_size / 5.9

    original, exported = load_model(tiny_ckpt)[0], load_model(tmp_path / "m16.safetensors")[0]
    assert all(p.dtype == torch.float32 for p in exported.parameters())  # widened on load
    x0, x1 = generate.sample(original, 64, seed=3), generate.sample(exported, 64, seed=3)
    # fp16 keeps 11 significant bits: each weight moves by at most 2^-11 ~ 4.9e-4 of itself, and the images
    # (in [0, 1], behind a sigmoid of slope <= 1/4) by less than that (measured: 1.1e-4). bfloat16's 8 bits
    # move them by 8.6e-4 on the same model, so this bound tells the two apart.
    assert 0 < (x0 - x1).abs().max() < 2**-11


def test_an_export_works_with_every_reading_command(tiny_ckpt, mnist_dir, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    assert run("export", tiny_ckpt, "--out", ckpt, "--dtype", "bfloat16").exit_code == 0
    for args in (["sample", ckpt, "--n", 4, "--out", tmp_path / "s.png"],
                 ["traverse", ckpt, "--layer", 1, "--steps", 3, "--out", tmp_path / "t.gif"],
                 ["reconstruct", ckpt, "--n", 3, "--data-dir", mnist_dir, "--out", tmp_path / "r.png"],
                 ["encode", ckpt, "--data-dir", mnist_dir, "--out", tmp_path / "c.npz"],
                 ["evaluate", ckpt, "--data-dir", mnist_dir],
                 ["swap", ckpt, "--from", 0, "--to", 1, "--data-dir", mnist_dir, "--out", tmp_path / "w.png"]):
        r = run(*args)
        assert r.exit_code == 0, (args[0], r.output)
    f32 = tmp_path / "m32.safetensors"
    assert run("export", tiny_ckpt, "--out", f32).exit_code == 0  # float32: the very same weights
    torch.testing.assert_close(generate.sample(load_model(f32)[0], 8), generate.sample(load_model(tiny_ckpt)[0], 8),
                               rtol=0, atol=0)


@pytest.mark.parametrize("args,message", [
    (["--dtype", "int8"], "--dtype must be one of float32, float16, bfloat16"),
    (["--out", "model.pt"], "ending in .safetensors"),
])
def test_export_errors_are_one_line(tiny_ckpt, tmp_path, args, message):
    r = run("export", tiny_ckpt, *(["--out", tmp_path / "m.safetensors"] if "--out" not in args else []), *args)
    assert r.exit_code == 2 and message in r.output, r.output


def test_export_refuses_to_overwrite_its_source(tiny_ckpt, tmp_path):
    copy = tmp_path / "ckpt.safetensors"
    copy.write_bytes(tiny_ckpt.read_bytes())
    r = run("export", copy, "--out", copy)
    assert r.exit_code == 2 and "is the checkpoint being exported" in r.output
    assert read_checkpoint(copy).optim_state  # untouched

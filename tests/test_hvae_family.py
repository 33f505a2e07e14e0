"""What the LVAE (models/lvae.py) and the autoregressive HVAE (models/ar_hvae.py) share with every model: the
checkpoint round trip, training in the one loop, and every command on a tiny checkpoint. Their own maths is in
test_lvae.py and test_ar_hvae.py."""
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vlae_fast.checkpoint import load_model, save_checkpoint
from vlae_fast.classifier import FORMAT as CLASSIFIER_FORMAT, DigitNet
from vlae_fast.cli import app
from vlae_fast.models import ARHVAE, LVAE, build_model, default_config
from vlae_fast.train import TrainConfig, train

DIMS = (2, 3, 4)
CLASSES = {"lvae": LVAE, "ar_hvae": ARHVAE}
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_checkpoint_round_trip_gives_the_same_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(default_config("mnist", name, latent_dims=list(DIMS), hidden=32, channels=(8, 16))).eval()
    path = save_checkpoint(tmp_path / "ckpt.safetensors", model, step=7)
    again, info = load_model(path)
    again.eval()
    assert isinstance(again, CLASSES[name]) and info.config.model == name and info.config.latent_dims == DIMS
    x, eps = torch.rand(3, 1, 28, 28), [torch.randn(3, d) for d in DIMS]
    a, b = model(x, eps), again(x, eps)
    for field in ("logits", "recon", "kl"):
        torch.testing.assert_close(getattr(b, field), getattr(a, field), rtol=0, atol=0)
    c = model.prior_controls(4, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.decode_controls(c), model.decode_controls(c), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_trains_in_the_one_loop(name, tmp_path, mnist_dir):
    """20 steps on 300 images: the loss falls and stays finite; the run's checkpoint is the model asked for."""
    cfg = TrainConfig(steps=20, batch_size=50, lr=1e-3, warmup=0, train_limit=300, eval_limit=100,
                      data_dir=str(mnist_dir), save_every=0, log_every=1, device="cpu")
    result = train(default_config("mnist", name, hidden=64, channels=(16, 32)), cfg, tmp_path, show_progress=False)
    losses = [r["loss"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(losses) == 20 and all(math.isfinite(v) for v in losses)
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < 0.8 * first, f"loss fell only from {first:.1f} to {last:.1f}"
    assert math.isfinite(result["elbo"]) and len(result["kl"]) == 3
    model, info = load_model(tmp_path / "ckpt.safetensors")
    assert isinstance(model, CLASSES[name]) and info.train["lr"] == 1e-3


@pytest.fixture(scope="module", params=sorted(CLASSES))
def ckpt(request, tmp_path_factory, mnist_dir):
    """`vlae train mnist --model NAME`, 3 steps on 100 images."""
    out = tmp_path_factory.mktemp(request.param) / "run"
    r = run("train", "mnist", "--model", request.param, "--hidden", 32, "--steps", 3, "--batch-size", 50,
            "--train-limit", 100, "--eval-limit", 50, "--data-dir", mnist_dir, "--out", out, "--no-progress",
            "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "test ELBO" in r.output
    return out / "ckpt.safetensors"


def test_cli_commands(ckpt, mnist_dir, tmp_path):
    info = load_model(ckpt)[1]
    assert info.train["lr"] == 1e-4  # the HVAE's own learning rate
    r = run("sample", ckpt, "--n", 6, "--out", tmp_path / "s.npz")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "s.npz")["x"].shape == (6, 1, 28, 28)
    r = run("traverse", ckpt, "--layer", 3, "--steps", 3, "--out", tmp_path / "t.npz")
    assert r.exit_code == 0, r.output
    assert np.load(tmp_path / "t.npz")["x"].shape == (3, 3, 1, 28, 28) and "eps_l" in " ".join(r.output.split())
    r = run("encode", ckpt, "--split", "test", "--data-dir", mnist_dir, "--out", tmp_path / "c.npz")
    assert r.exit_code == 0, r.output
    assert info.config.latent_dims == (10, 10, 10)  # MNIST's figure3 recipe
    assert [np.load(tmp_path / "c.npz")[f"z{l}"].shape for l in (1, 2, 3)] == [(10000, 10)] * 3


def test_cli_eval(ckpt, mnist_dir, tmp_path):
    """`vlae eval`: the report, with Figure 2's chain on z_1 for the LVAE (its generative model is Markov) and
    without it for the autoregressive HVAE (x reads every level)."""
    clf = tmp_path / "clf.safetensors"  # an untrained classifier: the plumbing, not a minute of training
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in DigitNet().state_dict().items()}, clf,
              metadata={"format": CLASSIFIER_FORMAT, "test_accuracy": "0.1", "epochs": "0"})
    r = run("eval", ckpt, "--limit", 50, "--probe-images", 100, "--classifier", clf, "--data-dir", mnist_dir,
            "--out", tmp_path / "r.json", "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    name = load_model(ckpt)[1].config.model
    assert report["model"] == name and report["control"] == "eps" and len(report["levels"]) == 3
    assert math.isfinite(report["elbo"])
    if name == "lvae":
        assert report["gibbs"]["chains"] == 100
    else:
        assert report["gibbs"] is None

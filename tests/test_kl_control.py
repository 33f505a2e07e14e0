"""--kl-target: a controller on each targeted level's KL weight (vlae_fast/kl_control.py)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from vlae_fast.cli.app import app
from vlae_fast.config import TrainConfig
from vlae_fast.errors import ConfigError
from vlae_fast.kl_control import LAMBDA_MAX, LAMBDA_MIN, KLControl


def test_update_moves_only_targeted_levels_that_are_on():
    """lambda_l <- clamp(lambda_l * exp(rate (KL_l - tau_l))) on a level with a target that is switched on; 1 elsewhere."""
    g = torch.Generator().manual_seed(3)
    for L in (1, 3, 5):
        target = tuple(float(t) for t in (torch.rand(L, generator=g) * 4 + 1))
        target = (0.0,) + target[1:] if L > 1 else target  # level 1 without a target (one level: targeted)
        control = KLControl(target, 0.3, torch.device("cpu"))
        on = torch.ones(L, dtype=torch.bool)
        if L > 2:
            on[-1] = False  # the top level not yet switched on
        want = torch.ones(L, dtype=torch.float64)
        for _ in range(4):
            kl = torch.rand(L, generator=g) * 8
            control.update(kl, on)
            for l in range(L):
                if target[l] > 0 and on[l]:
                    want[l] = min(LAMBDA_MAX, max(LAMBDA_MIN, want[l] * math.exp(0.3 * (kl[l].item() - target[l]))))
            assert torch.allclose(control.lam.double(), want, rtol=1e-5), (L, control.lam, want)
        assert control.lam[0].item() == 1.0 or L == 1
        if L > 2:
            assert control.lam[-1].item() == 1.0


def test_lambda_is_clamped_both_ways():
    control = KLControl((2.0, 2.0), 1.0, torch.device("cpu"))
    for _ in range(20):
        control.update(torch.tensor([50.0, 0.0]), torch.tensor([True, True]))
    assert control.lam.tolist() == pytest.approx([LAMBDA_MAX, LAMBDA_MIN])


ARGS = ["train", "mnist", "--steps", "6", "--stage-steps", "1", "--fade-steps", "1", "--warmup", "1", "--hidden", "32",
        "--train-limit", "40", "--batch-size", "20", "--eval-limit", "20", "--device", "cpu", "--no-progress",
        "--log-every", "1", "--save-every", "2"]


def lines(run) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_train_holds_the_loss_to_the_controlled_weights_and_resumes_the_controller(tmp_path, mnist_dir):
    """Each logged loss is recon + sum_l w_l lambda_l KL_l with the lambda of the step before; lambda follows the
    logged KL by the update rule; the option reaches settings.toml; a run stopped and resumed ends on the same
    lambda as one run straight through (the controller's state is in the checkpoint)."""
    args = ARGS + ["--data-dir", str(mnist_dir), "--kl-target", "0,0,0.5", "--kl-target-rate", "0.5"]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    settings = (tmp_path / "run" / "settings.toml").read_text()
    assert 'kl-target = "0,0,0.5"' in settings and "kl-target-rate = 0.5" in settings
    logged = lines(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3, 4, 5, 6]
    lam = [1.0, 1.0, 1.0]
    for r in logged:
        want = r["recon"] + sum(w * m * k for w, m, k in zip(r["kl_weights"], lam, r["kl"]))
        assert r["loss"] == pytest.approx(want, rel=1e-5), r["step"]
        lam = [lam[0], lam[1], lam[2] * math.exp(0.5 * (r["kl"][2] - 0.5))]
        assert r["kl_lambda"] == pytest.approx(lam, rel=1e-5)
    assert lam[2] > 1.2  # the top level held more than 0.5 nats, so its weight rose

    half = ARGS[:]
    half[half.index("--steps") + 1] = "4"
    r = CliRunner().invoke(app, half + ["--data-dir", str(mnist_dir), "--kl-target", "0,0,0.5", "--kl-target-rate",
                                        "0.5", "--out", str(tmp_path / "part")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["train", "mnist", "--resume", str(tmp_path / "part"), "--steps", "6", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert lines(tmp_path / "part")[-1]["kl_lambda"] == pytest.approx(logged[-1]["kl_lambda"], rel=1e-6)


def test_controller_waits_for_its_start_step(tmp_path, mnist_dir):
    """--kl-target-start S: lambda stays 1 through the first S steps, then follows the update rule."""
    args = ARGS + ["--data-dir", str(mnist_dir), "--kl-target", "0,0,0.5", "--kl-target-rate", "0.5",
                   "--kl-target-start", "3"]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "kl-target-start = 3" in (tmp_path / "run" / "settings.toml").read_text()
    lam = 1.0
    for r in lines(tmp_path / "run"):
        if r["step"] > 3:
            lam *= math.exp(0.5 * (r["kl"][2] - 0.5))
        assert r["kl_lambda"] == pytest.approx([1.0, 1.0, lam], rel=1e-5), r["step"]
    assert lam > 1.1
    with pytest.raises(ConfigError, match="--kl-target-start is a step and must be >= 0"):
        TrainConfig(kl_target_start=-1)


def test_a_level_not_yet_switched_on_keeps_lambda_1(tmp_path, mnist_dir):
    """Progressive training: the bottom level's lambda stays 1 while its fade is 0 (it pays pre_kl, no target yet),
    then follows the update rule from the step its fade is > 0."""
    args = ARGS + ["--data-dir", str(mnist_dir), "--kl-target", "0.2,0,0", "--kl-target-rate", "0.5"]
    r = CliRunner().invoke(app, args + ["--out", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    lam, logged = 1.0, lines(tmp_path / "run")
    assert logged[0]["fade"][0] == 0.0 < logged[-1]["fade"][0]  # level 1 switches on during the run
    for r in logged:
        if r["fade"][0] > 0:
            lam = max(0.1, min(10.0, lam * math.exp(0.5 * (r["kl"][0] - 0.2))))
        assert r["kl_lambda"] == pytest.approx([lam, 1.0, 1.0], rel=1e-5), r["step"]
    assert lam != 1.0


def test_without_a_target_no_lambda_is_logged(tmp_path, mnist_dir):
    r = CliRunner().invoke(app, ARGS + ["--data-dir", str(mnist_dir), "--kl-target", "0,0,0", "--out", str(tmp_path / "r")])
    assert r.exit_code == 0, r.output
    assert all("kl_lambda" not in r for r in lines(tmp_path / "r"))
    # the recipe holds level 2 at 6 nats: the file says "off" outright, so --config repeats the run without a target
    assert 'kl-target = "0,0,0"' in (tmp_path / "r" / "settings.toml").read_text()
    assert "kl-target-rate" not in (tmp_path / "r" / "settings.toml").read_text()


def test_settings_file_repeats_a_run_that_turned_the_recipes_options_off(tmp_path, mnist_dir):
    """--kl-target 0,0,0 and --first-target x turn off what the hierarchy recipe sets (a KL target on level 2, the
    normalised first-stage target): `vlae train --config settings.toml` must not bring them back."""
    args = ["train", "mnist", "--steps", "6", "--train-limit", "200", "--eval-limit", "50", "--no-progress",
            "--data-dir", str(mnist_dir)]
    r = CliRunner().invoke(app, args + ["--kl-target", "0,0,0", "--first-target", "x", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "a" / "settings.toml"), "--out", str(tmp_path / "b"),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    again = (tmp_path / "b" / "settings.toml").read_text()
    assert 'kl-target = "0,0,0"' in again and 'first-target = "x"' in again and "normalize" not in again
    assert all("kl_lambda" not in r for r in lines(tmp_path / "b"))


def test_wrong_targets_are_refused(tmp_path, mnist_dir):
    args = ARGS + ["--data-dir", str(mnist_dir)]
    r = CliRunner().invoke(app, args + ["--kl-target", "3,2", "--out", str(tmp_path / "two")])
    assert r.exit_code == 2 and "--kl-target gives 2 numbers for 3 levels" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(app, args + ["--kl-target", "3,-1,0", "--out", str(tmp_path / "neg")])
    assert r.exit_code == 2 and "KL targets must be numbers of nats >= 0" in r.output
    r = CliRunner().invoke(app, args + ["--kl-target", "0,4,0", "--free-bits", "0,3,0", "--out", str(tmp_path / "both")])
    assert r.exit_code == 2 and "level 2 has both --free-bits and --kl-target" in r.output, r.output
    assert not (tmp_path / "both").exists()
    r = CliRunner().invoke(app, args + ["--kl-target", "0,4,0", "--free-bits", "3,0,0", "--out", str(tmp_path / "ok"),
                                        "--steps", "3"])
    assert r.exit_code == 0, r.output  # free bits on one level, a target on another: allowed
    with pytest.raises(ConfigError, match="--kl-target-rate must be a number > 0"):
        TrainConfig(kl_target=(1.0,), kl_target_rate=0.0)

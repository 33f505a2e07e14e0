"""Resume after a kill: a run killed with SIGKILL at a random step and resumed ends where an
uninterrupted run with the same seed ends (loss curve and weights); SIGINT saves and says how to resume."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vlae_fast.checkpoint import read_checkpoint

STEPS = 6  # 80 images / 20 per batch = 4 steps per epoch: the run crosses an epoch boundary
SMALL = ["--train-limit", "80", "--batch-size", "20", "--eval-limit", "20", "--layers", "2", "--latent-dim", "2",
         "--warmup", "5", "--save-every", "2", "--log-every", "1", "--device", "cpu", "--no-progress", "--seed", "3",
         "--hidden", "64"]  # a small network: the same resume logic, 1 MB checkpoints instead of 100s of MB


def vlae(args: list[str], mnist_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}  # same thread count in every run: same float sums
    return subprocess.Popen([sys.executable, "-m", "vlae_fast.cli", "train", "mnist", "--data-dir", str(mnist_dir),
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def curve(run: Path) -> list[dict]:
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    return [l for l in lines if "loss" in l]


def wait_for_lines(run: Path, proc: subprocess.Popen, n: int, timeout: float = 240) -> None:
    t = time.time()
    while time.time() - t < timeout:
        f = run / "metrics.jsonl"
        if f.is_file() and f.read_text().count("\n") >= n:
            return
        assert proc.poll() is None, f"the run ended before step {n}: {proc.communicate()}"
        time.sleep(0.05)
    pytest.fail(f"no step {n} within {timeout} s")


RECIPES = {"paper": ["--recipe", "paper"],  # the top level alone for steps 1-3, the bottom one fading in over 4-5:
           "hierarchy": ["--recipe", "hierarchy", "--warmup", "2", "--fade-steps", "2",  # kills land mid-stage;
                         "--top-lr", "0.5",  # the top's slower lr from step 4 on: a second Adam group,
                         "--lr-decay", "cosine", "--lr-decay-start", "1"]}  # and every lr decaying from step 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
def test_sigkill_at_random_step_then_resume_matches_uninterrupted_run(tmp_path, mnist_dir, recipe):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    small = [*SMALL, *RECIPES[recipe]]  # the later --warmup wins
    p = vlae([*small, "--steps", str(STEPS), "--out", str(ref)], mnist_dir)
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err

    seed = int(os.environ.get("VLAE_TEST_SEED", "0"))  # another seed tries another kill step; the same one repeats it
    kill_after = random.Random(seed).randint(3, STEPS - 1)  # after a checkpoint (step 2) and before the end
    p = vlae([*small, "--steps", str(STEPS), "--out", str(cut)], mnist_dir)
    wait_for_lines(cut, p, kill_after)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    saved = read_checkpoint(cut / "ckpt.safetensors").step  # the kill left an intact, loadable checkpoint
    assert 2 <= saved <= kill_after and saved % 2 == 0, (saved, kill_after)

    p = vlae(["--resume", str(cut), "--no-progress"], mnist_dir)  # every option comes from the checkpoint
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    a, b = curve(ref), curve(cut)
    print(f"killed after step {kill_after} (VLAE_TEST_SEED={seed}), resumed from step {saved}")
    assert [l["step"] for l in b] == list(range(1, STEPS + 1)), [l["step"] for l in b]
    for la, lb in zip(a, b):
        assert la["loss"] == pytest.approx(lb["loss"], rel=1e-5, abs=1e-4), (la, lb)
        assert la["kl_weight"] == lb["kl_weight"] and la.get("fade") == lb.get("fade")
        assert la.get("kl_weights") == lb.get("kl_weights")
    wa, wb = read_checkpoint(ref / "ckpt.safetensors"), read_checkpoint(cut / "ckpt.safetensors")
    assert wb.step == STEPS
    for k, v in wa.model_state.items():
        torch.testing.assert_close(wb.model_state[k], v, rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    for k, v in wa.optim_state.items():
        torch.testing.assert_close(wb.optim_state[k], v, rtol=1e-4, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path, mnist_dir):
    run = tmp_path / "run"
    p = vlae([*SMALL, "--steps", "50", "--save-every", "0", "--out", str(run)], mnist_dir)
    wait_for_lines(run, p, 1)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 128 + signal.SIGINT, err
    ckpt = read_checkpoint(run / "ckpt.safetensors")
    assert 1 <= ckpt.step < 50 and ckpt.rng["cpu"].dtype == torch.uint8
    msg = " ".join(err.split())
    assert "SIGINT" in msg and f"after step {ckpt.step}/50" in msg and f"--resume {run}" in msg, err


def test_plan_resume_takes_the_runs_options_and_allows_only_safe_changes(tiny_ckpt):
    from vlae_fast.errors import CheckpointError, ConfigError
    from vlae_fast.resume import plan_resume
    with pytest.raises(CheckpointError, match="at step 3.*pass --steps larger than 3"):
        plan_resume(tiny_ckpt.parent)  # the run is finished
    mcfg, cfg, ckpt = plan_resume(tiny_ckpt.parent, "mnist", steps=5, lr=1e-4, batch_size=None)
    assert (cfg.steps, cfg.lr, cfg.batch_size, cfg.train_limit, ckpt.step) == (5, 1e-4, 50, 200, 3)
    assert mcfg == ckpt.config and ckpt.rng["cpu"].dtype == torch.uint8
    with pytest.raises(ConfigError, match="trained on 'mnist', not 'svhn'"):
        plan_resume(tiny_ckpt, "svhn", steps=5)
    with pytest.raises(ValueError, match="cannot override"):
        plan_resume(tiny_ckpt, steps=5, seed=1)

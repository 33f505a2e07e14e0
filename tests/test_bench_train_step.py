"""bench/train_step.py runs end to end on a CPU (two timed steps, each variant in its own process), lists the
CUDA-only variants as skipped with the reason, and its plain baseline does not import the library."""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_plain_baseline_does_not_import_the_library():
    code = ("import sys; sys.path.insert(0, 'bench'); import plain_vlae; "
            "bad = [m for m in sys.modules if m.startswith('vlae_fast')]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_train_step_bench_writes_rows_and_skips_what_the_device_lacks(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)  # the interpreter is never timed
    cmd = [sys.executable, "bench/train_step.py", "--cases", "mnist-b100", "--steps", "2", "--warmup", "1",
           "--variants", "eager-plain,lib-default,lib-system-malloc,lib-triton,lib-cudagraph", "--sgemm", "256",
           "--device", "cpu", "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    [path] = tmp_path.glob("cpu-*-train.json")
    result = json.loads(path.read_text())
    assert result["cpu"]["model"] and result["torch"] and len(result["loadavg_before"]) == 3
    rows = {r["variant"]: r for r in result["cases"][0]["rows"]}
    assert rows["lib-triton"]["skipped"].startswith("skipped: no CUDA")
    assert rows["lib-cudagraph"]["skipped"].startswith("skipped: no CUDA")
    plain, lib = rows["eager-plain"], rows["lib-default"]
    assert plain["speedup_vs_plain"] == 1.0 and lib["steps"] == 2 and 0 < lib["frac_sgemm"]
    assert lib["gflops"] * lib["median_ms"] == pytest_approx(result["cases"][0]["flops_per_step"] / 1e6)
    assert rows["lib-system-malloc"]["steps"] == 2
    # each variant's own process: the model (29 M float32 parameters, 116 MB) and Adam's two moments at least
    assert all(rows[v]["peak_mem_mib"] > 300 for v in ("eager-plain", "lib-default", "lib-system-malloc"))
    assert "| mnist-b100 | lib-triton | skipped: no CUDA" in p.stdout


def pytest_approx(x):
    import pytest
    return pytest.approx(x, rel=1e-6)


def test_a_variant_that_raises_becomes_a_row_saying_so():
    """A worker whose variant fails (a CUDA graph the device refuses, say) answers ("failed", why) instead of dying
    silently, so the benchmark's other variants still get their rows."""
    import multiprocessing as mp
    sys.path.insert(0, str(REPO / "bench"))
    import train_step
    ours, theirs = mp.Pipe()
    train_step.worker(theirs, "no-such-case", "lib-default", "cpu", 1)
    answer = ours.recv()
    assert train_step.is_failure(answer) and "failed in set-up: KeyError" in answer[1], answer
    assert not train_step.is_failure((0.1, 0)) and train_step.ms(2.144) == "2.14" and train_step.ms(419.4) == "419"


def test_epoch_bench_runs_vlae_trains_path_on_a_short_epoch(tmp_path, mnist_dir):
    """bench/epoch.py times `vlae train`'s own code; an epoch of 200 images (2 steps) is too short for the default
    recipe's first stage, and the benchmark drops its first-stage target as `vlae train --steps 2` does."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    cmd = [sys.executable, "bench/epoch.py", "--data-dir", str(mnist_dir), "--images", "200", "--eval-limit", "50",
           "--out", str(tmp_path)]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    [path] = tmp_path.glob("cpu-*-epoch.jsonl")
    row = json.loads(path.read_text().splitlines()[-1])
    assert row["steps"] == 2 and row["recipe"] == "hierarchy" and row["wall_s"] >= row["train_loop_s"] > 0
    assert row["test_elbo"] < 0

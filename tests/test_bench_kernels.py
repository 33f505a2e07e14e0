"""bench/kernels.py on a machine without CUDA: a clear message and exit code 2; its pure parts work."""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench" / "kernels.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_kernels", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the benchmark would run")
def test_exits_with_a_clear_message_without_cuda():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert "needs a CUDA GPU" in res.stderr and "nothing was measured" in res.stderr
    assert not res.stdout


def test_refuses_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2 and "unset it" in res.stderr


def test_ladder_shapes_come_from_the_models():
    shapes = load_bench().ladder_shapes()
    assert ("mnist", 100, 1024, 1024, 6272) in shapes  # u_1's join: [z~_2; v_1(z_1)] -> 128 x 7 x 7
    assert ("mnist", 100, 1024, 1024, 1024) in shapes
    assert {s[0] for s in shapes} == {"mnist"}  # the CelebA ladder joins maps before a conv: no ladder_linear


def test_markdown_table():
    rows = [dict(op="reparam_kl", shape="8x4", noise="kernel", dtype="float32", mode="fwd", provider=p, ms=ms,
                 gbps=g, memory_bound=True) for p, ms, g in (("eager", 0.3, 100.0), ("triton", 0.1, 300.0))]
    table = load_bench().markdown(rows, copy_gbps=400.0)
    assert "| triton | 0.1000 | 300 | 75 |  | 3.00 |" in table

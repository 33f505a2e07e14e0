"""host_memory.keep_freed_memory: after it, the training step reuses its buffers without page faults and
without growing (the point of it: bench/README.md), and VLAE_HOST_MALLOC=system leaves malloc alone. Each
case runs the library's MNIST training step in a fresh process, as the setting is process-wide."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

CODE = """
import resource, sys, torch
from vlae_fast import guards, host_memory
from vlae_fast.models import build_model, default_config
from vlae_fast.train import make_optimizer, make_step
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
torch.manual_seed(0)
model = build_model(default_config("mnist", "vlae", hidden=256))
opt = make_optimizer(model, 2e-4)
step = make_step(model, model, opt, guards.NonFiniteGuard(opt, torch.device("cpu")))
w, data = torch.tensor(0.5), torch.rand(500, 1, 28, 28)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
for i in range(12):
    if i == 4:
        faults, rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, rss()
    step(data[torch.randint(0, 500, (100,))], w, None)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults, rss() - rss0)
"""


def steady_steps(mode: str, **env: str) -> tuple[bool, int, int]:
    """(applied, page faults in steps 5-12, RSS growth in MiB over them) of the MNIST step."""
    p = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    applied, faults, growth = p.stdout.split()
    return applied == "True", int(faults), int(growth)


def test_the_training_step_reuses_its_buffers_without_page_faults():
    applied, kept, growth = steady_steps("keep")
    _, system, _ = steady_steps("system")
    assert applied
    assert system > 10_000  # glibc's default: the step's large buffers are mapped and faulted in again
    assert kept < 1_000 and growth < 20  # reused in place: no faults, and the heap does not grow


def test_env_variable_turns_it_off():
    applied, faults, _ = steady_steps("keep", VLAE_HOST_MALLOC="system")
    assert not applied and faults > 10_000

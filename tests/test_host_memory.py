"""host_memory.keep_freed_memory: after it, a large freed block is kept and reused instead of being unmapped and
faulted in again (the point of it: bench/README.md); train() on the CPU applies it, and VLAE_HOST_MALLOC=system
leaves malloc alone. Each case runs in a fresh process, as the setting is process-wide.

The probe is glibc's own: a 64 MiB block is above glibc's largest mmap threshold (32 MiB), so by default every
malloc of it is a fresh mmap whose 16 384 pages fault in on first touch, every time. With the setting the block
comes from the heap and the second malloc finds the pages of the first. (Fault counts of the training step itself
vary from run to run, as glibc's threshold adapts to what was freed: ~0 to ~17 000 per step were seen with
glibc's default, so the step is not the probe.)"""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

BLOCK = 64 << 20
PAGES = BLOCK // 4096

CODE = """
import ctypes, resource, sys
mode, mnist = sys.argv[1], sys.argv[2]
applied = None
if mode == "keep":
    from vlae_fast import host_memory
    applied = host_memory.keep_freed_memory()
elif mode == "train":
    from vlae_fast.models import default_config
    from vlae_fast.train import TrainConfig, train
    import tempfile
    train(default_config("mnist", "vlae", hidden=32), TrainConfig(steps=1, batch_size=20, train_limit=40,
          eval_limit=20, data_dir=mnist, save_every=0, device="cpu"), tempfile.mkdtemp() + "/run", show_progress=False)
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def cycle():  # take the block, touch every page, give it back
    p = libc.malloc(%d)
    ctypes.memset(p, 1, %d)
    libc.free(p)
cycle()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    cycle()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
""" % (BLOCK, BLOCK)


def faults_after_first(mode: str, mnist: str = "", **env: str) -> tuple[str, int]:
    """(what keep_freed_memory returned, page faults of the 2nd-4th take of a 64 MiB block) in a fresh process."""
    p = subprocess.run([sys.executable, "-c", CODE, mode, mnist], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    applied, faults = p.stdout.split()[-2:]
    return applied, int(faults)


def test_a_freed_block_is_reused_without_page_faults():
    applied, kept = faults_after_first("keep")
    _, system = faults_after_first("system")
    assert applied == "True"
    assert system > 3 * PAGES * 0.9  # glibc's default: mapped afresh and faulted in each time
    assert kept < PAGES // 10  # kept in the heap: the pages are already there


def test_env_variable_turns_it_off():
    applied, faults = faults_after_first("keep", VLAE_HOST_MALLOC="system")
    assert applied == "False" and faults > 3 * PAGES * 0.9


def test_train_on_the_cpu_applies_it_unless_told_not_to(mnist_dir):
    _, after_train = faults_after_first("train", str(mnist_dir))
    assert after_train < PAGES // 10
    _, told_not_to = faults_after_first("train", str(mnist_dir), VLAE_HOST_MALLOC="system")
    assert told_not_to > 3 * PAGES * 0.9

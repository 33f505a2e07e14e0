"""host_memory.keep_freed_memory: after it, a large buffer freed and allocated again costs no page faults
(the point of it: bench/README.md), and VLAE_HOST_MALLOC=system leaves malloc alone. Each case runs in a
fresh process, as the setting is process-wide."""
import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="mallopt is glibc's")

CODE = """
import resource, sys, torch
from vlae_fast import host_memory
applied = host_memory.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(4):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 << 20)  # 64 MiB, written: every page touched
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del x
print(applied, min(faults[1:]))
"""


def faults_per_reuse(mode: str, **env: str) -> tuple[bool, int]:
    p = subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1", **env})
    applied, faults = p.stdout.split()
    return applied == "True", int(faults)


def test_freed_buffers_are_reused_without_page_faults():
    applied, kept = faults_per_reuse("keep")
    _, system = faults_per_reuse("system")
    assert applied
    assert system > 10_000  # 64 MiB = 16 384 pages of 4 KiB, faulted in again each time by default
    assert kept < 500


def test_env_variable_turns_it_off():
    applied, faults = faults_per_reuse("keep", VLAE_HOST_MALLOC="system")
    assert not applied and faults > 10_000

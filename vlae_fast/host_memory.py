"""Host memory for CPU training: keep freed memory in the process instead of handing it back to the kernel.

A CPU training step allocates and frees the same large buffers every step (activations, gradients: ~120 MB
for the MNIST VLAE). glibc's malloc serves blocks above its mmap threshold (128 KiB to 32 MiB) with fresh
mmap()s and returns them with munmap(), so every step the kernel hands out new pages again and zero-fills
each one on first touch: ~4 600 to ~13 000 page faults per MNIST step on the CPUs of this project, varying
from run to run as glibc's threshold adapts (bench/README.md). With mmap switched off and the heap never
trimmed, the second step finds its buffers already mapped. The numbers do not change; only where the bytes come from.

It suits the training loop's pattern (the same buffers freed and taken again each step: over 60 MNIST steps
the RSS stayed at 961 MiB with no page faults), not every pattern: one large tensor freed while smaller
blocks allocated after it still live is not reused for the next tensor of its size (posix_memalign asks for
a little more), so a loop of only that grows the heap. Hence only train() applies it.

The setting is process-wide: `train()` (what `vlae train` runs) applies it to CPU runs, where the process is
there to train; nothing else in the library touches it. VLAE_HOST_MALLOC=system turns it off.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4
TRIM_THRESHOLD = 1 << 30  # give memory back only when 1 GiB lies free at the top of the heap


def keep_freed_memory() -> bool:
    """Serve every allocation from malloc's heap and keep freed blocks for reuse (glibc on Linux only).
    Returns True when the setting was applied, False where it does not apply or VLAE_HOST_MALLOC=system."""
    if os.environ.get("VLAE_HOST_MALLOC", "").lower() == "system":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

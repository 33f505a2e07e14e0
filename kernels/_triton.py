"""Triton, imported once and guarded: the package must import where Triton is missing (macOS, Windows).

Without Triton, `triton.jit` is a stand-in that keeps the kernel functions defined but unlaunchable,
and `tl.constexpr` exists so the kernels' annotations still evaluate; kernels/backend.py refuses the
Triton path with an error that says what to install.
"""
import os

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # pragma: no cover - exercised only on machines without Triton
    HAVE_TRITON = False

    class _Missing:
        constexpr = object  # annotations such as `BLOCK: tl.constexpr` still evaluate

        @staticmethod
        def jit(fn=None, **kwargs):
            return fn if fn is not None else (lambda f: f)

        @staticmethod
        def next_power_of_2(n: int) -> int:
            return 1 << max(0, int(n) - 1).bit_length()

    triton = tl = _Missing()

# Triton reads TRITON_INTERPRET when @triton.jit decorates a kernel, i.e. when this package is
# imported; CPU tensors can reach the kernels only in that mode.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernel_out_dtype(dtype):
    """The dtype a kernel should write for a `dtype` result. The interpreter has no bfloat16 of its own
    and truncates float32 -> bfloat16 instead of rounding to nearest (compiled kernels round), so
    there the kernels write float32 and the launcher rounds with torch: same values as on a GPU."""
    import torch

    return torch.float32 if INTERPRET and dtype == torch.bfloat16 else dtype

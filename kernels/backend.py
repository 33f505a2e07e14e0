"""Which implementation the ops in vlae_fast.kernels run: the fused Triton kernels or the references.

    auto   : Triton for CUDA tensors, the plain-PyTorch reference for everything else (the default)
    triton : Triton always; CPU tensors then need TRITON_INTERPRET=1 (Triton's slow interpreter)
    torch  : the plain-PyTorch reference always

Set it with `set_backend(name)` (or temporarily: `with use_backend(name): ...`), with the
environment variable VLAE_KERNELS, or with `--kernels` on the command line.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from torch import Tensor

from vlae_fast.errors import ConfigError

from ._triton import HAVE_TRITON, INTERPRET

BACKENDS = ("auto", "triton", "torch")
_backend: str | None = None  # None = follow $VLAE_KERNELS (default auto)
_env_backend: str | None = None  # $VLAE_KERNELS as read once (ops run every step; the environment is not re-read)


def _check(name: str, where: str) -> str:
    if name not in BACKENDS:
        raise ConfigError(f"{where} must be one of {', '.join(BACKENDS)}; got {name!r}")
    if name == "triton" and not HAVE_TRITON:
        raise ConfigError(f"{where}=triton asked for, but the triton package is not installed (it ships for Linux); "
                          "install it (pip install triton) or use auto / torch")
    return name


def get_backend() -> str:
    """The current choice: set_backend's, else $VLAE_KERNELS (read at the first call after import or after
    set_backend(None)), else 'auto'."""
    global _env_backend
    if _backend is not None:
        return _backend
    if _env_backend is None:
        _env_backend = _check(os.environ.get("VLAE_KERNELS", "auto") or "auto", "VLAE_KERNELS")
    return _env_backend


def set_backend(name: str | None) -> None:
    """Pick the kernels for every later call; None goes back to $VLAE_KERNELS (read afresh; default auto)."""
    global _backend, _env_backend
    _backend = None if name is None else _check(name, "--kernels")
    if name is None:
        _env_backend = None


@contextmanager
def use_backend(name: str | None) -> Iterator[None]:
    """set_backend(name) for the duration of a with-block, then restore the previous choice."""
    global _backend
    previous = _backend
    set_backend(name)
    try:
        yield
    finally:
        _backend = previous


def use_triton(x: Tensor) -> bool:
    """Whether an op whose main input is `x` runs its Triton kernels under the current backend."""
    backend = get_backend()
    if backend == "torch" or (backend == "auto" and not (HAVE_TRITON and x.is_cuda)):
        return False
    if not x.is_cuda and not INTERPRET:
        raise ConfigError(f"--kernels triton needs CUDA tensors, but got a {x.device.type} tensor; use a GPU "
                          "(--device cuda), --kernels auto/torch, or set TRITON_INTERPRET=1 before starting "
                          "Python to run the kernels in Triton's (slow) interpreter")
    return True

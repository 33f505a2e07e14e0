"""`vlae export`: a checkpoint to share: the weights (optionally at half precision) and the config, no
optimizer state and no random-generator states.

A training checkpoint carries Adam's two moments per weight (three times the weights' size) and the RNG
states for resuming; an export drops both. Every command that only reads a model (sample, traverse,
reconstruct, encode, evaluate, swap, explore) loads it like a full checkpoint: half-precision weights are
widened to float32 on load. It cannot continue training (`train --resume`): Adam's moments are gone.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import load_model, save_checkpoint
from .errors import ConfigError

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_checkpoint(src: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write src's model weights, cast to `dtype` (float32, float16 or bfloat16), and its config, step,
    training options and metrics to `out` (a .safetensors file). Returns out."""
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    src, out = Path(src), Path(out)
    if out.suffix != ".safetensors":
        raise ConfigError(f"--out {out}: use a file name ending in .safetensors")
    if out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the checkpoint being exported; choose another file name")
    model, ckpt = load_model(src, "cpu")
    model.to(DTYPES[dtype])  # floating parameters and buffers only; counters stay int64
    return save_checkpoint(out, model, step=ckpt.step, train=ckpt.train, metrics=ckpt.metrics)

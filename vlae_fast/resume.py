"""Resuming a run exactly where its last checkpoint left it.

A run's trajectory is a function of (seed, step, weights, optimizer state, RNG state): the batch of a
step comes from batch_indices(step, ...), the KL weight from kl_weight(step, ...), the noise from
torch's generators. The checkpoint stores all of these, so a resumed run replays the uninterrupted
one (bit for bit on the CPU, with the same thread count).
"""
from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

import torch

from .checkpoint import CKPT_NAME, Checkpoint, load_optimizer_state, load_weights, read_checkpoint
from .config import TrainConfig
from .errors import CheckpointError, ConfigError

# Options a resumed run may change; every other training option is taken from the checkpoint, since
# changing it (seed, batch size, warm-up, data) would not continue the same run.
# kl_scale may change too: e.g. a figure3 run (KL factors 4,2,1) finished on the plain ELBO with --kl-scale 1,1,1
OVERRIDABLE = ("steps", "device", "save_every", "log_every", "data_dir", "eval_limit", "lr", "grad_clip", "kl_scale")


def rng_state() -> dict[str, torch.Tensor]:
    """Every torch generator's state as a uint8 tensor: 'cpu', and 'cuda.<i>' per visible GPU."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    return state


def set_rng_state(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Restore what rng_state() saved; CheckpointError if a state is not a generator state."""
    try:
        if "cpu" in state:
            torch.set_rng_state(state["cpu"].to(torch.uint8))
        for key, s in state.items():
            if key.startswith("cuda.") and torch.cuda.is_available():
                i = int(key.split(".", 1)[1])
                if i < torch.cuda.device_count():  # fewer GPUs now: their noise cannot be replayed anyway
                    torch.cuda.set_rng_state(s.to(torch.uint8), i)
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: the saved random-generator state is invalid ({e}); the file is corrupt") from None


def find_checkpoint(path: str | Path) -> Path:
    """`--resume DIR` means DIR/ckpt.safetensors; `--resume FILE` means that file."""
    path = Path(path)
    if path.is_dir():
        path = path / CKPT_NAME
        if not path.is_file():
            raise CheckpointError(f"--resume {path.parent}: no {CKPT_NAME} there yet; the run saved no checkpoint "
                                  "(checkpoints are written every --save-every steps), so start it afresh")
    return path


def plan_resume(path: str | Path, dataset: str | None = None, restart_optimizer: bool = False,
                **overrides) -> tuple[object, object, Checkpoint]:
    """The model config, TrainConfig and checkpoint to continue the run saved at `path` (a run folder or a
    checkpoint). `overrides` (None = keep) may change only the OVERRIDABLE options; `dataset`, if given,
    must be the run's. A checkpoint without optimizer state (exported or stripped) cannot continue the
    run exactly: refused, unless restart_optimizer accepts fresh Adam moments."""
    ckpt_path = find_checkpoint(path)
    ckpt = read_checkpoint(ckpt_path)
    if not ckpt.train or "seed" not in ckpt.train:
        raise CheckpointError(f"{ckpt_path} holds no training state (it was not written by `vlae train`); "
                              "it cannot be resumed")
    if not ckpt.optim_state and not restart_optimizer:
        raise CheckpointError(f"{ckpt_path} holds no optimizer state (an exported or weights-only checkpoint), so "
                              "the run cannot go on exactly where it stopped; resume from the run's own checkpoint, "
                              "or pass --restart-optimizer to continue with fresh Adam moments")
    if dataset is not None and ckpt.train.get("dataset") != dataset:
        raise ConfigError(f"--resume {path}: that run trained on {ckpt.train.get('dataset')!r}, not {dataset!r}; "
                          f"use `vlae train {ckpt.train.get('dataset')} --resume {path}`")
    bad = sorted(k for k, v in overrides.items() if v is not None and k not in OVERRIDABLE)
    if bad:
        raise ValueError(f"plan_resume cannot override {bad}; only {OVERRIDABLE}")
    known = {f.name for f in fields(TrainConfig)}
    saved = {k: v for k, v in ckpt.train.items() if k in known}  # a newer version's extra options are dropped
    saved.update({k: v for k, v in overrides.items() if v is not None})
    try:
        cfg = TrainConfig(**saved)
    except TypeError as e:
        raise CheckpointError(f"{ckpt_path}: its training options do not fit this version ({e})") from None
    if ckpt.step >= cfg.steps:
        raise CheckpointError(f"{ckpt_path} is at step {ckpt.step}, and the run asks for {cfg.steps} steps: nothing "
                              f"to resume; pass --steps larger than {ckpt.step} to train further")
    return ckpt.config, cfg, ckpt


def restore(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer, lr: float) -> int:
    """Load weights, optimizer state (with the run's current lr) and RNG state; return the step to go on from."""
    path = ckpt.path or "the checkpoint"
    load_weights(model, ckpt, path)
    load_optimizer_state(optimizer, ckpt)
    for group in optimizer.param_groups:
        group["lr"] = lr  # --lr may be lowered on resume (after a non-finite loss)
    set_rng_state(ckpt.rng, path)
    return ckpt.step


def trim_metrics(path: Path, step: int) -> None:
    """Drop metrics.jsonl lines logged after `step` (and a line cut short by a kill), so the resumed run's
    lines continue the curve without repeats."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    tmp.replace(path)


def remove_stale_temps(ckpt_path: Path) -> None:
    """Delete temporary files a kill in the middle of save_checkpoint left beside the checkpoint."""
    for tmp in ckpt_path.parent.glob(f".{ckpt_path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def seconds_so_far(ckpt: Checkpoint) -> float:
    """Training seconds the run had logged when the checkpoint was written (0 if unknown)."""
    train = ckpt.metrics.get("train")
    seconds = train.get("seconds", 0.0) if isinstance(train, dict) else 0.0
    return float(seconds) if isinstance(seconds, (int, float)) else 0.0

"""What keeps a long run safe: a clean stop on SIGINT/SIGTERM, and no step taken on a non-finite loss."""
from __future__ import annotations

import math
import signal
import threading

import torch
from torch import nn

from .errors import TrainingStopped


class StopRequest:
    """Context manager: while active, SIGINT and SIGTERM only set `.signum`; the training loop checks it
    after each step, saves and stops. A second signal stops at once (the default handler)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.signum = signum
        for s, old in self._old.items():  # a second Ctrl-C interrupts even a stuck save
            signal.signal(s, old)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old.clear()

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def stopped(self, step: int, total: int, ckpt: str, resume_hint: str) -> TrainingStopped:
        signum = self.signum or signal.SIGTERM  # under torchrun another rank may have received it
        return TrainingStopped(f"{signal.Signals(signum).name} received: stopped after step {step}/{total} and "
                               f"saved {ckpt}; resume with: {resume_hint}", exit_code=128 + signum)


def clip_and_check(model: nn.Module, loss: torch.Tensor, grad_clip: float) -> float | None:
    """Clip the global gradient norm to grad_clip (0 = no clipping) and return None if the loss and the
    gradient are finite, else the gradient norm (for the message). One CPU-GPU sync per step."""
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(params, grad_clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
    return None if finite.item() else float(norm)  # .item(): the sync point


def non_finite(step: int, loss: float, norm: float, lr: float, grad_clip: float, last_ckpt: str | None,
               resume_hint: str) -> TrainingStopped:
    """The error for a non-finite loss or gradient at `step` (1-based), saying what to change."""
    what = f"the loss is {loss}" if not math.isfinite(loss) else f"the gradient norm is {norm} (loss {loss:.4g})"
    kept = (f"The last good checkpoint {last_ckpt} is kept; " if last_ckpt
            else "No checkpoint was saved yet (lower --save-every to keep one); ")
    clip = f"lower --grad-clip (now {grad_clip:g})" if grad_clip > 0 else "set --grad-clip (e.g. 100)"
    how = f"resume with: {resume_hint} --lr {lr / 4:g}" if last_ckpt else "start again with a smaller --lr"
    return TrainingStopped(f"step {step}: {what}; the step was not taken. {kept}lower --lr (now {lr:g}) or {clip}, "
                           f"then {how}")

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


def grad_norm(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The global L2 norm of the gradients, sqrt(sum_i ||g_i||^2), as torch.nn.utils.get_total_norm computes it.

    On the CPU as one dot product g_i . g_i per tensor: for the MNIST VLAE's 29 M gradients ~4 ms on 2 threads
    against vector_norm's ~10 ms, 3 % of the training step (bench/README.md). A non-finite entry makes it
    non-finite, and squares overflow at the same size as in vector_norm (|g| ~ 1e19). On CUDA get_total_norm's
    one fused kernel over all tensors."""
    if not grads:
        return torch.zeros((), device=device)
    if grads[0].device.type != "cpu":
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.stack([torch.linalg.vecdot(g.reshape(-1), g.reshape(-1)) for g in grads]).sum().sqrt()


class NonFiniteGuard:
    """No update from a non-finite loss or gradient reaches the weights, with no CPU-GPU sync in the step.

    check() runs after backward: it clips the global gradient norm (grad_clip > 0) and, on the device,
    sets the fused Adam's `found_inf` flag when the loss or the norm is not finite; Adam then skips the
    whole update (weights, both moments and the step count stay as they were). The flag is sticky: every
    later step is skipped too, until the loop reads the flag on its next log or save step (tripped())
    and stops with non_finite()'s message about the first bad step.

    state: [tripped, step, loss, norm] of the first non-finite step (float64, on the device);
    step_t: the 1-based number of the current step, which the loop refills before each step.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        if not optimizer.defaults.get("fused"):
            raise ValueError("NonFiniteGuard needs an optimizer built with fused=True: only the fused update "
                             "honours found_inf (skips the step on the device)")
        self.state = torch.zeros(4, dtype=torch.float64, device=device)
        self.step_t = torch.zeros((), dtype=torch.float64, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        optimizer.found_inf = self.found_inf  # read by Adam.step (the hook GradScaler uses)

    def check(self, model: nn.Module, loss: torch.Tensor, grad_clip: float) -> torch.Tensor:
        """Clip to grad_clip (0 = no clipping), update the flag; returns the gradient norm (before clipping)."""
        params = [p for p in model.parameters() if p.grad is not None]
        norm = grad_norm([p.grad for p in params], loss.device)
        if grad_clip > 0:
            torch.nn.utils.clip_grads_with_norm_(params, grad_clip, norm, foreach=True)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        first = bad & (self.state[0] == 0)  # only the first bad step is reported
        now = torch.stack([torch.ones_like(self.step_t), self.step_t, loss.detach().double(), norm.double()])
        self.state.copy_(torch.where(first, now, self.state))
        self.found_inf.copy_(self.state[0])  # sticky: no update after the first bad step
        return norm

    def tripped(self, state: list[float] | None = None) -> tuple[int, float, float] | None:
        """(step, loss, norm) of the first non-finite step, or None. `state`: self.state already read to the
        host (the loop reads it with the logged figures, in one sync); else it is read here (a sync point)."""
        flag, step, loss, norm = self.state.tolist() if state is None else state
        return (int(step), loss, norm) if flag else None


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

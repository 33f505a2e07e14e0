"""A KL target per level, held by a controller on the level's KL weight (as in GECO, Rezende & Viola 2018, and
ControlVAE, Shao et al. 2020), instead of free bits' flat zone where an unused nat has no gradient.

Level l with a target tau_l > 0 has its KL weight multiplied by lambda_l, which follows the level's batch KL:
    lambda_l <- clamp(lambda_l * exp(rate * (KL_l - tau_l)), LAMBDA_MIN, LAMBDA_MAX)      after every step
A level holding more than tau_l nats pays more for them, one holding fewer pays less, so its KL settles near tau_l
whatever the other levels do; a level with tau_l = 0 keeps lambda_l = 1. The update is an integral controller in
log lambda (the multiplier of a constraint KL_l = tau_l, GECO's update); the clamp bounds its wind-up while the
KL weight still warms up. Under progressive training a level's lambda moves only once the level is switched on,
and no lambda moves before the step kl_target_start (so the top level, training alone in the first stage, can
learn its factors before the controller holds it to its target).
The loss weight of level l is w_l(t) * beta_l * lambda_l; the reported ELBO always uses KL_l with weight 1.
"""
from __future__ import annotations

import torch

from .errors import CheckpointError

LAMBDA_MIN, LAMBDA_MAX = 0.1, 10.0  # how far the controller may move a level's KL weight, either way


class KLControl:
    """lambda_l of every level as a [L] tensor on the device, updated without a host sync."""

    def __init__(self, target: tuple[float, ...], rate: float, device: torch.device):
        self.target = torch.tensor(target, dtype=torch.float32, device=device)
        self.controlled = self.target > 0  # levels without a target keep lambda = 1
        self.rate = rate
        self.lam = torch.ones(len(target), dtype=torch.float32, device=device)

    def update(self, kl: torch.Tensor, on: torch.Tensor) -> None:
        """One controller step from the batch's KL_l ([L], detached); on: [L] bool, the levels switched on."""
        move = torch.where(self.controlled & on, self.rate * (kl.float() - self.target), 0.0)
        self.lam.mul_(torch.exp(move)).clamp_(LAMBDA_MIN, LAMBDA_MAX)

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps to resume the controller exactly."""
        return {"lambda": self.lam.detach().cpu().clone()}

    def load(self, state: dict[str, torch.Tensor], path: str) -> None:
        lam = state.get("lambda")
        if lam is None:  # a checkpoint without training state (`vlae export`), resumed with --restart-optimizer:
            return  # the controller starts afresh from 1, as Adam's moments do
        if lam.shape != self.lam.shape:
            raise CheckpointError(f"{path}: its KL controller has {lam.numel()} levels, the model {self.lam.numel()}; "
                                  "the file is corrupt")
        self.lam.copy_(lam.to(self.lam.device))

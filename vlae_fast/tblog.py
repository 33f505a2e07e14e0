"""Optional TensorBoard logging of a training run (`vlae train --tensorboard`), into RUN/tensorboard/.

Scalars at every metrics.jsonl line: loss, -log r(x|z) (recon), KL per level, total KL, KL weight;
every `every` steps one traversal grid per level (generate.traverse, 8 x 8, fixed seed, so grids of
different steps are comparable); at the end the test-set figures. Needs the `tensorboard` package
(`pip install "vlae-fast[tensorboard]"`); torch.utils.tensorboard writes the event files.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from .errors import ConfigError

GRID = 8  # traversal grid cells per side


def require_tensorboard() -> None:
    """ConfigError, saying what to install, when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  torch.utils.tensorboard needs it
    except ModuleNotFoundError:
        raise ConfigError("--tensorboard needs the tensorboard package: pip install tensorboard "
                          "(or install vlae-fast with the [tensorboard] extra)") from None


class TensorBoardLog:
    def __init__(self, run_dir: str | Path, every: int):
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter  # lazily: an optional integration

        self.every = every
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.last_grid = 0

    def log(self, line: dict, model: nn.Module) -> None:
        """One metrics.jsonl line as scalars; traversal grids when `every` steps have passed since the last."""
        step = line["step"]
        w = self.writer
        w.add_scalar("train/loss", line["loss"], step)
        w.add_scalar("train/recon", line["recon"], step)
        w.add_scalar("train/kl_total", sum(line["kl"]), step)
        w.add_scalar("train/kl_weight", line["kl_weight"], step)
        for l, v in enumerate(line["kl"], 1):
            w.add_scalar(f"kl/level{l}", v, step)
        if step - self.last_grid >= self.every:
            self.grids(model, step)
            self.last_grid = step
        w.flush()

    def grids(self, model: nn.Module, step: int) -> None:
        from .generate import traverse  # generate imports the data package; only needed here
        from .images import grid

        was_training = model.training
        for l in range(1, len(model.latent_dims) + 1):
            x = traverse(model, l, GRID, seed=0)  # [GRID, GRID, C, H, W], own generator: the run's RNG is untouched
            img = torch.from_numpy(grid(x)).float() / 255.0
            img = img[None] if img.dim() == 2 else img.permute(2, 0, 1)  # [C, H', W']
            self.writer.add_image(f"traverse/level{l}", img, step)
        model.train(was_training)

    def close(self, test: dict | None = None, step: int | None = None) -> None:
        if test is not None:
            self.writer.add_scalar("test/elbo", test["elbo"], step)
            self.writer.add_scalar("test/mse", test["mse"], step)
        self.writer.close()

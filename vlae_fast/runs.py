"""Runs the library trains once and then reuses: the paper's 3-level MNIST Markov HVAE (appendix B.1) that
the bare `vlae gibbs` draws its Figure 2 from. Training lives here, on the training side, so the sampling
modules (gibbs.py, generate.py) only ever read a finished checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

from .checkpoint import read_checkpoint
from .errors import CheckpointError, ConfigError
from .rundir import plan_run
from .train import train

DEFAULT_HVAE_RUN = Path("runs") / "mnist-hvae-gibbs"  # where the bare `vlae gibbs` trains and finds its model
# That run is `vlae train mnist --model hvae --layers 3`: MNIST's figure3 recipe (recipes.py; docs/gibbs.md), 5000
# steps at appendix B.1's learning rate, ~30-40 min on 2 CPU cores.
DEFAULT_HVAE_OPTIONS = {"model": "hvae", "layers": 3}


def default_hvae(data_dir: str | Path | None = None, device: str = "auto", show_progress: bool = True,
                 run_dir: Path = DEFAULT_HVAE_RUN, **train_overrides) -> tuple[Path, bool]:
    """The 3-level MNIST HVAE of Figures 2-3: reuse run_dir/ckpt.safetensors, or train it there first, with
    `vlae train mnist --model hvae --layers 3`'s defaults (train_overrides: more of its options, by name).

    Returns (checkpoint path, whether it was trained now). Refuses to touch a run that has not finished.
    """
    ckpt = Path(run_dir) / "ckpt.safetensors"
    if ckpt.is_file():
        info = read_checkpoint(ckpt, weights_only=True)
        total = int(info.train.get("steps", 0))
        if info.config.model != "hvae":
            raise ConfigError(f"{ckpt} holds a {info.config.model} model, not an hvae; move it away or pass an HVAE CKPT")
        if info.step < total:
            raise ConfigError(f"{ckpt} is an unfinished training run (step {info.step} of {total}); "
                              f"wait for it to finish, or delete {run_dir} to train afresh")
        return ckpt, False
    if (Path(run_dir) / "metrics.jsonl").exists():
        raise ConfigError(f"{run_dir} holds a training run that has not saved a checkpoint yet; "
                          f"wait for it, or delete {run_dir} to train afresh")
    options = {**DEFAULT_HVAE_OPTIONS, "data_dir": data_dir, "device": device, **train_overrides}
    plan = plan_run("mnist", options, out=run_dir)
    train(plan.model_cfg, plan.train_cfg, plan.run_dir, show_progress=show_progress)
    return ckpt, True


def describe(ckpt: Path) -> str:
    """One line about the model a checkpoint holds: steps and test ELBO where recorded."""
    try:
        info = read_checkpoint(ckpt, weights_only=True)
    except CheckpointError:
        return str(ckpt)
    test = info.metrics.get("test") or {}
    elbo = f", test ELBO {test['elbo']:.1f} nats" if "elbo" in test else ""
    return f"{ckpt} ({info.config.layers}-level {info.config.model}, {info.step} steps{elbo}, train {json.dumps({k: info.train.get(k) for k in ('recipe', 'lr', 'warmup', 'kl_scale')})})"

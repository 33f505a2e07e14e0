"""Figure 2: a Gibbs chain on the bottom level of a Markov HVAE against ancestral samples (section 3.1).

Proposition 1: at the ELBO's optimum the chain (eq. 6)
    z_1^(t) ~ q(z_1 | x^(t)),   x^(t+1) ~ p(x | z_1^(t))
converges to p_data(x) without ever touching z_2 .. z_L; the figure shows how close a trained model gets.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from . import generate
from .checkpoint import read_checkpoint
from .data import ImageSet
from .errors import CheckpointError, ConfigError
from .kernels import reparam_kl
from .models import HVAE, default_config
from .train import TrainConfig, train

DEFAULT_RUN = Path("runs") / "mnist-hvae-gibbs"  # where the bare `vlae gibbs` trains and finds its model
# Settings of that run: lr from appendix B.1; 5000 steps (~0.3 s each with OMP_NUM_THREADS=1, ~30 min on 2 busy
# CPU cores), the KL weight warmed up over the first ~1500 so it is ~0.96 by the end.
DEFAULT_TRAIN = {"steps": 5000, "warmup": 1500.0, "lr": HVAE.DEFAULT_LR}
INITS = ("data", "noise")
FEEDS = ("sample", "mean")


def default_checkpoint(data_dir: str | Path | None = None, device: str = "auto", show_progress: bool = True,
                       run_dir: Path = DEFAULT_RUN, **train_overrides) -> tuple[Path, bool]:
    """The paper's 3-level MNIST HVAE: reuse run_dir/ckpt.safetensors, or train it there first.

    Returns (checkpoint path, whether it was trained now). Refuses to touch a run that has not finished.
    """
    ckpt = Path(run_dir) / "ckpt.safetensors"
    if ckpt.is_file():
        info = read_checkpoint(ckpt)
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
    settings = {**DEFAULT_TRAIN, **train_overrides}
    tcfg = TrainConfig(dataset="mnist", device=device, data_dir=str(data_dir) if data_dir else None, **settings)
    train(default_config("mnist", "hvae", layers=3), tcfg, run_dir, show_progress=show_progress)
    return ckpt, True


def sample_x(mean: Tensor, output: str, scale: float | None, generator: torch.Generator | None = None) -> Tensor:
    """x ~ p(x | z_1) around its mean (in [0, 1]). Not clamped: eq. 6 re-encodes a draw of p(x | z_1) itself,
    which a Gaussian or Laplace puts outside [0, 1] (only the pictures clamp what they show)."""
    if output == "bernoulli":
        return torch.bernoulli(mean, generator=generator)
    if output == "gaussian":
        noise = torch.randn(mean.shape, generator=generator, device=mean.device)
    elif output == "laplace":  # inverse CDF of Laplace(0, 1)
        u = torch.rand(mean.shape, generator=generator, device=mean.device) - 0.5
        noise = -torch.sign(u) * torch.log1p(-2 * u.abs())
    else:
        raise ConfigError(f"cannot sample output distribution {output!r}")
    return mean + scale * noise


def initial_states(model: nn.Module, init: str, n: int, data: ImageSet | None, seed: int = 0) -> Tensor:
    """Starting points x^(0): n random test images (init='data') or uniform noise (init='noise')."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    if init == "noise":
        return torch.rand(n, *model.cfg.image_shape, generator=g).to(dev)
    if init != "data":
        raise ConfigError(f"--init must be one of {', '.join(INITS)}; got {init!r}")
    if data is None or not 1 <= n <= len(data):
        raise ConfigError(f"--chains must be between 1 and the {0 if data is None else len(data)} test images")
    idx = torch.randperm(len(data), generator=g)[:n]
    return data.batch(idx.to(data.x.device)).to(dev)


def check_hvae(model: nn.Module) -> None:
    """The chain of eq. 6 needs q(z_1 | x) and p(x | z_1) alone, i.e. a Markov HVAE."""
    if not model.GIBBS_ON_Z1:
        raise ConfigError(f"`vlae gibbs` needs a Markov HVAE checkpoint (train one with --model hvae); "
                          f"this one holds a {model.cfg.model} model")


@torch.no_grad()
def gibbs_chain(model: nn.Module, x0: Tensor, steps: int, every: int = 0, feed: str = "sample",
                seed: int = 0) -> tuple[Tensor, Tensor | None]:
    """Run eq. 6 for `steps` steps from x0 ([N, C, H, W]).

    Returns the mean of p(x | z_1) after the last step ([N, C, H, W], in [0, 1]) and, if every > 0, the
    means after steps every, 2 every, ... ([steps // every, N, C, H, W]). The chain continues with a sample
    of p(x | z_1) (feed='sample', eq. 6; unclamped) or with its mean (feed='mean', a deterministic-decoder variant).
    """
    check_hvae(model)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1; got {steps}")
    if not 0 <= every <= steps:
        raise ConfigError(f"--every must be 0 (off) or between 1 and --steps {steps}; got {every}")
    if feed not in FEEDS:
        raise ConfigError(f"--feed must be one of {', '.join(FEEDS)}; got {feed!r}")
    model.eval()
    g = torch.Generator(device=x0.device).manual_seed(seed)
    x, states = x0, []
    for t in range(1, steps + 1):
        mu, logvar = model.q_params(0, x)  # q(z_1 | x^(t))
        eps = torch.randn(mu.shape, generator=g, device=mu.device)
        z1 = reparam_kl(mu, logvar, eps)[0]  # z_1^(t) = mu + sigma * eps
        mean = model.generate([z1])  # mean of p(x | z_1^(t))
        x = mean if feed == "mean" else sample_x(mean, model.cfg.output, model.sigma, g)  # x^(t+1)
        if every and t % every == 0:
            states.append(mean)
    return mean, (torch.stack(states) if states else None)


@torch.no_grad()
def run_gibbs(model: nn.Module, data: ImageSet | None, chains: int = 100, steps: int = 100, every: int = 0,
              init: str = "data", feed: str = "sample", seed: int = 0) -> dict[str, Tensor]:
    """Figure 2's two panels: {'gibbs': [N, C, H, W], 'ancestral': [N, C, H, W]} (+ 'states' if every > 0)."""
    if chains < 1:
        raise ConfigError(f"--chains must be at least 1; got {chains}")
    x0 = initial_states(model, init, chains, data, seed)
    final, states = gibbs_chain(model, x0, steps, every, feed, seed)
    result = {"gibbs": final, "ancestral": generate.sample(model, chains, seed + 1)}
    if states is not None:
        result["states"] = states
    return result


def describe(ckpt: Path) -> str:
    """One line about the model a checkpoint holds: steps and test ELBO where recorded."""
    try:
        info = read_checkpoint(ckpt)
    except CheckpointError:
        return str(ckpt)
    test = info.metrics.get("test") or {}
    elbo = f", test ELBO {test['elbo']:.1f} nats" if "elbo" in test else ""
    return f"{ckpt} ({info.config.layers}-level {info.config.model}, {info.step} steps{elbo}, train {json.dumps({k: info.train.get(k) for k in ('lr', 'warmup')})})"

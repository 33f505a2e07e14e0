"""Figure 2: a Gibbs chain on the bottom level of a Markov HVAE against ancestral samples (section 3.1).

Proposition 1: at the ELBO's optimum the chain (eq. 6)
    z_1^(t) ~ q(z_1 | x^(t)),   x^(t+1) ~ p(x | z_1^(t))
converges to p_data(x) without ever touching z_2 .. z_L; the figure shows how close a trained model gets.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import generate
from .data import ImageSet
from .errors import ConfigError
from .kernels import reparam_kl

INITS = ("data", "noise")
FEEDS = ("sample", "mean")


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

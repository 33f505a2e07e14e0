"""Figure 2: a Gibbs chain on the bottom level of a Markov HVAE against ancestral samples (section 3.1).

Proposition 1: at the ELBO's optimum the chain (eq. 6)
    z_1^(t) ~ q(z_1 | x^(t)),   x^(t+1) ~ p(x | z_1^(t))
converges to p_data(x) without ever touching z_2 .. z_L; the figure shows how close a trained model gets.
It needs p(x | z_1) alone: a Markov generative model (hvae, lvae; for the LVAE, z_1 ~ q(z_1 | x) is drawn
through its top-down pass, the levels above sampled and then dropped).

Proposition 2 (appendix A), `whole=True`: the chain on the whole code
    z^(t) ~ q(z | x^(t)),   x^(t+1) ~ p(x | z^(t))
converges to p_data(x) for any model with an inference network, the autoregressive HVAE's shortcuts and
the VLAE included. For a Markov model the two chains are the same chain (x reads z_1 alone).

Both sample p_data only as far as q(z | x) equals the model's posterior p(z | x); where it does not, the chain
drifts (docs/gibbs.md measures the gap). `particles=K >= 2` replaces the draw from q by conditional importance
resampling (i-SIR; Andrieu, Lee & Vihola 2018): K - 1 fresh draws z^k ~ q(z | x) and the chain's current z,
one of them picked with probability proportional to w_k = p(x, z^k) / q(z^k | x). That step leaves p(z | x)
exactly invariant for any K >= 2, so the chain on (x, z) leaves the model's p(x, z) invariant and its x's are
the model's own samples, however far q is from p(z | x); a poor q only makes it move less often (`moved`).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import generate
from .data import ImageSet
from .errors import ConfigError
from .eval.posterior import GAP_K, posterior_gaps

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


def check_hvae(model: nn.Module, whole: bool = False) -> None:
    """The chain of eq. 6 needs q(z_1 | x) and p(x | z_1) alone, i.e. a Markov HVAE (hvae, lvae); the chain on
    the whole code (whole=True) needs only q(z | x) and p(x | z), which every model has."""
    if not whole and not model.GIBBS_ON_Z1:
        raise ConfigError(f"the chain on z_1 (eq. 6) needs a Markov HVAE checkpoint (--model hvae or lvae), whose x "
                          f"depends on z_1 alone; this checkpoint's model is {model.cfg.model}: run the chain on "
                          "the whole code with --whole (Proposition 2)")


UPPER_SEED = 0x5EED  # offset of the noise stream of levels 2 .. L from the chain's own seed
MAX_PARTICLES = 1000
ISIR_ROWS = 2000  # images per model call in the resampling step: bounds its memory


def resample_posterior(model: nn.Module, x: Tensor, z: list[Tensor] | None, particles: int,
                       g: torch.Generator) -> tuple[list[Tensor], Tensor]:
    """One i-SIR step towards p(z | x) (module docstring): `particles` - 1 fresh draws of q(z | x) and the current
    codes z (all `particles` fresh draws when z is None: plain SIR, for the chain's first step), one picked per
    row with probability w_k / sum w. Returns the picked codes (every level) and, per row, whether a fresh draw
    was picked ([N] bool). Rows go through the model in blocks of at most ISIR_ROWS images."""
    per = max(1, ISIR_ROWS // particles)
    parts = [_resample_block(model, x[i : i + per], None if z is None else [t[i : i + per] for t in z], particles, g)
             for i in range(0, x.shape[0], per)]
    return [torch.cat(level) for level in zip(*(p[0] for p in parts))], torch.cat([p[1] for p in parts])


def _resample_block(model: nn.Module, x: Tensor, z: list[Tensor] | None, particles: int,
                    g: torch.Generator) -> tuple[list[Tensor], Tensor]:
    n, keep = x.shape[0], z is not None
    m = particles - 1 if keep else particles
    x_m = x.repeat_interleave(m, dim=0)  # row i's draws are rows i*m .. i*m + m - 1
    fresh = model.posterior_sample(x_m, [torch.randn(n * m, d, generator=g, device=x.device)
                                         for d in model.latent_dims])
    log_w = model.log_weight(x_m, fresh).view(n, m)
    cand = [f.view(n, m, -1) for f in fresh]
    if keep:
        log_w = torch.cat([model.log_weight(x, z)[:, None], log_w], dim=1)  # the current codes are candidate 0
        cand = [torch.cat([z_l[:, None], c], dim=1) for z_l, c in zip(z, cand)]
    pick = torch.multinomial(torch.softmax(log_w.double(), dim=1), 1, generator=g).squeeze(1)
    rows = torch.arange(n, device=x.device)
    return [c[rows, pick] for c in cand], (pick > 0) if keep else torch.ones(n, dtype=torch.bool, device=x.device)


@torch.no_grad()
def gibbs_chain(model: nn.Module, x0: Tensor, steps: int, every: int = 0, feed: str = "sample",
                seed: int = 0, whole: bool = False, particles: int = 1) -> tuple[Tensor, Tensor | None, float | None]:
    """Run eq. 6 (on z_1) or, with whole=True, Proposition 2's chain (on every level) for `steps` steps from x0
    ([N, C, H, W]); particles >= 2 draws z by i-SIR instead of from q alone (module docstring).

    Returns the mean of p(x | z) after the last step ([N, C, H, W], in [0, 1]), if every > 0 the means after
    steps every, 2 every, ... ([steps // every, N, C, H, W]), and for particles >= 2 the fraction of steps after
    the first whose i-SIR picked a fresh draw (None for particles = 1). The chain continues with a sample
    of p(x | z) (feed='sample', eq. 6; unclamped) or with its mean (feed='mean', a deterministic-decoder variant).

    The noise of z_1 and of x comes from one generator seeded with `seed`, that of levels 2 .. L from a second
    one: so the chain on a Markov HVAE's z_1 draws exactly what it drew before levels above were sampled.
    """
    check_hvae(model, whole)
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1; got {steps}")
    if not 0 <= every <= steps:
        raise ConfigError(f"--every must be 0 (off) or between 1 and --steps {steps}; got {every}")
    if feed not in FEEDS:
        raise ConfigError(f"--feed must be one of {', '.join(FEEDS)}; got {feed!r}")
    if not 1 <= particles <= MAX_PARTICLES:
        raise ConfigError(f"--particles must be 1 (the draw from q, eq. 6) or between 2 and {MAX_PARTICLES} "
                          f"(importance resampling); got {particles}")
    model.eval()
    g = torch.Generator(device=x0.device).manual_seed(seed)
    g_up = torch.Generator(device=x0.device).manual_seed(seed + UPPER_SEED)
    n, (d1, *d_up) = x0.shape[0], model.latent_dims
    x, states, z, moved = x0, [], None, 0
    for t in range(1, steps + 1):
        if particles > 1:  # z^(t) ~ i-SIR(z^(t-1), x^(t)), which leaves p(z | x^(t)) invariant
            z, fresh = resample_posterior(model, x, z, particles, g)
            moved += int(fresh.sum()) if t > 1 else 0
        else:
            eps = [torch.randn(n, d1, generator=g, device=x.device)]
            eps += [torch.randn(n, d, generator=g_up, device=x.device) for d in d_up]
            z = model.posterior_sample(x, eps)  # z^(t) ~ q(z | x^(t)), every level: z_l = mu_l + sigma_l * eps_l
        mean = model.generate(z if whole else z[:1])  # mean of p(x | z^(t)), or of p(x | z_1^(t)) alone
        x = mean if feed == "mean" else sample_x(mean, model.cfg.output, model.sigma, g)  # x^(t+1)
        if every and t % every == 0:
            states.append(mean)
    rate = moved / (n * (steps - 1)) if particles > 1 and steps > 1 else None
    return mean, (torch.stack(states) if states else None), rate


@torch.no_grad()
def run_gibbs(model: nn.Module, data: ImageSet | None, chains: int = 100, steps: int = 100, every: int = 0,
              init: str = "data", feed: str = "sample", seed: int = 0, whole: bool = False,
              particles: int = 1) -> dict:
    """Figure 2's two panels: {'gibbs': [N, C, H, W], 'ancestral': [N, C, H, W], 'start': the chains' x^(0)}
    (+ 'states' if every > 0, + 'moved' if particles >= 2); the chain on z_1 (eq. 6) or, whole=True, on every
    level (Proposition 2)."""
    if chains < 1:
        raise ConfigError(f"--chains must be at least 1; got {chains}")
    check_hvae(model, whole)  # before reading any data
    x0 = initial_states(model, init, chains, data, seed)
    final, states, moved = gibbs_chain(model, x0, steps, every, feed, seed, whole, particles)
    result = {"gibbs": final, "ancestral": generate.sample(model, chains, seed + 1), "start": x0}
    if states is not None:
        result["states"] = states
    if moved is not None:
        result["moved"] = moved
    return result


@torch.no_grad()
def posterior_gap(model: nn.Module, data: ImageSet, images: int = 100, k: int = GAP_K, seed: int = 0) -> dict:
    """Why a chain drifts from the model: how far q(z | x) is from the model's posterior p(z | x) on the first
    `images` images of `data` (eval/posterior.py): {'k', 'images', 'total', 'levels' (Markov HVAE; level 1 is
    KL(q(z_1 | x) || p(z_1 | x)), the error of eq. 6's chain) or None}, nats per image."""
    if not 1 <= images <= len(data):
        raise ConfigError(f"--gap must be 0 (off) or between 1 and the {len(data)} test images; got {images}")
    x = data.batch(torch.arange(images, device=data.x.device)).to(next(model.parameters()).device)
    return posterior_gaps(model, x, k, seed)

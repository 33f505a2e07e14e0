"""What a trained model shows: prior samples, level traversals (Figures 5-7), reconstructions, codes."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .data import ImageSet
from .errors import ConfigError
from .noise import noise_traverse


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


@torch.no_grad()
def sample(model: nn.Module, n: int, seed: int = 0) -> Tensor:
    """n images from the prior z ~ N(0, I): [n, C, H, W] in [0, 1]."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1; got {n}")
    model.eval()
    return model.generate(model.prior_sample(n, _generator(model, seed)))


@torch.no_grad()
def traverse(model: nn.Module, layer: int, steps: int = 10, seed: int = 0, span: float = 2.0) -> Tensor:
    """Vary level `layer` (1-based, 1 = bottom) with the others fixed: [rows, cols, C, H, W].

    2-d level (Figure 5): its code sweeps a steps x steps grid of [-span, span]^2 (rows: 2nd coordinate,
    columns: 1st) while every other level keeps one random draw for the whole grid.
    Wider level (Figures 6, 7): `steps` rows x `steps` columns; each row holds the other levels at
    one random draw and each column draws level `layer` afresh from the prior.
    Markov HVAE (Figure 3): the same rows and columns over the reparameterization noise eps (see noise.py).
    """
    L = model.cfg.layers
    if not 1 <= layer <= L:
        raise ConfigError(f"--layer must be between 1 and {L} for this {L}-level model; got {layer}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1; got {steps}")
    if model.cfg.model == "hvae":
        return noise_traverse(model, layer, steps, seed)
    model.eval()
    g = _generator(model, seed)
    k = layer - 1
    n = steps * steps
    if model.cfg.latent_dims[k] == 2:
        z = [zl[:1].expand(n, -1).clone() for zl in model.prior_sample(1, g)]  # one draw, shared by the grid
        t = torch.linspace(-span, span, steps, device=z[0].device)
        rows, cols = torch.meshgrid(t.flip(0), t, indexing="ij")  # top row = +span, as in a plot
        z[k] = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)
    else:
        fixed = model.prior_sample(steps, g)  # one draw per row
        z = [zl.repeat_interleave(steps, dim=0) for zl in fixed]
        z[k] = model.prior_sample(n, g)[k]  # level k drawn afresh in every cell
    x = model.generate(z)
    return x.view(steps, steps, *x.shape[1:])


@torch.no_grad()
def reconstruct(model: nn.Module, data: ImageSet, n: int = 16) -> Tensor:
    """The first n images of `data` over their reconstructions from the posterior means: [2, n, C, H, W]."""
    if not 1 <= n <= len(data):
        raise ConfigError(f"--n must be between 1 and {len(data)}; got {n}")
    model.eval()
    dev = next(model.parameters()).device
    x = data.batch(torch.arange(n, device=data.x.device)).to(dev)
    mus, _ = model.encode(x)
    return torch.stack([x, model.generate(mus)])


@torch.no_grad()
def encode(model: nn.Module, data: ImageSet, batch_size: int = 500) -> dict[str, Tensor]:
    """Posterior means per level for every image of `data`, in data-set order: {'z1': [N, d_1], ...}."""
    model.eval()
    dev = next(model.parameters()).device
    parts: list[list[Tensor]] = [[] for _ in range(model.cfg.layers)]
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)), device=data.x.device)
        mus, _ = model.encode(data.batch(idx).to(dev))
        for l, mu in enumerate(mus):
            parts[l].append(mu.cpu())
    codes = {f"z{l}": torch.cat(p) for l, p in enumerate(parts, 1)}
    if data.labels is not None:
        codes["labels"] = data.labels.cpu()
    return codes

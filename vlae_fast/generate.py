"""What a trained model shows: prior samples, level traversals (Figures 5-7), reconstructions, codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .data import ImageSet
from .errors import ConfigError
from .images import check_writable
from .models.base import LatentModel


def _generator(model: nn.Module, seed: int) -> torch.Generator:
    return torch.Generator(device=next(model.parameters()).device).manual_seed(seed)


def redraw_controls(model: LatentModel, layer: int, steps: int, g: torch.Generator) -> list[Tensor]:
    """Controls for a steps x steps grid, bottom first, each [steps * steps, d_l] in row-major order:
    every level but `layer` (1-based) repeats one prior draw per row; level `layer` is fresh in every cell."""
    k = layer - 1
    c = [cl.repeat_interleave(steps, dim=0) for cl in model.prior_controls(steps, g)]  # one draw per row
    c[k] = model.prior_controls(steps * steps, g)[k]  # level K redrawn across the row
    return c


def sweep_controls(model: LatentModel, layer: int, steps: int, g: torch.Generator, span: float = 2.0) -> list[Tensor]:
    """Controls for a steps x steps sweep of a 2-d level over [-span, span]^2 (rows: 2nd coordinate, top row
    +span; columns: 1st), every other level at one prior draw shared by the whole grid."""
    k, n = layer - 1, steps * steps
    c = [cl[:1].expand(n, -1).clone() for cl in model.prior_controls(1, g)]
    t = torch.linspace(-span, span, steps, device=c[0].device)
    rows, cols = torch.meshgrid(t.flip(0), t, indexing="ij")  # top row = +span, as in a plot
    c[k] = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)
    return c


CHUNK = 1000  # images decoded at once: the decoder's activations stay small however many are asked for


def decode_in_chunks(model: LatentModel, c: list[Tensor], chunk: int = CHUNK) -> Tensor:
    """model.decode_controls over slices of `chunk` rows (the images land on the CPU): [n, C, H, W]."""
    n = c[0].shape[0]
    return torch.cat([model.decode_controls([cl[i : i + chunk] for cl in c]).cpu() for i in range(0, n, chunk)])


@torch.no_grad()
def sample(model: nn.Module, n: int, seed: int = 0) -> Tensor:
    """n images from the prior z ~ N(0, I): [n, C, H, W] in [0, 1]."""
    if n < 1:
        raise ConfigError(f"--n must be at least 1; got {n}")
    model.eval()
    return decode_in_chunks(model, model.prior_controls(n, _generator(model, seed)))


@torch.no_grad()
def traverse(model: LatentModel, layer: int, steps: int = 10, seed: int = 0, span: float = 2.0) -> Tensor:
    """Vary level `layer` (1-based, 1 = bottom) with the others fixed: [rows, cols, C, H, W].

    A 2-d level of a model whose TRAVERSAL is "sweep" (the VLAE, Figure 5): sweep_controls' grid.
    Otherwise (wider levels, Figures 6-7; the Markov HVAE's noise eps_l, Figure 3): redraw_controls' rows.
    """
    L = len(model.latent_dims)
    if not 1 <= layer <= L:
        raise ConfigError(f"--layer must be between 1 and {L} for this {L}-level model; got {layer}")
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1; got {steps}")
    model.eval()
    g = _generator(model, seed)
    if model.TRAVERSAL == "sweep" and model.latent_dims[layer - 1] == 2:
        c = sweep_controls(model, layer, steps, g, span)
    else:
        c = redraw_controls(model, layer, steps, g)
    x = decode_in_chunks(model, c)
    return x.view(steps, steps, *x.shape[1:])


def traverse_caption(model: LatentModel, layer: int, steps: int, span: float = 2.0) -> str:
    """What runs along the rows and columns of traverse()'s grid (steps x steps), for the picture's title."""
    name, d = f"{model.CONTROL}_{layer}", model.latent_dims[layer - 1]
    if model.TRAVERSAL == "sweep" and d == 2:
        return (f"level {layer}; other levels: one prior draw\n"
                f"columns: {name}[1] from {-span:g} to {span:g}\n"
                f"rows: {name}[2] from {span:g} (top) to {-span:g}")
    return (f"level {layer}: {name} ({d}-d) drawn afresh\n"
            f"in each of the {steps} x {steps} cells;\n"
            f"rows: one draw of the other levels each")


@torch.no_grad()
def variance_shares(model: LatentModel, steps: int = 32, seed: int = 0) -> list[float]:
    """Share of the generated-pixel variance that each level's control produces, bottom first.

    For level K: the variance across each row of redraw_controls' grid (level K redrawn, the others
    fixed; the default 32 x 32 keeps the estimate within about a percentage point), summed over pixels
    and averaged over rows; then each level's figure over the sum of all levels'.
    """
    model.eval()
    v = []
    for layer in range(1, len(model.latent_dims) + 1):
        x = model.decode_controls(redraw_controls(model, layer, steps, _generator(model, seed)))
        v.append(x.view(steps, steps, -1).var(dim=1, unbiased=False).sum(dim=1).mean().item())
    total = sum(v)
    return [vk / total if total > 0 else 0.0 for vk in v]


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


RECONSTRUCT_ROWS = ["original", "reconstruction"]  # the labels of reconstruct()'s two rows


@torch.no_grad()
def encode(model: nn.Module, data: ImageSet, batch_size: int = 500) -> dict[str, Tensor]:
    """Posterior means per level for every image of `data`, in data-set order: {'z1': [N, d_1], ...}."""
    model.eval()
    dev = next(model.parameters()).device
    parts: list[list[Tensor]] = [[] for _ in model.latent_dims]
    for start in range(0, len(data), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(data)), device=data.x.device)
        mus, _ = model.encode(data.batch(idx).to(dev))
        for l, mu in enumerate(mus):
            parts[l].append(mu.cpu())
    codes = {f"z{l}": torch.cat(p) for l, p in enumerate(parts, 1)}
    if data.labels is not None:
        codes["labels"] = data.labels.cpu()
    return codes


def save_codes(codes: dict[str, Tensor], path: str | Path) -> Path:
    """Write encode()'s codes as a compressed .npz (keys z1 .. zL [N, d_l], labels [N])."""
    path = check_writable(path, (".npz",))
    try:
        np.savez_compressed(path, **{k: v.numpy() for k, v in codes.items()})
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot write ({e.strerror or e})") from None
    return path

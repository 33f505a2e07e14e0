"""How good a model is as a density: the ELBO per level (eq. 14 / eq. 5), the importance-weighted bound,
and the bound on the likelihood of the discrete (8-bit or binary) images, in nats/image and bits/dim.

Constants (docs/eval.md has the full table):
  elbo        log r(x | z) - sum_l KL_l on the pixels as stored, x = k / 255 in [0, 1]. r's constants are all
              in: gaussian -0.5 log(2 pi sigma^2) per pixel, laplace -log(2 b) per pixel; bernoulli on grey
              levels is the cross-entropy, not a normalised density. A density on pixels that were never
              dequantized can be positive: it is not a likelihood of the images.
  discrete    a lower bound on log P(image) of the discrete image:
              gaussian / laplace: uniform dequantization. The 8-bit level k owns the bin k/255 +- 1/510
                (width 1/255), so log P(k) >= E_u[log p(k/255 + (u - 1/2)/255)] - D log 255, u ~ U[0, 1)^D;
                the ELBO (or IW bound) of the dequantized image then stands in for log p(.). DEQUANT_CONST.
              bernoulli: log P(b) of binary pixels b, no constant: the data itself if it is binary, else the
                images binarised once by b ~ Bernoulli(grey level) with the evaluation's seed.
  bits/dim    -(discrete bound) / (D log 2), D = C * H * W.
The importance weights are model.log_weight(x): one sample of log p(x, z) - log q(z | x) per call, with
every constant of p(x | z) in and the -0.5 log(2 pi) per latent unit left out (it cancels in log p(z) - log q(z | x)).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data import ImageSet
from ..errors import ConfigError
from ..models.base import LatentModel
from ..progress import progress_bar

LEVELS_8BIT = 255  # pixel k of an 8-bit image is stored as k / 255
DEQUANT_CONST = -math.log(LEVELS_8BIT)  # log of the bin width 1/255, per dimension
DENSITY_OUTPUTS = ("gaussian", "laplace")  # r(x | z) is a density on the real line: dequantize
IW_ROWS = 1000  # images x samples per log_weight call: bounds the memory of the IW bound


def _generator(seed: int) -> torch.Generator:
    """A generator of our own on the CPU: evaluation never touches the caller's random stream (defect 5)."""
    return torch.Generator().manual_seed(seed)


def is_binary(data: ImageSet) -> bool:
    """True when every pixel of `data` is exactly 0 or 1."""
    one = 255 if data.x.dtype == torch.uint8 else 1
    for start in range(0, len(data), 1000):  # chunks: a large uint8 set is never copied whole; grey data stops early
        x = data.x[start : start + 1000]
        if not bool(((x == 0) | (x == one)).all()):
            return False
    return True


def discrete_input(output: str, binary_data: bool) -> str | None:
    """What the discrete bound is of, for an output distribution r and the data:
    'dequantize' (8-bit pixels, density r), 'binary' (binary pixels, bernoulli r), 'binarize' (grey pixels,
    bernoulli r: sample them once), None (no discrete likelihood known for this r)."""
    if output in DENSITY_OUTPUTS:
        return "dequantize"
    if output == "bernoulli":
        return "binary" if binary_data else "binarize"
    return None


DESCRIBE = {
    "dequantize": "8-bit pixels, uniform dequantization: x + (u - 1/2) / 255, u ~ U[0, 1), minus D log 255",
    "binary": "binary pixels as stored (no constant)",
    "binarize": "pixels binarised once, b ~ Bernoulli(grey level) (seeded), then log P(b) (no constant)",
}


def to_discrete(x: Tensor, how: str, g: torch.Generator) -> Tensor:
    """The input whose bound stands in for the discrete likelihood (see the module docstring)."""
    if how == "dequantize":
        u = torch.rand(x.shape, generator=g).to(x.device)
        return x + (u - 0.5) / LEVELS_8BIT
    if how == "binarize":
        return torch.bernoulli(x.cpu(), generator=g).to(x.device)
    return x


def discrete_constant(how: str | None, dims: int) -> float:
    """What to add to the bound on the discrete input to bound log P(image): -D log 255 after dequantization."""
    return dims * DEQUANT_CONST if how == "dequantize" else 0.0


def bits_per_dim(nats_per_image: float | None, dims: int) -> float | None:
    """-(log-likelihood bound in nats per image) / (D log 2); None stays None."""
    return None if nats_per_image is None else -nats_per_image / (dims * math.log(2))


def _batches(data: ImageSet, batch_size: int, device: torch.device):
    n = len(data)
    for start in range(0, n, batch_size):
        yield data.batch(torch.arange(start, min(start + batch_size, n), device=data.x.device)).to(device)


@torch.no_grad()
def evaluate(model: LatentModel, data: ImageSet, batch_size: int = 500, seed: int = 0, discrete: bool = False,
             show_progress: bool = False) -> dict:
    """Figures of a data split with KL weight 1, one z sample per image drawn from a generator of its own
    (the caller's random stream is left as it was):

    elbo: mean over images of log r(x | z) - sum_l KL_l, nats per image (eq. 14 / eq. 5), on x as stored;
    recon_nll: mean -log r(x | z); kl: mean KL per level, bottom first; mse: squared error per pixel of
    the mean image; images: how many. With `discrete`, one more pass gives discrete_elbo, the bound on
    log P of the discrete image (None where r has none), and `discrete`, its input (module docstring).
    """
    was_training = model.training
    model.eval()
    dev = model.device
    g = _generator(seed)
    how = discrete_input(model.cfg.output, is_binary(data)) if discrete else None
    dims = data.x[0].numel()
    recon_sum, sse, kl_sum, disc_sum = 0.0, 0.0, None, 0.0
    with progress_bar(show_progress) as bar:
        task = bar.add_task("ELBO" + (" + discrete-image bound" if how else ""), total=len(data), stats="")
        for x in _batches(data, batch_size, dev):
            eps = [torch.randn(len(x), d, generator=g).to(dev) for d in model.latent_dims]  # z = mu + sigma * eps
            out = model(x, eps)
            recon_sum += out.recon.sum().item()
            sse += (out.logits.sigmoid() - x).square().sum().item()
            kl = out.kl.sum(0)
            kl_sum = kl if kl_sum is None else kl_sum + kl
            if how is not None:
                eps = [torch.randn(len(x), d, generator=g).to(dev) for d in model.latent_dims]
                out = model(to_discrete(x, how, g), eps)
                disc_sum += -(out.recon + out.kl.sum(1)).sum().item()
            bar.update(task, advance=len(x))
    model.train(was_training)
    n = len(data)
    kl = (kl_sum / n).tolist()
    recon = recon_sum / n
    disc = disc_sum / n + discrete_constant(how, dims) if how is not None else None
    return {"elbo": -(recon + sum(kl)), "recon_nll": recon, "kl": kl, "mse": sse / (n * dims), "images": n,
            "discrete_elbo": disc, "discrete": how}


def log_weights(log_weight, x: Tensor, k: int, rows: int = IW_ROWS) -> Tensor:
    """K importance weights per row of x: [B, K] float64 from log_weight (one sample per row it is given, e.g.
    model.log_weight), called on x repeated, at most max(B, rows) rows x samples per call."""
    chunk = max(1, min(k, rows // len(x)))  # samples per call
    w = [log_weight(x.repeat_interleave(m, dim=0)).view(len(x), m).double()
         for m in (min(chunk, k - start) for start in range(0, k, chunk))]
    return torch.cat(w, dim=1)


@torch.no_grad()
def iw_bound(model: LatentModel, data: ImageSet, k: int, seed: int = 0, rows: int = IW_ROWS,
             discrete: bool = True, show_progress: bool = True) -> dict:
    """The importance-weighted bound log (1/K) sum_k p(x, z_k) / q(z_k | x), z_k ~ q(z | x), averaged over
    the images (Burda et al. 2016): >= the ELBO, and tighter as K grows.

    Each call of model.log_weight sees at most `rows` images x samples, so memory stays bounded for any K.
    discrete: bound the discrete image's log P (the input of `discrete_input`, plus its constant), as
    bits/dim needs; else x as stored. Returns {'k', 'bound', 'elbo' (the mean log weight of the same
    samples, <= bound), 'images', 'discrete' (what the input was, or None)}. The global random stream is
    forked: the caller's draws are the same as without this call.
    """
    if k < 1:
        raise ConfigError(f"--iw must be at least 1 (the number of importance samples per image); got {k}")
    was_training = model.training
    model.eval()
    dev = model.device
    how = discrete_input(model.cfg.output, is_binary(data)) if discrete else None
    g = _generator(seed)
    per = max(1, rows // k)  # images per chunk
    n, bound_sum, mean_sum = len(data), 0.0, 0.0
    devices = [dev] if dev.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), progress_bar(show_progress) as bar:
        torch.manual_seed(seed)  # log_weight draws z from the global stream: seed it inside the fork only
        task = bar.add_task(f"IW bound, K={k}", total=n * k, stats="")
        for x in _batches(data, per, dev):
            x = to_discrete(x, how, g) if how else x
            w = log_weights(model.log_weight, x, k, rows)  # [B, K] log p(x, z_k) - log q(z_k | x)
            bar.update(task, advance=len(x) * k)
            bound_sum += (torch.logsumexp(w, dim=1) - math.log(k)).sum().item()
            mean_sum += w.mean(dim=1).sum().item()
    model.train(was_training)
    const = discrete_constant(how, data.x[0].numel())
    return {"k": k, "bound": bound_sum / n + const, "elbo": mean_sum / n + const, "images": n, "discrete": how}

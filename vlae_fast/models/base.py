"""The one interface every model answers; every command (sample, traverse, encode, gibbs, eval, explore)
goes through these methods alone, so adding a model is one file under models/ and its tests.

A model has L levels, bottom first (l = 1 is closest to x), level l with a d_l-wide code z_l.

    forward(x, eps=None) -> Output      one pass of the model's ELBO: logits, -log p(x | z), KL per level
    encode(x) -> (mus, logvars)         the per-level posterior means (and log-variances) of q(z | x)
    decode(z) -> logits                 f_0 of the codes z_1 .. z_L: [B, C, H, W] pre-sigmoid
    posterior_sample(x, eps) -> z       z ~ q(z | x) with the given reparameterization noise (default: forward's z)
    recon_nll(x, logits) -> [B]         -log p(x | z) of images x under decode's logits
    log_weight(x, z=None) -> [B]        log p(x, z) - log q(z | x) at one fresh z ~ q(z | x) (the importance
                                        weight of the IW bound; its mean over z is the ELBO), or at given codes z
                                        (the Gibbs chain's importance resampling)

A level's *control* is what a traversal moves and a prior draw fills: for models with a flat prior
(VLAE) it is the code z_l itself; for a hierarchical prior (Markov HVAE, Figure 3) it is the noise eps_l
of ancestral sampling, z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) * eps_l. Either way the controls are
N(0, I) a priori, one [n, d_l] tensor per level.

    codes_from_controls(c) -> z         (VLAE: z = c; HVAE: ancestral sampling with the given noise)
    controls_from_codes(z) -> c         its inverse (HVAE: eps_l = (z_l - mu_l(z_{l+1})) / sigma_l(z_{l+1}))
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .likelihood import neg_log_likelihood


@dataclass
class Output:
    logits: Tensor  # [B, C, H, W] pre-sigmoid output of f_0; the image mean is logits.sigmoid()
    recon: Tensor  # [B] -log p(x | z)
    kl: Tensor  # [B, L] the KL term of each level in the ELBO (closed form or one-sample, per model)
    z: list[Tensor]  # z_l samples, bottom first, each [B, d_l]


def gaussian_log_density(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; mu, exp(logvar)) summed over the last dimension, without the -0.5 log(2 pi) per unit
    (it cancels in every log q - log p over the same units): [B]."""
    return -0.5 * ((z - mu).square() * torch.exp(-logvar) + logvar).sum(dim=1)


class LatentModel(nn.Module):
    """Base of every model. Subclasses set self.cfg (with .latent_dims) and implement forward, encode,
    decode, log_weight, codes_from_controls and controls_from_codes."""

    CONTROL = "z"  # what a level's control is: "z" (the code) or "eps" (the noise of ancestral sampling)
    DEFAULT_LR: float | None = None  # the model's own Adam learning rate; None = the trainer's default
    GIBBS_ON_Z1 = False  # eq. 6's chain needs q(z_1 | x) and p(x | z_1) alone (a Markov bottom level)
    MARKOV_BOTH_WAYS = False  # q(z_{l+1} | z_l) and p(z_l | z_{l+1}): the posterior gap splits by level
    TRAVERSAL = "sweep"  # a 2-d level's traversal: "sweep" its control over a grid, or "redraw" it per cell

    @property
    def latent_dims(self) -> tuple[int, ...]:
        return tuple(self.cfg.latent_dims)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # --- what each model implements ---------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        raise NotImplementedError

    def decode(self, z: list[Tensor]) -> Tensor:
        raise NotImplementedError

    def log_weight(self, x: Tensor, z: list[Tensor] | None = None) -> Tensor:
        raise NotImplementedError

    def recon_nll(self, x: Tensor, logits: Tensor) -> Tensor:
        """-log p(x | z) per image, [B], from decode's logits (the training step scores a clean x with it when
        the encoder saw a noisy one: --input-noise)."""
        return neg_log_likelihood(x, logits, self.cfg.output, self.cfg.output_scale)

    def posterior_sample(self, x: Tensor, eps: list[Tensor] | None = None) -> list[Tensor]:
        """z ~ q(z | x), list of [B, d_l] bottom first, from the noise eps_l of forward's reparameterization
        (drawn when None). This default runs the whole forward pass; models override it to skip the loss."""
        return self(x, eps).z

    def codes_from_controls(self, c: list[Tensor]) -> list[Tensor]:
        return c

    def controls_from_codes(self, z: list[Tensor]) -> list[Tensor]:
        return z

    # --- shared ------------------------------------------------------------------------------
    @property
    def sigma(self) -> float | None:
        """The scale of p(x | z): sigma (gaussian) or b (laplace); None for bernoulli. HVAE may train it."""
        return self.cfg.output_scale

    def prior_controls(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Every level's control drawn from N(0, I): list of [n, d_l], bottom first."""
        return [torch.randn(n, d, generator=generator, device=self.device) for d in self.latent_dims]

    @torch.no_grad()
    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """Codes z ~ p(z): list of [n, d_l], bottom first."""
        return self.codes_from_controls(self.prior_controls(n, generator))

    @torch.no_grad()
    def generate(self, z: list[Tensor]) -> Tensor:
        """Image means sigmoid(f_0(.)) in [0, 1] for the given codes: [B, C, H, W]."""
        return self.decode(z).sigmoid()

    @torch.no_grad()
    def decode_controls(self, c: list[Tensor]) -> Tensor:
        """Image means for the given controls: [B, C, H, W] in [0, 1]."""
        return self.generate(self.codes_from_controls(c))

    @torch.no_grad()
    def encode_controls(self, x: Tensor) -> list[Tensor]:
        """The controls of x's posterior means (what reconstructs x when decoded): list of [B, d_l]."""
        return self.controls_from_codes(self.encode(x)[0])

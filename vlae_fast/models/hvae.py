"""Markov hierarchical VAE: the paper's baseline (section 2.2, eq. 4-5; appendix B.1).

Levels are numbered as in the paper: l = 1 is the bottom (closest to x), l = L the top.

Generation (eq. 4):  z_L ~ N(0, I),  z_l ~ N(W1 f_l(z_{l+1}), sigm(W2 f_l(z_{l+1}))^2)  for l < L,
                     x ~ N(f_0(z_1), sigma^2 I)
Inference (Markov):  q(z_1 | x), q(z_{l+1} | z_l): the generator's architecture in reverse.
Learning (eq. 5):    ELBO = E_q[log p(x | z_1) + sum_{l<L} (log p(z_l | z_{l+1}) - log q(z_l | .))] - KL_L
                     Monte-Carlo over the one sampled path z_1 -> ... -> z_L; the top level's term is the
                     closed-form KL(q(z_L | z_{L-1}) || N(0, I)).

x depends on z_1 alone, so `decode` and `generate` read only z[0]; the noise eps_l of the
reparameterization z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) * eps_l drives the traversal of Figure 3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlae_fast.kernels import reparam_kl

from .base import LatentModel, Output, gaussian_log_density
from .blocks import GaussianHead, ToImage, conv_bn, deconv_bn, fc_bn
from .config import ModelConfig


@dataclass
class HVAEConfig(ModelConfig):
    model: str = "hvae"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W; H and W divisible by 4
    latent_dims: tuple[int, ...] = (2, 2, 2)  # d_l bottom first; the paper's Figure 2-3 model has 3 levels
    channels: tuple[int, int] = (64, 128)  # widths of f_0's transposed convolutions (and of q(z_1|x)'s convs)
    hidden: int = 1024  # width of the two dense layers of every f_l and of their inference mirrors
    output: str = "gaussian"  # p(x | z_1): appendix B.1's Gaussian; or laplace / bernoulli
    learn_scale: bool = False  # B.1: sigma is "specified a priori or trained"; True trains log sigma

    DIVISIBLE_BY = 4  # q(z_1 | x)'s two stride-2 convolutions

    def __post_init__(self):
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if self.learn_scale and self.output != "gaussian":
            raise ValueError(f"learn_scale trains the Gaussian's sigma; output {self.output!r} has none to train")


class HVAE(LatentModel):
    DEFAULT_LR = 1e-4  # Adam, appendix B.1
    CONTROL = "eps"  # a level's control is the noise eps_l of ancestral sampling (Figure 3)
    GIBBS_ON_Z1 = True  # q(z_1 | x) and p(x | z_1) alone make eq. 6's chain
    MARKOV_BOTH_WAYS = True  # q(z_{l+1} | z_l) and p(z_l | z_{l+1}): the posterior gap splits by level
    TRAVERSAL = "redraw"  # Figure 3: a level's noise redrawn across each row, every level

    def __init__(self, cfg: HVAEConfig):
        super().__init__()
        self.cfg = cfg
        C, H, W = cfg.image_shape
        c1, c2 = cfg.channels
        Hd, dims = cfg.hidden, cfg.latent_dims
        self.feat_shape = (c2, H // 4, W // 4)
        self.d_feat = d_feat = c2 * (H // 4) * (W // 4)

        # inference, the generator in reverse: q(z_1 | x) two stride-2 convs; q(z_{l+1} | z_l) two dense layers
        enc = [nn.Sequential(conv_bn(C, c1), conv_bn(c1, c2), nn.Flatten())]
        enc += [nn.Sequential(fc_bn(self.up_width(l), Hd), fc_bn(Hd, Hd)) for l in range(1, len(dims))]
        self.enc = nn.ModuleList(enc)
        self.q = nn.ModuleList(GaussianHead(d_feat if l == 0 else Hd, d) for l, d in enumerate(dims))

        # generation: f_l (two dense layers on z_{l+1}) and the heads W1, sigm(W2 .) of p(z_l | z_{l+1}), l < L
        self.f = nn.ModuleList(nn.Sequential(fc_bn(self.prior_width(l), Hd, "relu"), fc_bn(Hd, Hd, "relu"))
                               for l in range(len(dims) - 1))
        self.p = nn.ModuleList(GaussianHead(Hd, d) for d in dims[:-1])
        # f_0: z_1 -> a c2 x H/4 x W/4 map -> two stride-1/2 transposed convolutions -> image logits
        self.f0 = nn.Sequential(fc_bn(self.decoder_width(), d_feat, "relu"), nn.Unflatten(1, self.feat_shape),
                                deconv_bn(c2, c1), ToImage(c1, C))
        self.log_sigma = nn.Parameter(torch.tensor(math.log(cfg.output_scale))) if cfg.learn_scale else None

    # --- what each network reads: the Markov HVAE's choices (the LVAE and the autoregressive HVAE change them) ---
    def up_width(self, l: int) -> int:
        """Width of what level l+1's inference layers enc[l] read, 0-based l >= 1: the code z_l below."""
        return self.cfg.latent_dims[l - 1]

    def prior_width(self, l: int) -> int:
        """Width of what f_l of p(z_{l+1} | .) reads, 0-based l < L - 1: the code z_{l+2} above."""
        return self.cfg.latent_dims[l + 1]

    def decoder_width(self) -> int:
        """Width of what f_0 reads: z_1."""
        return self.cfg.latent_dims[0]

    def prior_input(self, z: list[Tensor], l: int) -> Tensor:
        """What p(z_{l+1} | .) is conditioned on, 0-based l < L - 1: z_{l+2} (Markov); z[l + 1:] must be filled."""
        return z[l + 1]

    @property
    def sigma(self) -> float | None:
        """The scale of p(x | z_1) (sigma for gaussian, b for laplace; None for bernoulli)."""
        return self.log_sigma.exp().item() if self.log_sigma is not None else self.cfg.output_scale

    # --- the conditionals -----------------------------------------------------------------
    def q_params(self, l: int, h: Tensor) -> tuple[Tensor, Tensor]:
        """q(z_{l+1} | h) as (mu, logvar) for 0-based level index l; h is x for l = 0, else z_l."""
        return self.q[l](self.enc[l](h))

    def p_params(self, l: int, z_above: Tensor) -> tuple[Tensor, Tensor]:
        """p(z_{l+1} | z_{l+2}) as (mu, logvar) for 0-based l < L - 1: W1 f(z), 2 log sigm(W2 f(z)).
        z_above is prior_input(z, l)."""
        return self.p[l](self.f[l](z_above))

    def decode(self, z: list[Tensor]) -> Tensor:
        """f_0(z_1) as logits [B, C, H, W]; the mean of p(x | z_1) is logits.sigmoid()."""
        return self.f0(z[0])

    def recon_nll(self, x: Tensor, logits: Tensor) -> Tensor:
        """-log p(x | z_1) per image: [B]."""
        if self.log_sigma is None:
            return super().recon_nll(x, logits)
        nll = 0.5 * ((x - logits.sigmoid()) * torch.exp(-self.log_sigma)).square() + self.log_sigma
        return (nll + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)

    # --- training -------------------------------------------------------------------------
    def _path(self, x: Tensor, eps: list[Tensor] | None) -> tuple[list[Tensor], list[tuple[Tensor, Tensor]], Tensor]:
        """The inference path z_1 ~ q(z_1|x), z_{l+1} ~ q(z_{l+1}|z_l) (or with the given noise): the codes,
        each level's (mu, logvar) of q, and the top level's closed-form KL(q(z_L | z_{L-1}) || N(0, I))."""
        z, q_terms, h = [], [], x
        for l in range(self.cfg.layers):
            mu, logvar = self.q_params(l, h)
            z_l, kl_top = reparam_kl(mu, logvar, None if eps is None else eps[l])  # z_l = mu + sigma * eps
            q_terms.append((mu, logvar))
            z.append(z_l)
            h = z_l
        return z, q_terms, kl_top

    def _lower_terms(self, z: list[Tensor], q_terms: list[tuple[Tensor, Tensor]]) -> list[Tensor]:
        """log q(z_l | .) - log p(z_l | z_{l+1}) for every level below the top, one sample each (eq. 5)."""
        return [gaussian_log_density(z[l], *q_terms[l])
                - gaussian_log_density(z[l], *self.p_params(l, self.prior_input(z, l)))
                for l in range(self.cfg.layers - 1)]

    def forward(self, x: Tensor, eps: list[Tensor] | None = None) -> Output:
        """One pass of eq. 5: sample z_1 ~ q(z_1|x), z_{l+1} ~ q(z_{l+1}|z_l) (or use the given noise),
        reconstruct x from z_1. kl[:, l] = log q(z_l|.) - log p(z_l|z_{l+1}) (one sample), top: KL to N(0, I)."""
        z, q_terms, kl_top = self._path(x, eps)
        logits = self.decode(z)
        kl = torch.stack(self._lower_terms(z, q_terms) + [kl_top], dim=1)
        return Output(logits, self.recon_nll(x, logits), kl, z)

    def log_weight(self, x: Tensor, z: list[Tensor] | None = None) -> Tensor:
        """log p(x, z) - log q(z | x) at one z drawn along the inference path (the top level's term sampled too),
        or at the given codes: [B]."""
        return self._log_weight_from(x, 0, z)

    def log_weight_above(self, h: Tensor, s: int) -> Tensor:
        """One sample of log p(h, z_{>s}) - log q(z_{>s} | h), z_{>s} ~ q along the inference path from h: [B].

        h is x for s = 0 (then this is log_weight(x)), else a code z_s (1-based level s), which the levels
        above model as their data: p(z_s) = integral of p(z_s | z_{s+1}) ... p(z_L). Its average is the
        ELBO of that marginal and its IW average the bound on log p(z_s): the posterior gap of each level
        (eval/posterior.py). Needs the Markov chain both ways, so LVAE and AR-HVAE refuse it."""
        if not self.MARKOV_BOTH_WAYS:
            raise NotImplementedError(f"{self.cfg.model}: the per-level split needs Markov inference and prior")
        return self._log_weight_from(h, s)

    def _log_weight_from(self, h: Tensor, s: int, given: list[Tensor] | None = None) -> Tensor:
        """log_weight_above without its check: for s = 0 it is log_weight(x) of the HVAE and the AR-HVAE (their
        bottom-up inference path; the priors and x read what prior_input and decode choose). `given` (s = 0):
        the codes at which to evaluate it instead of drawing them."""
        L = self.cfg.layers
        z: list[Tensor | None] = [None] * L
        if s:
            z[s - 1] = h
        log_w, cur = 0.0, h
        for l in range(s, L):  # z_{l+1} ~ q(z_{l+1} | z_l), 0-based l
            mu, logvar = self.q_params(l, cur)
            cur = z[l] = given[l] if given is not None else mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            log_w = log_w - gaussian_log_density(cur, mu, logvar)
        log_w = log_w + gaussian_log_density(z[-1], torch.zeros_like(z[-1]), torch.zeros_like(z[-1]))  # p(z_L)
        for l in range(max(s - 1, 0), L - 1):  # log p(z_{l+1} | z_{l+2}), from the data level z_s up
            log_w = log_w + gaussian_log_density(z[l], *self.p_params(l, self.prior_input(z, l)))
        if s == 0:
            log_w = log_w - self.recon_nll(h, self.decode(z))
        return log_w

    def posterior_sample(self, x: Tensor, eps: list[Tensor] | None = None) -> list[Tensor]:
        """z ~ q(z | x) along the inference path, with the given noise: list of [B, d_l], bottom first."""
        return self._path(x, eps)[0]

    # --- generation -----------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Posterior means chained up the hierarchy: mu_1 of q(z_1|x), mu_{l+1} of q(z_{l+1}|mu_l); with logvars."""
        mus, logvars, h = [], [], x
        for l in range(self.cfg.layers):
            mu, logvar = self.q_params(l, h)
            mus.append(mu)
            logvars.append(logvar)
            h = mu
        return mus, logvars

    @torch.no_grad()
    def codes_from_controls(self, eps: list[Tensor]) -> list[Tensor]:
        """Ancestral sampling with the given noise: z_L = eps_L, z_l = mu_l(z_{l+1}) + sigma_l(z_{l+1}) * eps_l."""
        z = [None] * self.cfg.layers
        z[-1] = eps[-1]
        for l in reversed(range(self.cfg.layers - 1)):
            mu, logvar = self.p_params(l, self.prior_input(z, l))
            z[l] = reparam_kl(mu, logvar, eps[l])[0]
        return z

    @torch.no_grad()
    def controls_from_codes(self, z: list[Tensor]) -> list[Tensor]:
        """The noise that ancestral sampling turns into z: eps_L = z_L, eps_l = (z_l - mu_l(z_{l+1})) / sigma_l."""
        eps = [None] * self.cfg.layers
        eps[-1] = z[-1]
        for l in range(self.cfg.layers - 1):
            mu, logvar = self.p_params(l, self.prior_input(z, l))
            eps[l] = (z[l] - mu) * torch.exp(-0.5 * logvar)
        return eps

"""Variational Ladder Autoencoder (Zhao, Song & Ermon 2017, section 4.1, eq. 8-14).

Levels are numbered as in the paper: l = 1 is the bottom (closest to x), l = L the top.

Inference (eq. 12-13):   h_0 = x,  h_l = g_l(h_{l-1}),  z_l ~ N(mu_l(h_l), sigma_l(h_l))
Generation (eq. 8-11):   z~_L = f_L(z_L),  z~_l = u_l([z~_{l+1}; v_l(z_l)]),  x ~ r(x; f_0(z~_1))
Learning (eq. 14):       ELBO = E_q[log r(x | z)] - KL(q(z | x) || N(0, I)),  KL summed over levels

MNIST architecture after the authors' code (their vladder_small): g_1 is two 4x4 stride-2
convolutions (64, 128 channels); each higher g_l is two 1024-unit fully-connected blocks, so z_l sits
deeper the higher l is. f_L and u_l are 1024-unit blocks with ReLU; u_1 maps straight to the
128x7x7 feature map that f_0 (two transposed convolutions) turns into the image.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlae_fast.kernels import reparam_kl_multi

from .base import LatentModel, Output, gaussian_log_density
from .blocks import GaussianHead, LadderJoin, ToImage, conv_bn, deconv_bn, fc_bn
from .config import ModelConfig


@dataclass
class VLAEConfig(ModelConfig):
    model: str = "vlae"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W; H and W divisible by 4
    latent_dims: tuple[int, ...] = (2, 2, 2)  # d_l bottom first; authors' MNIST: 3 levels x 2-d
    channels: tuple[int, int] = (64, 128)  # widths of g_1's two convolutions (authors' cs[1:3])
    join: str = "concat"  # eq. 11's concatenation; 'gated_add' = the authors' MNIST code
    top_encoder: str = "shared"  # 'separate': the top level reads x through its own copy of g_1..g_L (not eq. 12)

    DIVISIBLE_BY = 4  # g_1's two stride-2 convolutions

    def to_dict(self) -> dict:
        """As stored in a checkpoint; the default top_encoder is left out, so a shared-trunk model's metadata is what it
        was before the option existed (and older versions of the library still read it)."""
        d = super().to_dict()
        if d["top_encoder"] == "shared":
            del d["top_encoder"]
        return d

    def __post_init__(self):
        super().__post_init__()
        self.channels = tuple(int(c) for c in self.channels)
        if self.join not in ("concat", "gated_add"):
            raise ValueError(f"join must be 'concat' or 'gated_add'; got {self.join!r}")
        if self.top_encoder not in ("shared", "separate"):
            raise ValueError(f"top_encoder must be 'shared' or 'separate'; got {self.top_encoder!r}")
        if self.top_encoder == "separate" and self.layers < 2:
            raise ValueError("top_encoder 'separate' gives the top level its own inference path apart from the levels "
                             "below; a 1-level model has none below, so use 'shared'")


class FlatPriorLadder(LatentModel):
    """What every VLAE shares once it has encode(x) -> (mus, logvars) and decode(z) -> logits:
    the ELBO pass of eq. 14 and its importance weight. The prior is flat, N(0, I) on every level, so a
    level's control is its code z_l (LatentModel's identity maps).

    fade: alpha_l per level (bottom first), multiplying the generator input v_l(z_l) of every level below the
    top; all ones except during progressive training (schedule.py), which sets it each step. Not saved: a
    checkpoint's model is the whole ladder."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.register_buffer("fade", torch.ones(cfg.layers), persistent=False)

    # --- training -------------------------------------------------------------------------
    def forward(self, x: Tensor, eps: list[Tensor] | None = None) -> Output:
        """One pass of eq. 14: sample z ~ q(z | x) (or use the given noise eps), reconstruct x."""
        mus, logvars = self.encode(x)
        z, kl = reparam_kl_multi(mus, logvars, eps)  # z_l = mu_l + sigma_l * eps_l, KL per level
        logits = self.decode(z)
        recon = self.recon_nll(x, logits)
        return Output(logits, recon, kl, z)

    def top_level_parameters(self, inference_only: bool = False) -> list[nn.Parameter]:
        """The parameters that serve the top level alone: its inference block g_L and head q_L, its generator f_L
        (both ladders name them g[-1], q[-1], f_top; with a separate top encoder, its whole path g_top). `--top-lr`
        slows them after the top's stage (schedule.py); inference_only (--top-lr-scope inference) leaves f_L out."""
        g_top = self.g_top if getattr(self, "g_top", None) is not None else self.g[-1]
        modules = (g_top, self.q[-1]) if inference_only else (g_top, self.q[-1], self.f_top)
        return [p for m in modules for p in m.parameters()]

    def log_weight(self, x: Tensor, z: list[Tensor] | None = None) -> Tensor:
        """log r(x | z) + log N(z; 0, I) - log q(z | x) at one z ~ q(z | x), or at the given codes: [B]."""
        mus, logvars = self.encode(x)
        if z is None:
            z = [mu + torch.exp(0.5 * lv) * torch.randn_like(mu) for mu, lv in zip(mus, logvars)]
        log_ratio = sum(gaussian_log_density(z_l, torch.zeros_like(z_l), torch.zeros_like(z_l))
                        - gaussian_log_density(z_l, mu, lv) for z_l, mu, lv in zip(z, mus, logvars))
        return log_ratio - self.recon_nll(x, self.decode(z))


class VLAE(FlatPriorLadder):
    def __init__(self, cfg: VLAEConfig):
        super().__init__(cfg)
        C, H, W = cfg.image_shape
        c1, c2 = cfg.channels
        Hd, L = cfg.hidden, cfg.layers
        self.feat_shape = (c2, H // 4, W // 4)  # g_1's output map, and f_0's input map
        d_feat = c2 * (H // 4) * (W // 4)

        # inference: g_1 convolutional, g_l (l >= 2) two fully-connected blocks each (eq. 12)
        def trunk(levels: int) -> list[nn.Module]:  # g_1 .. g_levels
            g = [nn.Sequential(conv_bn(C, c1), conv_bn(c1, c2), nn.Flatten())]
            return g + [nn.Sequential(fc_bn(d_feat if l == 2 else Hd, Hd), fc_bn(Hd, Hd)) for l in range(2, levels + 1)]

        self.separate_top = cfg.top_encoder == "separate"
        self.g = nn.ModuleList(trunk(L - 1 if self.separate_top else L))
        # top_encoder 'separate': h_L = g'_L(...g'_1(x)), a trunk of its own, so training the lower levels
        # (which share g_1..g_{L-1}) cannot move the path to the top's code (docs/hierarchy.md)
        self.g_top = nn.Sequential(*trunk(L)) if self.separate_top else None
        self.q = nn.ModuleList(GaussianHead(d_feat if l == 1 else Hd, d) for l, d in enumerate(cfg.latent_dims, 1))

        # generation: z~_L = f_L(z_L) (eq. 8); z~_l = u_l([z~_{l+1}; v_l(z_l)]) for l < L (eq. 9, 11)
        top_out = Hd if L > 1 else d_feat
        self.f_top = nn.Sequential(fc_bn(cfg.latent_dims[-1], Hd, "relu"), fc_bn(Hd, Hd, "relu"), nn.Linear(Hd, top_out))
        self.v = nn.ModuleList(fc_bn(d, Hd, "relu") for d in cfg.latent_dims[:-1])
        self.u_join = nn.ModuleList(LadderJoin(Hd, Hd, Hd if l > 1 else d_feat, cfg.join) for l in range(1, L))
        self.u_rest = nn.ModuleList(
            nn.Sequential(fc_bn(Hd, Hd, "relu"), nn.Linear(Hd, Hd)) if l > 1 else nn.Identity() for l in range(1, L)
        )
        # f_0: z~_1 (a c2 x H/4 x W/4 map) -> image logits (eq. 10)
        self.f0 = nn.Sequential(deconv_bn(c2, c1), ToImage(c1, C))

    # --- the two halves -------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """q(z_l | x) for every level: lists of mu_l, logvar_l ([B, d_l]), bottom first."""
        mus, logvars, h = [], [], x
        for g_l, q_l in zip(self.g, self.q):
            h = g_l(h)  # h_l = g_l(h_{l-1})  (eq. 12)
            mu, logvar = q_l(h)  # (eq. 13)
            mus.append(mu)
            logvars.append(logvar)
        if self.separate_top:  # the top level's own path from x
            mu, logvar = self.q[-1](self.g_top(x))
            mus.append(mu)
            logvars.append(logvar)
        return mus, logvars

    def decode(self, z: list[Tensor]) -> Tensor:
        """f_0(z~_1) as logits [B, C, H, W] from codes z_1..z_L (bottom first)."""
        zt = self.f_top(z[-1])  # z~_L = f_L(z_L)  (eq. 8)
        for l in reversed(range(self.cfg.layers - 1)):  # l = L-1 .. 1 (0-based index)
            vl = self.v[l](z[l]) * self.fade[l]  # v_l(z_l), faded in under progressive training
            zt = self.u_rest[l](self.u_join[l](zt, vl))  # z~_l = u_l([z~_{l+1}; v_l(z_l)])  (eq. 11)
        return self.f0(zt.view(-1, *self.feat_shape))  # f_0(z~_1)  (eq. 10)

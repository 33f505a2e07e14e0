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

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from vlae_fast.kernels import reparam_kl_multi

from .blocks import GaussianHead, LadderJoin, conv_bn, deconv_bn, fc_bn
from .likelihood import DEFAULT_SCALE, check_image_model_config, neg_log_likelihood


@dataclass
class VLAEConfig:
    model: str = "vlae"
    dataset: str = "mnist"
    image_shape: tuple[int, int, int] = (1, 28, 28)  # C, H, W; H and W divisible by 4
    latent_dims: tuple[int, ...] = (2, 2, 2)  # d_l bottom first; authors' MNIST: 3 levels x 2-d
    channels: tuple[int, int] = (64, 128)  # widths of g_1's two convolutions (authors' cs[1:3])
    hidden: int = 1024  # width of every fully-connected block (authors' cs[3])
    output: str = "gaussian"  # r(x; .): the paper's fixed-variance Gaussian; or laplace / bernoulli
    output_scale: float | None = None  # sigma (gaussian) or b (laplace); None = DEFAULT_SCALE[output]
    join: str = "concat"  # eq. 11's concatenation; 'gated_add' = the authors' MNIST code
    extra: dict = field(default_factory=dict)  # free-form notes kept in the checkpoint

    def __post_init__(self):
        check_image_model_config(self, divisible_by=4)
        self.channels = tuple(int(c) for c in self.channels)
        if self.join not in ("concat", "gated_add"):
            raise ValueError(f"join must be 'concat' or 'gated_add'; got {self.join!r}")
        if self.output_scale is None:
            self.output_scale = DEFAULT_SCALE[self.output]

    @property
    def layers(self) -> int:
        return len(self.latent_dims)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Output:
    logits: Tensor  # [B, C, H, W] pre-sigmoid output of f_0; the image mean is logits.sigmoid()
    recon: Tensor  # [B] -log r(x | z)
    kl: Tensor  # [B, L] KL(q(z_l | x) || N(0, I)) per level
    z: list[Tensor]  # z_l samples, bottom first, each [B, d_l]


class FlatPriorLadder(nn.Module):
    """What every VLAE shares once it has encode(x) -> (mus, logvars) and decode(z) -> logits:
    the ELBO pass of eq. 14 and generation from the flat prior N(0, I). Subclasses set self.cfg."""

    # --- training -------------------------------------------------------------------------
    def forward(self, x: Tensor, eps: list[Tensor] | None = None) -> Output:
        """One pass of eq. 14: sample z ~ q(z | x) (or use the given noise eps), reconstruct x."""
        mus, logvars = self.encode(x)
        z, kl = reparam_kl_multi(mus, logvars, eps)  # z_l = mu_l + sigma_l * eps_l, KL per level
        logits = self.decode(z)
        recon = neg_log_likelihood(x, logits, self.cfg.output, self.cfg.output_scale)
        return Output(logits, recon, kl, z)

    # --- generation -----------------------------------------------------------------------
    def prior_sample(self, n: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """z_l ~ N(0, I) for every level: list of [n, d_l]."""
        dev = next(self.parameters()).device
        return [torch.randn(n, d, generator=generator, device=dev) for d in self.cfg.latent_dims]

    @torch.no_grad()
    def generate(self, z: list[Tensor]) -> Tensor:
        """Image means sigmoid(f_0(z~_1)) in [0, 1] for the given codes: [B, C, H, W]."""
        return self.decode(z).sigmoid()


class VLAE(FlatPriorLadder):
    def __init__(self, cfg: VLAEConfig):
        super().__init__()
        self.cfg = cfg
        C, H, W = cfg.image_shape
        c1, c2 = cfg.channels
        Hd, L = cfg.hidden, cfg.layers
        self.feat_shape = (c2, H // 4, W // 4)  # g_1's output map, and f_0's input map
        d_feat = c2 * (H // 4) * (W // 4)

        # inference: g_1 convolutional, g_l (l >= 2) two fully-connected blocks each (eq. 12)
        g = [nn.Sequential(conv_bn(C, c1), conv_bn(c1, c2), nn.Flatten())]
        g += [nn.Sequential(fc_bn(d_feat if l == 2 else Hd, Hd), fc_bn(Hd, Hd)) for l in range(2, L + 1)]
        self.g = nn.ModuleList(g)
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
        self.f0 = nn.Sequential(deconv_bn(c2, c1), nn.ConvTranspose2d(c1, C, 4, 2, 1))

    # --- the two halves -------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """q(z_l | x) for every level: lists of mu_l, logvar_l ([B, d_l]), bottom first."""
        mus, logvars, h = [], [], x
        for g_l, q_l in zip(self.g, self.q):
            h = g_l(h)  # h_l = g_l(h_{l-1})  (eq. 12)
            mu, logvar = q_l(h)  # (eq. 13)
            mus.append(mu)
            logvars.append(logvar)
        return mus, logvars

    def decode(self, z: list[Tensor]) -> Tensor:
        """f_0(z~_1) as logits [B, C, H, W] from codes z_1..z_L (bottom first)."""
        zt = self.f_top(z[-1])  # z~_L = f_L(z_L)  (eq. 8)
        for l in reversed(range(self.cfg.layers - 1)):  # l = L-1 .. 1 (0-based index)
            zt = self.u_rest[l](self.u_join[l](zt, self.v[l](z[l])))  # z~_l = u_l([z~_{l+1}; v_l(z_l)])  (eq. 11)
        return self.f0(zt.view(-1, *self.feat_shape))  # f_0(z~_1)  (eq. 10)

"""The paper's convolutional VLAEs for SVHN (Figure 6) and CelebA (Figure 7), after the authors' code.

Same ladder as vlae.py (eq. 8-14); here every level but the top is convolutional:

Inference (eq. 12-13):  h_l = g_l(h_{l-1}) is a stack of 4x4 convolutions (BN, LeakyReLU 0.1) for
    l < L, and two 1024-unit fully-connected blocks for l = L; z_l's head reads the flattened h_l.
Generation (eq. 8-11):  z~_L = f_L(z_L) is three fully-connected blocks reshaped to h_{L-1}'s map;
    for l < L, v_l(z_l) is a fully-connected map of z_l reshaped to h_l's map (c_l x h_l x w_l) and
    z~_l = u_l([z~_{l+1}; v_l(z_l)]) concatenates the two channel-wise (eq. 11) and mirrors g_l with
    transposed convolutions back to h_{l-1}'s map; u_1 ends in the image logits (f_0, eq. 10).

Architectures (authors' MediumLayers for SVHN, LargeLayers for CelebA; channels per conv layer):
    medium  32x32: g_1 64,64 | g_2 128,128 | g_3 256,256 -> 256x4x4   (strides 2,1 per level)
    large   64x64: g_1 64,64 | g_2 128,128,256 | g_3 256,512,512 -> 512x4x4
One departure: the authors' u_l opens with the stride-2 layer; ours is g_l's exact mirror.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .blocks import GaussianHead, act, fc_bn
from .config import ModelConfig
from .vlae import FlatPriorLadder

# Per convolutional level: its layers as (out_channels, stride); every kernel is 4x4.
ARCHS: dict[str, tuple[tuple[tuple[int, int], ...], ...]] = {
    "medium": (((64, 2), (64, 1)), ((128, 2), (128, 1)), ((256, 2), (256, 1))),
    "large": (((64, 2), (64, 1)), ((128, 2), (128, 1), (256, 2)), ((256, 1), (512, 2), (512, 1))),
}
# Authors' loss for SVHN and CelebA: 16 * sum (x - mean)^2 + KL, a Gaussian with 1 / (2 sigma^2) = 16.
CONV_GAUSSIAN_SCALE = 1.0 / math.sqrt(32.0)


def conv4(c_in: int, c_out: int, stride: int, transpose: bool = False) -> nn.Module:
    """A 4x4 (transposed) convolution that halves (doubles) H, W at stride 2 and keeps them at stride 1.

    Stride 1 pads as TensorFlow's 'same' (1 before, 2 after); a stride-1 transposed convolution is a
    convolution, so both directions use the same layer there.
    """
    if stride == 2:
        return (nn.ConvTranspose2d if transpose else nn.Conv2d)(c_in, c_out, 4, 2, 1)
    if stride == 1:
        return nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(c_in, c_out, 4, 1, 0))
    raise ValueError(f"stride must be 1 or 2; got {stride}")


def conv4_bn(c_in: int, c_out: int, stride: int, transpose: bool = False) -> nn.Sequential:
    """conv4 -> BatchNorm2d -> LeakyReLU(0.1) (inference) or ReLU (generation), as the authors."""
    return nn.Sequential(conv4(c_in, c_out, stride, transpose), nn.BatchNorm2d(c_out),
                         act("relu" if transpose else "leaky_relu"))


@dataclass
class ConvVLAEConfig(ModelConfig):
    model: str = "conv_vlae"
    dataset: str = "svhn"
    image_shape: tuple[int, int, int] = (3, 32, 32)  # C, H, W
    latent_dims: tuple[int, ...] = (5, 5, 5, 10)  # d_l bottom first; authors' SVHN (CelebA: 4 x 10)
    arch: str = "auto"  # medium (SVHN) or large (CelebA); auto = medium up to 32 pixels, else large
    hidden: int = 1024  # width of the fully-connected blocks of the top level (authors' cs[-1])
    output_scale: float | None = None  # None = authors' error_scale 16 for gaussian, else DEFAULT_SCALE
    join: str = "concat"  # eq. 11: channel-wise concatenation (the only join of this model)

    def default_scale(self) -> float | None:
        return CONV_GAUSSIAN_SCALE if self.output == "gaussian" else super().default_scale()

    def __post_init__(self):
        super().__post_init__()
        C, H, W = self.image_shape
        if self.arch == "auto":
            self.arch = "medium" if max(H, W) <= 32 else "large"
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {sorted(ARCHS)} or auto; got {self.arch!r}")
        if self.join != "concat":
            raise ValueError(f"the convolutional VLAE joins levels by concatenation (eq. 11) only; got join={self.join!r}")
        n_conv = len(ARCHS[self.arch])
        if not 2 <= self.layers <= n_conv + 1:
            raise ValueError(f"the {self.arch} architecture has 2 to {n_conv + 1} levels; got {self.layers}")
        down = 2 ** sum(s == 2 for stage in ARCHS[self.arch][: self.layers - 1] for _, s in stage)
        if H % down or W % down:
            raise ValueError(f"the {self.arch} architecture with {self.layers} levels needs height and width "
                             f"divisible by {down}; got {H}x{W} (choose --image-size accordingly)")


class ConvVLAE(FlatPriorLadder):
    def __init__(self, cfg: ConvVLAEConfig):
        super().__init__(cfg)
        C, H, W = cfg.image_shape
        Hd, L = cfg.hidden, cfg.layers
        stages = ARCHS[cfg.arch][: L - 1]

        # inference: g_l for l < L convolutional, g_L fully connected (eq. 12)
        g, self.maps = [], []  # maps[l]: h_l's shape (c, h, w), the level's join resolution
        c, h, w = C, H, W
        for stage in stages:
            layers = []
            for c_out, s in stage:
                layers.append(conv4_bn(c, c_out, s))
                c, h, w = c_out, h // s, w // s
            g.append(nn.Sequential(*layers))
            self.maps.append((c, h, w))
        top_in = c * h * w
        g.append(nn.Sequential(nn.Flatten(), fc_bn(top_in, Hd), fc_bn(Hd, Hd)))
        self.g = nn.ModuleList(g)
        d_h = [math.prod(m) for m in self.maps] + [Hd]  # width of flattened h_l
        self.q = nn.ModuleList(GaussianHead(d_h[l], d) for l, d in enumerate(cfg.latent_dims))  # (eq. 13)

        # generation: z~_L = f_L(z_L) reshaped to h_{L-1}'s map (eq. 8)
        self.f_top = nn.Sequential(fc_bn(cfg.latent_dims[-1], Hd, "relu"), fc_bn(Hd, Hd, "relu"),
                                   fc_bn(Hd, top_in, "relu"))
        # v_l(z_l): a fully-connected map of z_l reshaped to h_l's map, joined channel-wise (eq. 11)
        self.v = nn.ModuleList(fc_bn(d, math.prod(m), "relu") for d, m in zip(cfg.latent_dims, self.maps))
        # u_l: g_l mirrored on the 2 c_l joined channels, back to h_{l-1}'s map (u_1 ends in f_0's logits)
        u = []
        for l, stage in enumerate(stages):
            c_ins = [C if l == 0 else self.maps[l - 1][0]] + [c_out for c_out, _ in stage[:-1]]
            layers, c = [], 2 * stage[-1][0]
            for i in reversed(range(len(stage))):
                last = l == 0 and i == 0
                layers.append(conv4(c, c_ins[i], stage[i][1], True) if last else conv4_bn(c, c_ins[i], stage[i][1], True))
                c = c_ins[i]
            u.append(nn.Sequential(*layers))
        self.u = nn.ModuleList(u)

    # --- the two halves -------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """q(z_l | x) for every level: lists of mu_l, logvar_l ([B, d_l]), bottom first."""
        mus, logvars, h = [], [], x
        for g_l, q_l in zip(self.g, self.q):
            h = g_l(h)  # h_l = g_l(h_{l-1})  (eq. 12)
            mu, logvar = q_l(h.flatten(1))  # (eq. 13)
            mus.append(mu)
            logvars.append(logvar)
        return mus, logvars

    def decode(self, z: list[Tensor]) -> Tensor:
        """f_0(z~_1) as logits [B, C, H, W] from codes z_1..z_L (bottom first)."""
        B = z[0].shape[0]
        zt = self.f_top(z[-1]).view(B, *self.maps[-1])  # z~_L = f_L(z_L): [B, c, h, w]  (eq. 8)
        for l in reversed(range(self.cfg.layers - 1)):  # l = L-1 .. 1 (0-based index)
            vl = (self.v[l](z[l]) * self.fade[l]).view(B, *self.maps[l])  # v_l(z_l) at h_l's resolution, faded in
            zt = self.u[l](torch.cat([zt, vl], dim=1))  # z~_l = u_l([z~_{l+1}; v_l(z_l)])  (eq. 11)
        return zt  # u_1 ends in f_0: image logits [B, C, H, W]  (eq. 10)

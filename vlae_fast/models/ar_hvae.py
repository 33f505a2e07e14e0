"""Autoregressive HVAE: the paper's fully general hierarchy, eq. 3 (section 2.2), with shortcut connections.

    p(x, z) = p(x | z_1, ..., z_L)  prod_{l<L} p(z_l | z_{>l})  p(z_L)

Generation:  z_L ~ N(0, I);  z_l ~ N(W1 f_l([z_{l+1}; ...; z_L]), sigm(W2 f_l([...]))^2) for l < L: every level's
             prior reads ALL the levels above it, concatenated;  x ~ p(x | f_0([z_1; ...; z_L])): the decoder
             reads every level (a shortcut from each). The networks are the Markov HVAE's (models/hvae.py), only
             their input widths grow: sum_{k>l} d_k for f_l, sum_k d_k for f_0.
Inference:   the Markov HVAE's bottom-up mirror, unchanged: q(z_1 | x), q(z_{l+1} | z_l) (q(z | x) may be any
             distribution for eq. 5; this one keeps the two models' inference identical so they differ only in p).
Learning:    eq. 5 on the sampled path, as the HVAE: one-sample log q(z_l | .) - log p(z_l | z_{>l}) for l < L,
             closed-form KL(q(z_L | z_{L-1}) || N(0, I)) at the top.

Because x depends on every level, eq. 6's chain on z_1 alone is not defined (there is no p(x | z_1)); Proposition 2's
chain on the whole code (`vlae gibbs --whole`) is. Controls are the generative noise eps_l, as for the HVAE.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .hvae import HVAE, HVAEConfig


@dataclass
class ARHVAEConfig(HVAEConfig):
    model: str = "ar_hvae"  # every other field and default is the HVAE's


class ARHVAE(HVAE):
    """Registered as "ar_hvae". The HVAE with p(z_l | z_{>l}) and p(x | z) reading every level above / every level."""
    MARKOV_BOTH_WAYS = False  # x and p(z_l | .) read every level above: the posterior gap does not split by level
    GIBBS_ON_Z1 = False  # p(x | z) reads every level: only the whole-code chain (Proposition 2) applies

    def prior_width(self, l: int) -> int:
        """f_l of p(z_{l+1} | z_{>l+1}) reads the concatenated codes above, 0-based l < L - 1."""
        return sum(self.cfg.latent_dims[l + 1:])

    def decoder_width(self) -> int:
        """f_0 reads every level's code, concatenated."""
        return sum(self.cfg.latent_dims)

    def prior_input(self, z: list[Tensor], l: int) -> Tensor:
        """[z_{l+2}; ...; z_L] for p(z_{l+1} | .), 0-based l: [B, sum of their widths]."""
        return torch.cat(z[l + 1:], dim=1)

    def decode(self, z: list[Tensor]) -> Tensor:
        """f_0([z_1; ...; z_L]) as logits [B, C, H, W]; every level is needed."""
        assert len(z) == self.cfg.layers, f"the autoregressive HVAE decodes all {self.cfg.layers} levels; got {len(z)}"
        return self.f0(torch.cat(z, dim=1))

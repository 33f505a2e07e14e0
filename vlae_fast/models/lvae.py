"""Ladder VAE (Sonderby et al., 2016; the paper's Figure 4, right): the Markov HVAE's generative model with
ladder inference. Section 4.2: its inference is better than the HVAE's, but it is still a Markov HVAE, so
section 3's limits (eq. 6's chain on z_1, Figure 3's noise traversal) apply to it unchanged.

Generation: the Markov HVAE's, module for module (models/hvae.py: same widths, so the two compare level by
level):  z_L ~ N(0, I),  z_l ~ N(mu_l(z_{l+1}), sigma_l(z_{l+1})^2),  x ~ p(x | f_0(z_1)).

Inference (ladder):
    bottom-up, deterministic:  d_1 = convs(x),  d_l = two dense layers(d_{l-1});  each gives an estimate
                               (mu_hat_l, var_hat_l) = GaussianHead(d_l)
    top-down:                  q(z_L | x) = N(mu_hat_L, var_hat_L)
                               q(z_l | z_{l+1}, x) = N(mu_hat_l, var_hat_l) * p(z_l | z_{l+1}), renormalised:
                               precision_weighted() below, for l < L
Learning:  ELBO = E_q[log p(x | z_1)] - KL(q(z_L | x) || N(0, I))
                  - sum_{l<L} E_q[KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1}))]
           every KL in closed form, given the sampled z_{l+1} above it (q factorises top-down, so this is eq. 5).

A level's control is the generative noise eps_l, as for the HVAE (the prior, and so the traversals, are the
HVAE's); `encode` gives the top-down posterior means.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlae_fast.kernels import reparam_kl

from .base import Output, gaussian_log_density
from .hvae import HVAE, HVAEConfig


@dataclass
class LVAEConfig(HVAEConfig):
    model: str = "lvae"  # every other field and default is the HVAE's: the same generative model


def precision_weighted(mu_hat: Tensor, logvar_hat: Tensor, mu_p: Tensor, logvar_p: Tensor) -> tuple[Tensor, Tensor]:
    """The product N(mu_hat, var_hat) N(mu_p, var_p), renormalised, as (mu_q, logvar_q): the ladder's merge of a
    bottom-up estimate with the top-down prior,
        var_q = 1 / (1 / var_hat + 1 / var_p),   mu_q = (mu_hat / var_hat + mu_p / var_p) * var_q.
    Computed in log space: logvar_q = -logaddexp(-logvar_hat, -logvar_p), and mu_q's weights
    var_q / var_hat = sigmoid(logvar_p - logvar_hat) and var_q / var_p = sigmoid(logvar_hat - logvar_p)."""
    logvar_q = -torch.logaddexp(-logvar_hat, -logvar_p)
    mu_q = mu_hat * torch.sigmoid(logvar_p - logvar_hat) + mu_p * torch.sigmoid(logvar_hat - logvar_p)
    return mu_q, logvar_q


def gaussian_kl(mu_q: Tensor, logvar_q: Tensor, mu_p: Tensor, logvar_p: Tensor) -> Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) of diagonal Gaussians, summed over the last dimension: [B]."""
    return 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p).square()) * torch.exp(-logvar_p) - 1).sum(1)


class LVAE(HVAE):
    """Registered as "lvae". Inherits the HVAE's generation (f, p, f0), its controls (eps_l), the chain on z_1
    (GIBBS_ON_Z1: p(x | z) reads z_1 alone) and its learning rate; replaces its inference."""
    MARKOV_BOTH_WAYS = False  # q(z_l | z_{l+1}, x) is top-down: the posterior gap does not split by level

    def up_width(self, l: int) -> int:
        """enc[l] reads d_l, the deterministic output below (not the HVAE's sampled z_l): the conv features for
        l = 1, a hidden layer above."""
        return self.d_feat if l == 1 else self.cfg.hidden

    def bottom_up(self, x: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The deterministic pass d_1 = enc[0](x), d_{l+1} = enc[l](d_l) and each level's estimate
        (mu_hat_l, logvar_hat_l) = q[l](d_l): list of ([B, d_l], [B, d_l]), bottom first."""
        est, d = [], x
        for l in range(self.cfg.layers):
            d = self.enc[l](d)
            est.append(self.q[l](d))
        return est

    def _top_down(self, x: Tensor, eps: list[Tensor] | None, sample: bool = True, given: list[Tensor] | None = None):
        """The codes top-down, each level's q (mu, logvar) and its prior p(z_l | z_{l+1}) (None at the top), and the
        top level's KL(q(z_L | x) || N(0, I)). sample=False follows the posterior means instead (encode); `given`
        codes are followed instead of drawn (q and p evaluated at them)."""
        L = self.cfg.layers
        est = self.bottom_up(x)
        z, q_terms, p_terms = [None] * L, [None] * L, [None] * L
        q_terms[-1] = mu, logvar = est[-1]  # q(z_L | x): the top estimate itself
        if given is not None:
            z[-1], kl_top = given[-1], None
        elif sample:
            z[-1], kl_top = reparam_kl(mu, logvar, None if eps is None else eps[-1])  # z_L = mu + sigma * eps
        else:
            z[-1], kl_top = mu, None
        for l in reversed(range(L - 1)):
            p_terms[l] = self.p_params(l, self.prior_input(z, l))  # p(z_l | z_{l+1})
            q_terms[l] = mu, logvar = precision_weighted(*est[l], *p_terms[l])
            if given is not None:
                z[l] = given[l]
            elif sample:
                z[l] = mu + torch.exp(0.5 * logvar) * (torch.randn_like(mu) if eps is None else eps[l])
            else:
                z[l] = mu
        return z, q_terms, p_terms, kl_top

    # --- training -------------------------------------------------------------------------
    def forward(self, x: Tensor, eps: list[Tensor] | None = None) -> Output:
        """One ELBO pass: z_L ~ q(z_L | x), then z_l ~ q(z_l | z_{l+1}, x) down to z_1 (or with the given noise),
        x reconstructed from z_1. kl[:, l] = KL(q(z_l | z_{l+1}, x) || p(z_l | z_{l+1})) in closed form; top:
        KL(q(z_L | x) || N(0, I))."""
        z, q_terms, p_terms, kl_top = self._top_down(x, eps)
        logits = self.decode(z)
        kl = [gaussian_kl(*q_terms[l], *p_terms[l]) for l in range(self.cfg.layers - 1)]
        return Output(logits, self.recon_nll(x, logits), torch.stack(kl + [kl_top], dim=1), z)

    def log_weight(self, x: Tensor, z: list[Tensor] | None = None) -> Tensor:
        """log p(x, z) - log q(z | x) at one z ~ q(z | x) drawn top-down, or at the given codes: [B]."""
        z, q_terms, p_terms, _ = self._top_down(x, None, given=z)
        p_terms[-1] = (torch.zeros_like(z[-1]), torch.zeros_like(z[-1]))  # p(z_L) = N(0, I)
        log_ratio = sum(gaussian_log_density(z[l], *q_terms[l]) - gaussian_log_density(z[l], *p_terms[l])
                        for l in range(self.cfg.layers))
        return -(self.recon_nll(x, self.decode(z)) + log_ratio)

    def posterior_sample(self, x: Tensor, eps: list[Tensor] | None = None) -> list[Tensor]:
        """z ~ q(z | x) top-down with the given noise: list of [B, d_l], bottom first."""
        return self._top_down(x, eps)[0]

    # --- generation -----------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Posterior means top-down: mu_hat_L at the top, then each level's merge with p(z_l | mu_{l+1}); with the
        merged logvars. Bottom first."""
        _, q_terms, _, _ = self._top_down(x, None, sample=False)
        return [q[0] for q in q_terms], [q[1] for q in q_terms]

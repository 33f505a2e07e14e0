"""Fused ops the models call. Each op has a plain-PyTorch reference beside it (`*_torch`) and a
Triton path (`*_triton`: kernels + launcher + torch.library custom ops with their autograd in the same file).

Public API (the model calls only these names):
    reparam_kl(mu, logvar, eps=None) -> (z, kl)
        mu, logvar, eps: [B, D]; z = mu + exp(0.5 logvar) * eps, kl[i] = 0.5 sum_j (mu^2 + exp(logvar) - 1 - logvar)
    reparam_kl_multi(mus, logvars, eps=None) -> (zs, kl)       # all ladder levels in one launch
        mus[l], logvars[l], eps[l]: [B, D_l] (widths may differ); zs[l]: [B, D_l]; kl: [B, L]
    ladder_linear(a, b, weight, bias=None, activation=None) -> out
        act([a; b] @ weight^T + bias) with a: [B, Da], b: [B, Db], weight: [N, Da + Db]

Which path runs is chosen per call by kernels/backend.py: set_backend('auto' | 'triton' | 'torch'),
$VLAE_KERNELS, or `--kernels` on the CLI; auto = Triton for CUDA tensors, the reference elsewhere.
With eps=None the Triton path draws the noise in the kernel (Philox, seeded from torch's generator)
and the reference with torch.randn: both repeat under torch.manual_seed, but not each other.
"""
from torch import Tensor

from .backend import BACKENDS, get_backend, set_backend, use_backend, use_triton
from .ladder_linear import ACTIVATIONS, LEAKY_SLOPE, ladder_linear_torch, ladder_linear_triton
from .reparam_kl import reparam_kl_multi_torch, reparam_kl_multi_triton, reparam_kl_torch, reparam_kl_triton


def reparam_kl(mu: Tensor, logvar: Tensor, eps: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """z = mu + exp(0.5 logvar) * eps and the per-row KL(N(mu, exp(logvar)) || N(0, I)): z [B, D], kl [B]."""
    if use_triton(mu):
        return reparam_kl_triton(mu, logvar, eps)
    return reparam_kl_torch(mu, logvar, eps)


def reparam_kl_multi(
    mus: list[Tensor], logvars: list[Tensor], eps: list[Tensor] | None = None
) -> tuple[list[Tensor], Tensor]:
    """reparam_kl for every ladder level at once: the list of z_l [B, D_l] and kl [B, L]."""
    if use_triton(mus[0]):
        return reparam_kl_multi_triton(mus, logvars, eps)
    return reparam_kl_multi_torch(mus, logvars, eps)


def ladder_linear(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """act([a; b] @ weight^T + bias); the Triton path never builds the concatenation [a; b]."""
    if use_triton(a):
        return ladder_linear_triton(a, b, weight, bias, activation)
    return ladder_linear_torch(a, b, weight, bias, activation)


__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "LEAKY_SLOPE",
    "get_backend",
    "ladder_linear",
    "ladder_linear_torch",
    "ladder_linear_triton",
    "reparam_kl",
    "reparam_kl_multi",
    "reparam_kl_multi_torch",
    "reparam_kl_multi_triton",
    "reparam_kl_torch",
    "reparam_kl_triton",
    "set_backend",
    "use_backend",
]

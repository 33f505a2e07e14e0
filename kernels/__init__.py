"""Fused ops the models call. Each op has a plain-PyTorch reference beside it (`*_torch`).

Public API (the model calls only these names):
    reparam_kl(mu, logvar, eps=None) -> (z, kl)
    reparam_kl_multi(mus, logvars, eps=None) -> (zs, kl)       # all ladder levels at once
    ladder_linear(a, b, weight, bias=None, activation=None) -> out
"""
from .ladder_linear import ACTIVATIONS, LEAKY_SLOPE, ladder_linear_torch
from .reparam_kl import reparam_kl_multi_torch, reparam_kl_torch

reparam_kl = reparam_kl_torch
reparam_kl_multi = reparam_kl_multi_torch
ladder_linear = ladder_linear_torch

__all__ = [
    "ACTIVATIONS",
    "LEAKY_SLOPE",
    "ladder_linear",
    "ladder_linear_torch",
    "reparam_kl",
    "reparam_kl_multi",
    "reparam_kl_multi_torch",
    "reparam_kl_torch",
]

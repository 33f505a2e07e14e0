"""The ladder concat-projection: the first layer of u_l applied to [z~_{l+1}; v_l(z_l)] (eq. 11).

Math (a: [B, Da], b: [B, Db], weight: [N, Da + Db], bias: [N]):
    out = act([a; b] @ weight^T + bias) = act(a @ Wa^T + b @ Wb^T + bias),  Wa = weight[:, :Da], Wb = weight[:, Da:]
so the concatenation [a; b] is never materialised.

This file holds the plain-PyTorch reference; autograd derives the VJPs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LEAKY_SLOPE = 0.1  # LeakyReLU(0.1), as in the authors' code
ACTIVATIONS = (None, "relu", "leaky_relu")


def apply_activation(y: Tensor, activation: str | None) -> Tensor:
    if activation is None:
        return y
    if activation == "relu":
        return F.relu(y)
    if activation == "leaky_relu":
        return F.leaky_relu(y, LEAKY_SLOPE)
    raise ValueError(f"activation must be one of {ACTIVATIONS}; got {activation!r}")


def ladder_linear_torch(
    a: Tensor, b: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Reference: act([a; b] @ weight^T + bias) as two matmuls, without torch.cat."""
    Da, Db = a.shape[1], b.shape[1]
    if weight.shape[1] != Da + Db:
        raise ValueError(f"weight is {tuple(weight.shape)} but [a; b] has {Da} + {Db} = {Da + Db} columns")
    y = a @ weight[:, :Da].t() + b @ weight[:, Da:].t()
    if bias is not None:
        y = y + bias
    return apply_activation(y, activation)

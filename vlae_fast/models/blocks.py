"""Small building blocks shared by the models (authors' code: fc/conv + batch norm + LeakyReLU(0.1))."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from vlae_fast.kernels import LEAKY_SLOPE, ladder_linear

GATE_INIT = 0.1  # the gated-add join's starting gate (the authors' MNIST code): the path from above dominates early


def act(name: str) -> nn.Module:
    return nn.LeakyReLU(LEAKY_SLOPE) if name == "leaky_relu" else nn.ReLU()


def fc_bn(d_in: int, d_out: int, activation: str = "leaky_relu") -> nn.Sequential:
    """Linear -> BatchNorm1d -> activation (the authors' fc_bn_lrelu / fc_bn_relu)."""
    return nn.Sequential(nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), act(activation))


def conv_bn(c_in: int, c_out: int, stride: int = 2, activation: str = "leaky_relu") -> nn.Sequential:
    """4x4 convolution (padding 1 halves H, W at stride 2) -> BatchNorm2d -> activation."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 4, stride, 1), nn.BatchNorm2d(c_out), act(activation))


def deconv_bn(c_in: int, c_out: int, activation: str = "relu") -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles H, W) -> BatchNorm2d -> activation."""
    return nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), act(activation))


class ToImage(nn.ConvTranspose2d):
    """f_0's last layer: a 4x4 stride-2 transposed convolution to the image's C channels (the logits).

    On the CPU it runs ATen's own kernel (slow_conv_transpose2d) instead of oneDNN's, which is slow for so few
    output channels: MNIST's 64 -> 1 at batch 100 on 2 threads took 4.6 ms forward + backward against 14.2 ms
    (bench/README.md). The same parameters and state-dict keys as nn.ConvTranspose2d, which it is on CUDA, under
    autocast and under torch.compile (which lowers the convolution itself)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.device.type != "cpu" or torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
            return super().forward(x)
        return torch.ops.aten.slow_conv_transpose2d(x, self.weight, self.kernel_size, self.bias, self.stride,
                                                    self.padding, self.output_padding, self.dilation)


class GaussianHead(nn.Module):
    """mu_l(h_l), sigma_l(h_l) of eq. 13, returned as (mu, logvar) for the fused reparam + KL op.

    sigma = sigmoid(.) + 1e-3, as in the authors' code: the posterior is never wider than the
    N(0, I) prior (a wider one only costs KL), sigma stays bounded so exp(logvar) cannot overflow
    early in training, and the floor keeps log sigma finite.
    """

    def __init__(self, d_in: int, d_z: int):
        super().__init__()
        self.mu = nn.Linear(d_in, d_z)
        self.sigma = nn.Linear(d_in, d_z)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        sigma = torch.sigmoid(self.sigma(h)) + 1e-3
        return self.mu(h), 2.0 * torch.log(sigma)  # logvar = log sigma^2


class LadderJoin(nn.Module):
    """The first layer of u_l on [z~_{l+1}; v_l(z_l)] (eq. 11).

    join='concat' (the paper): act(W [a; b] + bias) through the fused ladder_linear op, never
    building the concatenation. join='gated_add' (the authors' MNIST code): act(W (a + g * b) + bias)
    with a learned per-unit gate g initialised to GATE_INIT (set_gates changes it before training).
    """

    def __init__(self, d_a: int, d_b: int, d_out: int, join: str = "concat", activation: str = "relu"):
        super().__init__()
        if join not in ("concat", "gated_add"):
            raise ValueError(f"join must be 'concat' or 'gated_add'; got {join!r}")
        if join == "gated_add" and d_a != d_b:
            raise ValueError(f"gated_add needs equal widths; got {d_a} and {d_b}")
        self.join, self.activation = join, activation
        self.linear = nn.Linear(d_a + d_b if join == "concat" else d_a, d_out)
        self.gate = nn.Parameter(torch.full((d_b,), GATE_INIT)) if join == "gated_add" else None

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if self.join == "concat":
            return ladder_linear(a, b, self.linear.weight, self.linear.bias, self.activation)
        y = self.linear(a + self.gate * b)
        return torch.relu(y) if self.activation == "relu" else nn.functional.leaky_relu(y, LEAKY_SLOPE)


def set_gates(model: nn.Module, value: float) -> int:
    """Start every gated-add join's gate g at `value` (a fresh model, before training); returns how many
    joins have a gate (0: the model has none, e.g. --join concat)."""
    joins = [m for m in model.modules() if isinstance(m, LadderJoin) and m.gate is not None]
    with torch.no_grad():
        for m in joins:
            m.gate.fill_(value)
    return len(joins)

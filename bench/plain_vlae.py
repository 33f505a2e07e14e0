"""The baseline bench/train_step.py measures the library against: the MNIST 3-level VLAE written the way a
user would write it in plain eager PyTorch, without the library (nn.Sequential blocks, torch.cat for the
ladder join, the textbook reparameterisation and KL, default torch.optim.Adam).

Same network as vlae_fast.models.VLAE with its MNIST defaults (same layers, widths and parameter count:
train_step.py checks the count), so the two do the same arithmetic per step:
    g_1: two 4x4 stride-2 convolutions (64, 128) + BN + LeakyReLU(0.1); g_2, g_3: two 1024-unit fc blocks
    heads: mu, sigma = sigmoid(.) + 1e-3 per level; z = mu + sigma * eps; KL to N(0, I) in closed form
    f_3: two 1024-unit fc blocks (ReLU) + linear; u_l: linear on [z~_{l+1}; v_l(z_l)] + ReLU (+ fc block +
    linear for l = 2); f_0: transposed convolutions back to 28x28 logits; loss 4 * SSE + KL (Gaussian r).
This file must not import vlae_fast.
"""
import math

import torch
from torch import nn

H = 1024  # fully-connected width
D = 2  # code width per level
FEAT = 128 * 7 * 7  # g_1's output, flattened


def fc(d_in: int, d_out: int, act: nn.Module) -> list[nn.Module]:
    return [nn.Linear(d_in, d_out), nn.BatchNorm1d(d_out), act]


class PlainVLAE(nn.Module):
    def __init__(self):
        super().__init__()
        lrelu = lambda: nn.LeakyReLU(0.1)  # noqa: E731
        self.g1 = nn.Sequential(nn.Conv2d(1, 64, 4, 2, 1), nn.BatchNorm2d(64), lrelu(),
                                nn.Conv2d(64, 128, 4, 2, 1), nn.BatchNorm2d(128), lrelu(), nn.Flatten())
        self.g2 = nn.Sequential(*fc(FEAT, H, lrelu()), *fc(H, H, lrelu()))
        self.g3 = nn.Sequential(*fc(H, H, lrelu()), *fc(H, H, lrelu()))
        self.q1, self.q2, self.q3 = nn.Linear(FEAT, 2 * D), nn.Linear(H, 2 * D), nn.Linear(H, 2 * D)
        self.f3 = nn.Sequential(*fc(D, H, nn.ReLU()), *fc(H, H, nn.ReLU()), nn.Linear(H, H))
        self.v1, self.v2 = nn.Sequential(*fc(D, H, nn.ReLU())), nn.Sequential(*fc(D, H, nn.ReLU()))
        self.u2 = nn.Sequential(nn.Linear(2 * H, H), nn.ReLU(), *fc(H, H, nn.ReLU()), nn.Linear(H, H))
        self.u1 = nn.Sequential(nn.Linear(2 * H, FEAT), nn.ReLU(), nn.Unflatten(1, (128, 7, 7)))
        self.f0 = nn.Sequential(nn.ConvTranspose2d(128, 64, 4, 2, 1), nn.BatchNorm2d(64), nn.ReLU(),
                                nn.ConvTranspose2d(64, 1, 4, 2, 1))

    @staticmethod
    def sample(head_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, s = head_out.chunk(2, dim=1)
        sigma = torch.sigmoid(s) + 1e-3
        z = mu + sigma * torch.randn_like(mu)  # the reparameterisation trick
        kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 1 - 2 * torch.log(sigma)).sum(1)  # KL(N(mu, sigma^2) || N(0, 1))
        return z, kl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h1 = self.g1(x)
        h2 = self.g2(h1)
        h3 = self.g3(h2)
        z1, kl1 = self.sample(self.q1(h1))
        z2, kl2 = self.sample(self.q2(h2))
        z3, kl3 = self.sample(self.q3(h3))
        t = self.f3(z3)
        t = self.u2(torch.cat([t, self.v2(z2)], dim=1))
        t = self.u1(torch.cat([t, self.v1(z1)], dim=1))
        mean = torch.sigmoid(self.f0(t))
        sigma = 1 / math.sqrt(8)  # the Gaussian r(x | z): 4 * SSE
        nll = (0.5 * ((x - mean) / sigma) ** 2).flatten(1).sum(1) + x[0].numel() * math.log(sigma * math.sqrt(2 * math.pi))
        return (nll + kl1 + kl2 + kl3).mean()  # the negative ELBO


def plain_step(model: PlainVLAE, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> torch.Tensor:
    loss = model(x)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.detach()

"""-log r(x; f_0(z~_1)) per image (eq. 10), for the selectable output distributions."""
from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

OUTPUTS = ("gaussian", "laplace", "bernoulli")
# Default scale per distribution: the authors' MNIST loss is 4 * sum (x - mean)^2 + KL, i.e. a Gaussian
# with 1 / (2 sigma^2) = 4; their later L1 loss 4 * sum |x - mean| is a Laplace with b = 1/4.
DEFAULT_SCALE = {"gaussian": 1.0 / math.sqrt(8.0), "laplace": 0.25, "bernoulli": None}


def neg_log_likelihood(x: Tensor, logits: Tensor, output: str, scale: float | None) -> Tensor:
    """-log r(x | logits) summed over pixels: [B]. The mean of r is sigmoid(logits) in every case.

    'bernoulli' on grey levels is the usual continuous cross-entropy (not a normalised density).
    """
    if output == "bernoulli":
        nll = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    else:
        mean = logits.sigmoid()
        if output == "gaussian":
            nll = 0.5 * ((x - mean) / scale).square() + math.log(scale) + 0.5 * math.log(2 * math.pi)
        elif output == "laplace":
            nll = (x - mean).abs() / scale + math.log(2 * scale)
        else:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
    return nll.flatten(1).sum(1)


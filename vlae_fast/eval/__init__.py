"""What a trained model learned, per level, as numbers: `vlae eval` and `vlae compare` (docs/eval.md).

likelihood  ELBO terms per level, the importance-weighted bound, the discrete-image bound, bits/dim
probes      active units, k-nearest-neighbour and logistic-regression label probes per level
levels      variation shares and image factors (ink, width, slant, class) per level
report      the versioned JSON report, claim verdicts, rich and markdown tables
run         the compact part `vlae train` stores, and the full report of a checkpoint
compare     several runs side by side
"""
from .likelihood import evaluate, iw_bound

__all__ = ["evaluate", "iw_bound"]

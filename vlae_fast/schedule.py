"""What changes with the step in a training run: the KL weight per level and, under progressive
training, how far each level is switched on in the generator.

KL annealing (eq. 14 with a weight on the KL; appendix B.1 anneals it from 0 to 1):
    linear:  w(t) = min(1, (t + 1) / warmup)       exactly 1 from step warmup - 1 on
    exp:     w(t) = 1 - exp(-(t + 1) / warmup)     warmup is the time constant (the authors' code)

Progressive training (pro-VLAE, Li et al. 2020): the top, most abstract level trains alone first; every
`stage_steps` the next lower level l is faded in, its generator input v_l(z_l) multiplied by
    alpha_l(t) = clamp((t - start_l + 1) / fade_steps, 0, 1),   start_l = (L - l) * stage_steps.
A level not yet started (alpha_l = 0) still encodes and pays its KL with the small weight pre_kl, so
its posterior stays at the prior until the generator listens to it; from start_l on it takes w(t).
kl_scale (beta_l, bottom first) multiplies level l's weight throughout: beta_l > 1 makes the level's
information dearer (the reported ELBO is always eq. 14's, with every weight 1). first_kl multiplies the top
level's weight during the first stage only, while it trains alone: > 1 leaves its code room for the few largest
factors, so the style the top would otherwise take first (slant, docs/hierarchy.md) is left for level L - 1.
level_warmup T' > 0: each level below the top warms up anew from its own start, with T' in place of warmup
(w'(t - start_l), same anneal), instead of taking the run's w(t): a level switched on late starts nearly free
and can take factors the levels above already hold.
top_lr: a factor on the learning rate of the top level's own modules (its inference block g_L and head q_L, its
generator f_L) from the end of its stage on: < 1 slows the code the top learnt alone while the levels below fade in
(0 freezes it). Meant to keep the top's identity while lower levels fade in; measured, it does not: the identity
goes through the inference trunk g_1 .. g_{L-1} the lower levels share (docs/hierarchy.md).
top_lr_scope 'inference': top_lr acts on the top's inference path alone (with a separate top encoder, its own
trunk and head), and f_L keeps learning at lr: the code z_L(x) stays as the top's stage left it while the
generator may still change what z_L draws.
first_levels N: the top N levels train together from step 0 (the first stage), each lower level a stage later:
    start_l = max(0, L - N + 1 - l) * stage_steps
(N = 1 is pro-VLAE's top level alone). With N = 2 on three levels, level 2 is on beside the top from the start and can
take the style factors (slant, width) the top would otherwise learn alone (docs/hierarchy.md); first_kl,
first_target and top_lr act on that whole first stage.
first_target 'deskew': during the first stage, while the top trains alone, the reconstruction is scored on the
image with its slant taken out (deskew.py) instead of x; the encoder still sees x. The top's 2-d code then has no
slant to spend its nats on in the stage that shapes it, leaving slant for the level below (docs/hierarchy.md).
first_target 'normalize': the same with slant, digit width and stroke width all made common (normalize.py), so the
top's first stage has identity alone to learn.

Learning-rate decay: lr_decay 'cosine' multiplies every parameter group's lr by
    d(t) = 1                                            t < s  (s = lr_decay_start)
    d(t) = (1 + cos(pi * (t - s) / (steps - s))) / 2    t >= s, falling to 0 after the last step
(Loshchilov & Hutter 2017, without restarts); it multiplies top_lr's factor, not replaces it.

Free bits (Kingma et al. 2016, "Improved variational inference with inverse autoregressive flow"): level l's
KL term in the loss is max(KL_l, lambda_l), KL_l averaged over the batch, so the first lambda_l nats of the
level's code cost nothing (train.make_step). The reported ELBO always uses KL_l itself.
"""
from __future__ import annotations

import math

ANNEALS = ("linear", "exp")
SCHEDULES = ("plain", "progressive")
LR_DECAYS = ("none", "cosine")
TOP_LR_SCOPES = ("all", "inference")
FIRST_TARGETS = ("x", "deskew", "normalize")


def kl_weight(step: int, warmup: float, anneal: str = "linear") -> float:
    """The annealed KL weight of 0-based `step` (see the module's docstring); 1 without warm-up."""
    if warmup <= 0:
        return 1.0
    if anneal == "exp":
        return 1.0 - math.exp(-(step + 1) / warmup)
    return min(1.0, (step + 1) / warmup)


def level_start(level: int, layers: int, stage_steps: int, first_levels: int = 1) -> int:
    """The step at which 1-based `level` starts fading in: the top `first_levels` levels at 0, each lower one a stage
    later."""
    return max(0, layers - first_levels + 1 - level) * stage_steps


def fade(step: int, level: int, layers: int, stage_steps: int, fade_steps: int, first_levels: int = 1) -> float:
    """alpha_l(step): 0 before the level's stage, rising linearly to 1 over fade_steps, then 1."""
    start = level_start(level, layers, stage_steps, first_levels)
    if step < start:
        return 0.0
    return min(1.0, (step - start + 1) / fade_steps) if fade_steps > 0 else 1.0


def progressive_length(layers: int, stage_steps: int, fade_steps: int, first_levels: int = 1) -> int:
    """Steps until every level is fully on: the bottom level's start plus its fade."""
    return level_start(1, layers, stage_steps, first_levels) + (fade_steps if layers > 1 else 0)


def first_stage_end(cfg, layers: int) -> int:
    """The step at which the first stage ends: one stage in, when the first level below the top first_levels switches
    on (0 for a plain schedule or when no level is below them: no first stage)."""
    return cfg.stage_steps if cfg.schedule == "progressive" and layers > cfg.first_levels else 0


def top_lr_factor(step: int, cfg, layers: int) -> float:
    """The factor on the top level's learning rate at `step`: 1 during the first stage, cfg.top_lr after it."""
    if cfg.schedule != "progressive" or layers < 2 or step < first_stage_end(cfg, layers):
        return 1.0
    return cfg.top_lr


def lr_factor(step: int, cfg) -> float:
    """The factor on every group's learning rate at `step` (lr_decay above): 1 without a decay or before its start."""
    if cfg.lr_decay == "none" or step < cfg.lr_decay_start:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * (step - cfg.lr_decay_start) / (cfg.steps - cfg.lr_decay_start)))


def weights(step: int, cfg, layers: int) -> tuple[list[float], list[float]]:
    """(alpha_l, KL weight_l) for l = 1..L at `step` under TrainConfig `cfg` (bottom first)."""
    w = kl_weight(step, cfg.warmup, cfg.kl_anneal)
    beta = cfg.kl_scale or (1.0,) * layers
    if cfg.schedule != "progressive":
        return [1.0] * layers, [w * b for b in beta]
    alphas = [fade(step, l, layers, cfg.stage_steps, cfg.fade_steps, cfg.first_levels) for l in range(1, layers + 1)]
    starts = [level_start(l, layers, cfg.stage_steps, cfg.first_levels) for l in range(1, layers + 1)]
    on_w = [kl_weight(step - s, cfg.level_warmup, cfg.kl_anneal) if cfg.level_warmup and s > 0 else w for s in starts]
    kl = [(w_l if step >= s else cfg.pre_kl) * b for w_l, s, b in zip(on_w, starts, beta)]
    if step < first_stage_end(cfg, layers):  # the first stage: the top alone (or with the levels of first_levels)
        kl[-1] *= cfg.first_kl
    return alphas, kl

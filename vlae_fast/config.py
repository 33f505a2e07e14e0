"""One training run's options: what `vlae train` parses, train() reads, and a checkpoint stores (its
`train` metadata), so that resume.plan_resume can rebuild them without importing the training loop."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ConfigError
from .schedule import ANNEALS, FIRST_TARGETS, LR_DECAYS, SCHEDULES, TOP_LR_SCOPES

PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    dataset: str = "mnist"
    steps: int = 4000  # ~0.33 s/step on 2 CPU cores (~22 min); the 2-d MNIST levels have formed by then
    batch_size: int = 100  # authors' code
    lr: float = 2e-4  # Adam, authors' code
    warmup: float | None = None  # KL weight rises linearly 0 -> 1 over these steps (<= steps); None = steps / 2; 0 = none
    seed: int = 0
    device: str = "auto"  # auto = cuda if available, else cpu
    save_every: int = 1000  # steps between checkpoints (0 = only at the end)
    log_every: int = 50  # steps between metrics.jsonl lines
    data_dir: str | None = None
    train_limit: int | None = None  # use only the first N training images (quick runs, tests)
    eval_limit: int | None = None  # evaluate on only the first N test images
    kernels: str | None = None  # auto | triton | torch; None = keep the library's choice ($VLAE_KERNELS, else auto)
    noise_seed: int | None = None  # draw the training noise eps on the CPU from this seed, the same on every kernel path
    data_options: dict = field(default_factory=dict)  # loader options (folder: image_size, color; svhn: extra)
    grad_clip: float = 0.0  # max global gradient norm; 0 = off (the authors do not clip)
    compile: bool = False  # torch.compile the step; off by default: see bench/README.md for when it pays
    precision: str = "fp32"  # fp32 | bf16 (autocast); fp32 by default: see bench/README.md
    recipe: str = "paper"  # the named recipe (recipes.py) whose defaults this run started from; a record only
    kl_anneal: str = "linear"  # linear: warmup = steps to reach 1; exp: 1 - exp(-t / warmup) (schedule.py)
    schedule: str = "plain"  # plain: every level from step 0; progressive: top level first (pro-VLAE, schedule.py)
    stage_steps: int | None = None  # progressive: steps between one level switching on and the next (0 = none); None = steps / L
    fade_steps: int | None = None  # progressive: steps over which a level's input fades in, 0 -> 1; None = stage / 4
    pre_kl: float = 0.5  # progressive: KL weight of the levels not yet switched on (keeps them at the prior)
    first_kl: float = 1.0  # progressive: a factor on the top level's KL weight during the first stage (it trains alone)
    first_levels: int = 1  # progressive: how many top levels train together in the first stage (schedule.py)
    input_noise: float = 0.0  # denoising: std of the Gaussian noise on the encoder's input (the target stays clean)
    kl_scale: tuple[float, ...] | None = None  # a fixed factor on each level's KL weight, bottom first (beta_l); None = 1
    free_bits: tuple[float, ...] | None = None  # nats per level its KL may hold at no cost, bottom first (schedule.py); None = 0
    kl_target: tuple[float, ...] | None = None  # nats per level its KL controller holds, bottom first; 0 = none (kl_control.py)
    kl_target_rate: float = 0.01  # the controller's step in log lambda per nat of error per training step
    kl_target_start: int = 0  # the step from which the controller moves; before it every lambda is 1
    top_lr: float = 1.0  # progressive: a factor on the lr of the top level's own modules once its stage is over (schedule.py)
    top_lr_scope: str = "all"  # all: --top-lr on the top's inference path and generator f_L; inference: on the path only
    first_target: str = "x"  # progressive: what the first stage reconstructs: x, deskew (x without its slant), normalize (and common width, stroke)
    level_warmup: float = 0.0  # progressive: > 0, each lower level's KL weight warms up anew from its start (schedule.py)
    lr_decay: str = "none"  # none | cosine: every group's lr falls along a half cosine to 0 at the last step (schedule.py)
    lr_decay_start: int = 0  # the step from which the decay runs
    gate_init: float | None = None  # gated_add join: the gate g's starting value in W(a + g b); None = the block's 0.1

    def __post_init__(self):
        if self.warmup is None:  # fixed now, so a resumed run with more --steps keeps the same schedule
            self.warmup = self.steps / 2 if self.kl_anneal == "linear" else self.steps / 6
        for name, value, allowed in (("kl-anneal", self.kl_anneal, ANNEALS), ("schedule", self.schedule, SCHEDULES),
                                     ("lr-decay", self.lr_decay, LR_DECAYS), ("top-lr-scope", self.top_lr_scope, TOP_LR_SCOPES),
                                     ("first-target", self.first_target, FIRST_TARGETS)):
            if value not in allowed:
                raise ConfigError(f"--{name} must be one of {', '.join(allowed)}; got {value!r}")
        if (self.stage_steps or 0) < 0 or (self.fade_steps or 0) < 0 or self.pre_kl < 0 or self.first_kl < 0:
            raise ConfigError(f"--stage-steps, --fade-steps, --pre-kl and --first-kl must be >= 0; got "
                              f"{self.stage_steps}, {self.fade_steps}, {self.pre_kl:g}, {self.first_kl:g}")
        if not 0 <= self.top_lr < float("inf"):
            raise ConfigError(f"--top-lr is a factor on the learning rate and must be >= 0; got {self.top_lr:g}")
        if self.top_lr != 1 and self.schedule != "progressive":
            raise ConfigError(f"--top-lr {self.top_lr:g} slows the top level once its stage of progressive training is "
                              "over; this run has no stages, so drop --top-lr or add --schedule progressive")
        if self.first_target != "x" and self.schedule != "progressive":
            raise ConfigError(f"--first-target {self.first_target} sets what the first stage of progressive training "
                              "reconstructs; this run has no stages, so drop --first-target or add --schedule progressive")
        if self.first_levels < 1:
            raise ConfigError(f"--first-levels is a number of levels and must be >= 1; got {self.first_levels}")
        if self.first_levels != 1 and self.schedule != "progressive":
            raise ConfigError(f"--first-levels {self.first_levels} sets how many levels the first stage of progressive "
                              "training trains; this run has no stages, so drop --first-levels or add --schedule progressive")
        if self.top_lr_scope != "all" and self.top_lr == 1:
            raise ConfigError(f"--top-lr-scope {self.top_lr_scope} says which of the top's modules --top-lr slows; "
                              "add --top-lr F (0 freezes them), or drop --top-lr-scope")
        if self.lr_decay != "none" and not 0 <= self.lr_decay_start < self.steps:
            raise ConfigError(f"--lr-decay-start {self.lr_decay_start} must be a step in the run, 0 to --steps - 1 "
                              f"({self.steps - 1}), so the decay has steps to run over")
        if self.level_warmup < 0:
            raise ConfigError(f"--level-warmup is a number of steps and must be >= 0; got {self.level_warmup:g}")
        if self.kl_target_start < 0:
            raise ConfigError(f"--kl-target-start is a step and must be >= 0; got {self.kl_target_start}")
        if not 0 < self.kl_target_rate < float("inf"):
            raise ConfigError(f"--kl-target-rate must be a number > 0; got {self.kl_target_rate:g}")
        if self.input_noise < 0:
            raise ConfigError(f"--input-noise is a standard deviation and must be >= 0; got {self.input_noise:g}")
        if self.gate_init is not None and not 0 < self.gate_init < float("inf"):
            raise ConfigError(f"--gate-init must be a number > 0 (at 0 the lower levels start cut off from the image); "
                              f"got {self.gate_init:g}")

    def resolve_stages(self, layers: int) -> None:
        """Fix the progressive stages for a model of `layers` levels and check its per-level options: by default L
        equal stages (the top level alone, then one more level each), each new level fading in over a quarter of a
        stage. A run shorter than L steps gets stages of 0 steps: every level on from the start."""
        if self.first_levels > 1 and self.first_levels >= layers:
            raise ConfigError(f"--first-levels {self.first_levels} would switch on all {layers} levels together in the first "
                              f"stage, which is no progressive training; give --first-levels 1 to {layers - 1}, or use "
                              "--schedule plain")
        if self.stage_steps is None:
            self.stage_steps = self.steps // layers
        if self.fade_steps is None:
            self.fade_steps = self.stage_steps // 4
        self.kl_scale = one_per_level(self.kl_scale, layers, "--kl-scale", ("factor", "factors"), "1")
        self.free_bits = one_per_level(self.free_bits, layers, "--free-bits", ("number of nats", "numbers"), "3")
        self.kl_target = one_per_level(self.kl_target, layers, "--kl-target", ("number of nats", "numbers"), "5")
        if self.kl_target is not None and not any(self.kl_target):
            self.kl_target = None  # every level 0: no controller
        both = [l for l, (b, t) in enumerate(zip(self.free_bits or (), self.kl_target or ()), 1) if b and t]
        if both:
            raise ConfigError(f"level {both[0]} has both --free-bits and --kl-target; a level's KL is either free up to a "
                              "budget or held at a target, so give it one of them (0 in the other)")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


def one_per_level(values, layers: int, option: str, what: tuple[str, str], example: str) -> tuple[float, ...] | None:
    """Exactly one number >= 0 per level as a tuple of floats (a resumed run's JSON gives a list); None stays None.
    what: the number's name, singular and plural, for the messages; example: one level's value in the hint."""
    if values is None:
        return None
    if len(values) != layers:
        raise ConfigError(f"{option} gives {len(values)} {what[1]} for {layers} levels; give one per level, bottom first "
                          f"(e.g. {','.join([example] * layers)})")
    values = tuple(float(b) for b in values)
    if min(values, default=-1) < 0:
        raise ConfigError(f"{option} needs one {what[0]} >= 0 per level; got {values}")
    return values

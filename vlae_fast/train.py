"""The one training loop, for every model: Adam on the negative ELBO with KL warm-up.

loss = mean_over_batch( -log r(x | z) + sum_l w_l(step) * KL_l ),   w_l = min(1, steps done / warmup)

The KL weight rises from 0 to 1 over the first `warmup` steps (appendix B.1 anneals it from 0 to 1;
linearly by default, or 1 - exp(-t / warmup)) and stays at 1 after, so a run ends on the true objective,
eq. 14, which is what it reports. Under progressive training (schedule.py) the levels switch on one by
one from the top, and a level not yet on pays its KL with a fixed small weight. With --kl-target a controller
(kl_control.py) multiplies a level's weight by lambda_l to hold its KL near a target.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from . import guards, host_memory, resume, rundir, schedule
from .checkpoint import CKPT_NAME, Checkpoint, save_checkpoint
from .config import TrainConfig
from .data import load_dataset
from .deskew import deskew
from .distributed import Processes
from .errors import ConfigError
from .eval import evaluate
from .eval.run import compact as eval_compact  # stored at the end, so `vlae eval` of a finished run is instant
from .kernels import set_backend
from .kl_control import KLControl
from .models import build_model
from .models.blocks import set_gates
from .normalize import normalize
from .progress import progress_bar, status
from .schedule import kl_weight
from .tblog import TensorBoardLog, require_tensorboard

FIRST_TARGETS = {"deskew": deskew, "normalize": normalize}  # --first-target: the first stage's image
STOP_POLL = 10  # under DDP, steps between checks for a stop request (each check all-reduces and syncs)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N]; got {name!r}")
    return torch.device(name)


def explicit_noise(seed: int, step: int, n: int, dims, device: torch.device) -> list[torch.Tensor]:
    """The z noise of `step`'s global batch drawn on the CPU from (seed, step) alone: one [n, d_l] draw per level.

    The same on every kernel path (so Triton and the reference can be compared step for step) and for
    any number of processes (each takes its shard), and a pure function of the step, so a resumed run
    replays it without saving generator state.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64)
    return [torch.randn(n, d, generator=g).to(device) for d in dims]


def epoch_permutation(epoch: int, n: int, seed: int) -> torch.Tensor:
    """The order of the n training images in `epoch`: a permutation drawn on the CPU from (seed, epoch)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def batch_indices(step: int, n: int, batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """The training batch of `step`: a fixed function of (seed, step), so any run can be resumed exactly.

    Each epoch is a fresh permutation of the n images (epoch_permutation); the last incomplete batch of
    an epoch is dropped. The loop draws the same batches through BatchOrder, which builds each epoch's
    permutation once.
    """
    epoch, i = divmod(step, n // batch_size)
    return epoch_permutation(epoch, n, seed)[i * batch_size : (i + 1) * batch_size].to(device)


class BatchOrder:
    """batch_indices(step, ...) for consecutive steps: the permutation is drawn once per epoch and copied to
    the device once, so a step only slices it there (no per-step permutation, no host-to-device copy)."""

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device):
        self.n, self.batch_size, self.seed, self.device = n, batch_size, seed, device
        self.epoch, self.perm = -1, None

    def __call__(self, step: int) -> torch.Tensor:
        epoch, i = divmod(step, self.n // self.batch_size)
        if epoch != self.epoch:
            self.epoch, self.perm = epoch, epoch_permutation(epoch, self.n, self.seed).to(self.device)
        return self.perm[i * self.batch_size : (i + 1) * self.batch_size]


def make_optimizer(model: nn.Module, lr: float, top_group: bool = False,
                   inference_only: bool = False) -> torch.optim.Optimizer:
    """Adam with the fused (one-kernel) update: faster than the per-parameter loop (bench/README.md), and it
    skips the whole update, moments and step count included, when its `found_inf` flag is set (guards.py).
    top_group: the top level's own parameters in a second group, whose lr the loop sets (--top-lr); inference_only:
    its inference path only, f_L stays in the first (--top-lr-scope inference)."""
    if not top_group:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True)
    top = model.top_level_parameters(inference_only)
    rest = [p for p in model.parameters() if all(p is not q for q in top)]
    return torch.optim.Adam([{"params": rest}, {"params": top}], lr=lr, fused=True)


def keep_fused(optimizer: torch.optim.Optimizer) -> None:
    """After loading a checkpoint written before the fused update (its param_groups say fused=False and its
    step counts live on the CPU): make the optimizer fused again, with its step counts beside the weights."""
    for group in optimizer.param_groups:
        group.update(fused=True, foreach=None)
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "step" in state:
                state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); elsewhere oneDNN emulates it, and the
    MNIST step took ~30 s in bf16 against ~0.5 s in fp32 on an AVX2-only EPYC (bench/README.md)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def make_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, guard: "guards.NonFiniteGuard",
              grad_clip: float = 0.0, precision: str = "fp32", compile: bool = False, input_noise: float = 0.0,
              free_bits: tuple[float, ...] | None = None):
    """The training step: step(x, w, eps, target=None) runs forward, backward, the non-finite guard and Adam and
    returns [loss, recon, KL_1 .. KL_L] (detached, on the device). w: the KL weight of each level, a [L] tensor (a
    float would recompile a compiled step whenever it changes). Nothing in it reads the device from the host.
    input_noise > 0: denoising, the encoder sees x + input_noise * N(0, I) and the decoder is scored on x.
    target: the image the reconstruction is scored on instead of x (--first-target); the encoder sees x.
    free_bits: nats per level whose KL costs nothing, max(KL_l, lambda_l) in the loss (schedule.py); the
    returned KL_l are the levels' own."""
    autocast = precision == "bf16"
    lam = None
    if free_bits is not None and any(free_bits):
        lam = torch.tensor(free_bits, dtype=torch.float32, device=next(model.parameters()).device)

    def step(x: torch.Tensor, w: torch.Tensor, eps: list[torch.Tensor] | None,
             target: torch.Tensor | None = None) -> torch.Tensor:
        x_in = x + input_noise * torch.randn_like(x) if input_noise > 0 else x
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
            out = net(x_in, eps)
            scored = x if target is None else target
            nll = model.recon_nll(scored, out.logits) if input_noise > 0 or target is not None else out.recon
        recon, kl = nll.float().mean(), out.kl.float().mean(0)  # kl: [L]
        loss = recon + (w * (kl if lam is None else torch.maximum(kl, lam))).sum()  # eq. 14, a weight on each KL
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        guard.check(model, loss, grad_clip)  # sets optimizer.found_inf: a non-finite step is skipped on the device
        optimizer.step()
        return torch.cat([loss.detach()[None], recon.detach()[None], kl.detach()])

    return torch.compile(step) if compile else step


def train(model_cfg, cfg: TrainConfig, out_dir: str | Path, show_progress: bool = True,
          start: Checkpoint | None = None, overwrite: bool = False, tensorboard_every: int = 0) -> dict:
    """Train a model described by `model_cfg` on cfg.dataset; write out_dir/ckpt.safetensors,
    out_dir/metrics.jsonl and out_dir/settings.toml. Returns the final test-set evaluation (see
    `evaluate`) plus timing.

    start: a checkpoint to continue from (see resume.plan_resume): its step, weights, optimizer and RNG
    state. SIGINT/SIGTERM save a checkpoint and raise TrainingStopped; so does a non-finite loss (without
    saving). Both messages say how to resume. A folder holding another run is refused unless `overwrite`
    (which deletes that run's files); the folder is created only once the data and model are ready.
    tensorboard_every: also log to out_dir/tensorboard/ (losses every log line, traversal grids every
    this many steps); 0 = off."""
    out_dir = Path(out_dir)
    if cfg.kl_anneal == "linear" and not 0 <= cfg.warmup <= cfg.steps:
        raise ConfigError(f"--warmup {cfg.warmup:g} must be between 0 and --steps {cfg.steps}, so the run ends on the "
                          "true objective (KL weight 1); lower --warmup or raise --steps")
    if cfg.kl_anneal == "exp" and not 0 <= 3 * cfg.warmup <= cfg.steps:
        raise ConfigError(f"--kl-anneal exp: --warmup {cfg.warmup:g} is the weight's time constant and must be at most "
                          f"--steps / 3 ({cfg.steps / 3:g}), so the run ends near the true objective (KL weight >= 0.95); "
                          "lower --warmup or raise --steps")
    if cfg.lr_decay != "none" and cfg.compile:  # here, not in TrainConfig: a resumed run may add --compile
        raise ConfigError("--lr-decay changes the learning rate every step, which would recompile a --compile'd step "
                          "each time; drop --compile or --lr-decay")
    cfg.resolve_stages(model_cfg.layers)  # before anything stores cfg: the run's stages and per-level options are fixed
    first_end = schedule.first_stage_end(cfg, model_cfg.layers)  # --first-target's and --first-kl's stage
    if cfg.schedule == "progressive":
        need = schedule.progressive_length(model_cfg.layers, cfg.stage_steps, cfg.fade_steps, cfg.first_levels)
        if cfg.steps < need:
            raise ConfigError(f"--schedule progressive switches the bottom level fully on only after {need} steps "
                              f"({model_cfg.layers - cfg.first_levels} x --stage-steps {cfg.stage_steps} + --fade-steps "
                              f"{cfg.fade_steps}); raise --steps to at least {need} or shorten the stages")
        last = cfg.steps - schedule.level_start(1, model_cfg.layers, cfg.stage_steps, cfg.first_levels)  # bottom's steps
        if cfg.level_warmup and (3 if cfg.kl_anneal == "exp" else 1) * cfg.level_warmup > last:
            raise ConfigError(f"--level-warmup {cfg.level_warmup:g}: the bottom level trains {last} steps, too few to "
                              f"end near its true KL weight (at least {'3 x ' if cfg.kl_anneal == 'exp' else ''}the "
                              "level warm-up); lower --level-warmup or --stage-steps, or raise --steps")
        if cfg.first_target != "x" and (model_cfg.image_shape[0] != 1 or first_end == 0):
            raise ConfigError(f"--first-target {cfg.first_target} reshapes grey images during the first stage; this "
                              f"run has {model_cfg.image_shape[0]}-channel images and a first stage of "
                              f"{first_end} steps: drop --first-target, or use grey images and --stage-steps > 0")
    if cfg.gate_init is not None and getattr(model_cfg, "join", None) != "gated_add":
        raise ConfigError(f"--gate-init {cfg.gate_init:g} sets the gate of the gated-add join; this {model_cfg.model} "
                          f"model joins by {getattr(model_cfg, 'join', 'no ladder join')}, so drop --gate-init or add "
                          "--join gated_add")
    device = resolve_device(cfg.device)
    procs = Processes.start(device)  # this process alone, or one of torchrun's
    device = procs.device
    if device.type == "cpu" and cfg.precision == "bf16" and not cpu_has_bf16():
        raise ConfigError("--precision bf16: this CPU has no bf16 instructions (AVX-512 BF16 or AMX), so every bf16 "
                          "matmul is emulated, ~60x slower than fp32 (bench/README.md); train with --precision fp32 "
                          "(the default) here, or bf16 on a GPU or a CPU that has them")
    if device.type == "cpu":
        host_memory.keep_freed_memory()  # no page faults on the step's buffers after the first step
    procs.check_batch(cfg.batch_size)
    if procs.main:
        rundir.check_run_dir(out_dir, overwrite, start.path if start else None)  # before any slow work
    if cfg.kernels is not None:
        set_backend(cfg.kernels)  # ConfigError for an unknown name, or triton where it is missing
    if tensorboard_every:
        require_tensorboard()  # before any slow work
    show_progress = show_progress and procs.main
    torch.manual_seed(cfg.seed)

    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, **cfg.data_options).head(cfg.train_limit)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.data_options).head(cfg.eval_limit)
    if tuple(model_cfg.image_shape) != train_set.image_shape:
        raise ConfigError(f"model expects images {model_cfg.image_shape} but {cfg.dataset} has {train_set.image_shape}")
    if len(train_set) < cfg.batch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training images")
    train_set = train_set.to(device)  # loaded once; batches are drawn by index on the device

    model = build_model(model_cfg).to(device)
    if cfg.schedule == "progressive" and not hasattr(model, "fade"):
        raise ConfigError(f"--schedule progressive fades ladder levels in; the {model_cfg.model} model has no "
                          "ladder, so use --schedule plain")
    if cfg.gate_init is not None:
        set_gates(model, cfg.gate_init)  # a resumed run's saved gates win
    if procs.main:  # rank 0 alone touches the run folder, once nothing before training can fail
        rundir.start_run_dir(out_dir, overwrite, start.path if start else None)
        rundir.write_settings(out_dir, model_cfg, cfg)
    tb = TensorBoardLog(out_dir, tensorboard_every) if tensorboard_every and procs.main else None
    net = procs.wrap(model)  # `model` itself for one process; before Adam, as the wrap may swap modules
    optimizer = make_optimizer(model, cfg.lr, top_group=cfg.top_lr != 1, inference_only=cfg.top_lr_scope == "inference")
    train_info = asdict(cfg)
    ckpt_path = out_dir / CKPT_NAME
    first, last_saved = 0, None
    if start is not None:  # after the model is built: its random init is then overwritten
        first = resume.restore(start, model, optimizer, cfg.lr)
        keep_fused(optimizer)
        last_saved = start.path
        if procs.main:
            resume.trim_metrics(out_dir / "metrics.jsonl", first)
            resume.remove_stale_temps(ckpt_path)
    procs.seed(cfg.seed, first, start.rng if start else None)  # every rank its own noise
    resume_hint = f"vlae train {cfg.dataset} --resume {out_dir}"
    log = open(out_dir / "metrics.jsonl" if procs.main else os.devnull, "a")  # rank 0 alone writes
    guard = guards.NonFiniteGuard(optimizer, device)
    step_fn = make_step(net, model, optimizer, guard, cfg.grad_clip, cfg.precision, cfg.compile, cfg.input_noise,
                        cfg.free_bits)
    order = BatchOrder(len(train_set), cfg.batch_size, cfg.seed, device)
    L = model_cfg.layers
    w_t = torch.zeros(L, device=device)  # the KL weight per level, refilled each step (no host read, no recompile)
    control = KLControl(cfg.kl_target, cfg.kl_target_rate, device) if cfg.kl_target else None
    if control is not None and start is not None:
        control.load(start.control, start.path)
    fade_t = getattr(model, "fade", None)  # the levels switched on are those with fade > 0; without fades, all
    all_on = torch.ones(L, dtype=torch.bool, device=device)
    held = [None, None]  # the weights and fades now on the device: refilled only when they change

    def check_guard(state: list[float] | None = None) -> None:
        """Raise the non-finite error if a step since the last check was not finite (state None: a sync point)."""
        bad = guard.tripped(state)
        if bad is not None:
            log.close()
            raise guards.non_finite(*bad, cfg.lr, cfg.grad_clip, last_saved, resume_hint)

    last: dict = {}
    t0 = time.perf_counter() - (resume.seconds_so_far(start) if start else 0.0)  # the curve's clock goes on
    model.train()
    with progress_bar(show_progress) as bar, guards.StopRequest() as stop:
        task = bar.add_task("train", total=cfg.steps, completed=first, stats="")
        for step in range(first, cfg.steps):
            x = train_set.batch(procs.shard(order(step)))  # [B / world, C, H, W]
            alphas, ws = schedule.weights(step, cfg, L)
            for new, old, dest in ((ws, held[0], w_t), (alphas, held[1], getattr(model, "fade", None))):
                if new != old and dest is not None:
                    for l, v in enumerate(new):
                        dest[l].fill_(v)  # a scalar fill: no host-device sync
            held = [ws, alphas]
            if cfg.top_lr != 1 or cfg.lr_decay != "none":  # group 1 (with --top-lr): the top level's own modules
                decay = schedule.lr_factor(step, cfg)
                for i, group in enumerate(optimizer.param_groups):
                    group["lr"] = cfg.lr * decay * (schedule.top_lr_factor(step, cfg, L) if i == 1 else 1.0)
            guard.step_t.fill_(step + 1)
            eps = None if cfg.noise_seed is None else [procs.shard(e) for e in explicit_noise(
                cfg.noise_seed, step, cfg.batch_size, model_cfg.latent_dims, device)]  # the global batch's noise
            target = FIRST_TARGETS[cfg.first_target](x) if cfg.first_target != "x" and step < first_end else None
            stats = step_fn(x, w_t if control is None else w_t * control.lam, eps, target)  # [loss, recon, KL_1 .. KL_L]
            figures = None  # the global batch's [loss, recon, KL_l]: one all-reduce a step at most, under DDP
            if control is not None and step >= cfg.kl_target_start:  # every rank the same lambda: from the global
                figures = procs.mean(stats)  # batch's KL
                control.update(figures[2:], fade_t > 0 if fade_t is not None else all_on)

            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps or done == 1:  # step 1: a first loss to see at once
                figures = procs.mean(stats) if figures is None else figures
                values = torch.cat([figures.double(), guard.state]).tolist()  # a CPU-GPU sync point: only on log steps
                check_guard(values[-4:])
                loss_v, recon_v, *kl_list = values[:-4]
                last = {"step": done, "loss": loss_v, "recon": recon_v, "kl": kl_list,
                        "kl_weight": kl_weight(step, cfg.warmup, cfg.kl_anneal), "seconds": round(time.perf_counter() - t0, 2)}
                if cfg.schedule == "progressive":
                    last.update(kl_weights=ws, fade=alphas)
                if cfg.lr_decay != "none":
                    last["lr"] = optimizer.param_groups[0]["lr"]
                if control is not None:
                    last["kl_lambda"] = control.lam.tolist()  # the controller's factor on each level's KL weight
                log.write(json.dumps(last) + "\n")
                log.flush()
                kl_txt = " ".join(f"KL{l}={v:.2f}" for l, v in enumerate(kl_list, 1))
                bar.update(task, stats=f"loss={last['loss']:.2f} recon={last['recon']:.2f} {kl_txt}")
                if tb is not None:
                    tb.log(last, model)
            bar.update(task, completed=done)
            stopping = stop.requested  # a Python flag: free for one process
            if procs.world > 1:  # all ranks stop at the same step; the all-reduce syncs, so poll every STOP_POLL steps
                stopping = (done % STOP_POLL == 0 or done == cfg.steps) and procs.any(stopping)
            if (cfg.save_every and done % cfg.save_every == 0 or stopping) and done < cfg.steps:
                check_guard()  # never save weights after a non-finite step
                rng = procs.rng_states(resume.rng_state())  # every rank's, gathered
                if procs.main:
                    save_checkpoint(ckpt_path, model, optimizer=optimizer, step=done, train=train_info,
                                    metrics={"train": last}, rng=rng, control=control and control.state())
                last_saved = str(ckpt_path)
            if stopping and done < cfg.steps:
                log.close()
                if tb is not None:
                    tb.close()
                procs.close()
                raise stop.stopped(done, cfg.steps, str(ckpt_path), resume_hint)
    seconds = time.perf_counter() - t0
    rng = procs.rng_states(resume.rng_state())
    if not procs.main:
        log.close()
        procs.close()
        return {"rank": procs.rank}
    with guards.StopRequest():  # all steps are done: a Ctrl-C now waits for the final checkpoint
        with status(f"evaluate on {len(test_set)} test images", show_progress):
            result = evaluate(model, test_set, seed=cfg.seed, discrete=True)
            summary = eval_compact(model, train_set, test_set, cfg.seed, limit=cfg.eval_limit, likelihood=dict(result))
        if tb is not None:
            tb.close(result, cfg.steps)
        result.update(train_seconds=round(seconds, 1), steps=cfg.steps, device=str(device))
        log.write(json.dumps({"step": cfg.steps, "test": result}) + "\n")
        log.close()
        save_checkpoint(ckpt_path, model, optimizer=optimizer, step=cfg.steps, train=train_info,
                        metrics={"train": last, "test": result, "eval": summary}, rng=rng,
                        control=control and control.state())
    procs.close()
    result["checkpoint"] = str(ckpt_path)
    return result

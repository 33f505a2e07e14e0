"""The one training loop, for every model: Adam on the negative ELBO with KL warm-up.

loss = mean_over_batch( -log r(x | z) + w(step) * sum_l KL_l ),   w = min(1, steps done / warmup)

The KL weight rises linearly from 0 to 1 over the first `warmup` steps (appendix B.1 anneals it from 0 to
1) and stays at 1 after, so every run ends on the true objective, eq. 14, which is what it reports.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import distributed, guards, resume
from .checkpoint import CKPT_NAME, Checkpoint, save_checkpoint
from .data import load_dataset
from .errors import ConfigError
from .eval import evaluate
from .eval.run import compact as eval_compact  # stored at the end, so `vlae eval` of a finished run is instant
from .kernels import set_backend
from .models import build_model
from .progress import progress_bar


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

    def __post_init__(self):
        if self.warmup is None:  # fixed now, so a resumed run with more --steps keeps the same schedule
            self.warmup = self.steps / 2


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but torch sees no CUDA GPU; use --device cpu or auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise ConfigError(f"--device must be auto, cpu or cuda[:N]; got {name!r}")
    return torch.device(name)


def explicit_noise(seed: int, step: int, rank: int, n: int, dims, device: torch.device) -> list[torch.Tensor]:
    """The z noise of `step` drawn on the CPU from (seed, step, rank) alone: one [n, d_l] draw per level.

    The same on every kernel path (so Triton and the reference can be compared step for step), and
    a pure function of the step, so a resumed run replays it without saving generator state.
    """
    g = torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)
    return [torch.randn(n, d, generator=g).to(device) for d in dims]


def kl_weight(step: int, warmup: float) -> float:
    """The KL weight of 0-based `step`: min(1, (step + 1) / warmup); exactly 1 from step warmup - 1 on."""
    return min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0


def batch_indices(step: int, n: int, batch_size: int, seed: int, device: torch.device) -> torch.Tensor:
    """The training batch of `step`: a fixed function of (seed, step), so any run can be resumed exactly.

    Each epoch is a fresh permutation of the n images (drawn on the CPU from a generator seeded with
    the seed and the epoch number); the last incomplete batch of an epoch is dropped.
    """
    per_epoch = n // batch_size
    epoch, i = divmod(step, per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm[i * batch_size : (i + 1) * batch_size].to(device)


def train(model_cfg, cfg: TrainConfig, out_dir: str | Path, show_progress: bool = True,
          start: Checkpoint | None = None) -> dict:
    """Train a model described by `model_cfg` on cfg.dataset; write out_dir/ckpt.safetensors and
    out_dir/metrics.jsonl. Returns the final test-set evaluation (see `evaluate`) plus timing.

    start: a checkpoint to continue from (see resume.plan_resume): its step, weights, optimizer and RNG
    state. SIGINT/SIGTERM save a checkpoint and raise TrainingStopped; so does a non-finite loss (without
    saving). Both messages say how to resume."""
    out_dir = Path(out_dir)
    if not 0 <= cfg.warmup <= cfg.steps:
        raise ConfigError(f"--warmup {cfg.warmup:g} must be between 0 and --steps {cfg.steps}, so the run ends on the "
                          "true objective (KL weight 1); lower --warmup or raise --steps")
    device = resolve_device(cfg.device)
    rank, device = distributed.setup(device)  # one process, or one of torchrun's
    distributed.check_batch(cfg.batch_size, rank)
    try:
        if rank.main:  # rank 0 alone touches the run folder
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "metrics.jsonl").touch()
    except OSError as e:
        raise ConfigError(f"--out {out_dir}: cannot write there ({e.strerror}); choose another folder") from None
    if cfg.kernels is not None:
        set_backend(cfg.kernels)  # ConfigError for an unknown name, or triton where it is missing
    show_progress = show_progress and rank.main
    torch.manual_seed(cfg.seed)

    train_set = load_dataset(cfg.dataset, "train", cfg.data_dir, **cfg.data_options).head(cfg.train_limit)
    test_set = load_dataset(cfg.dataset, "test", cfg.data_dir, **cfg.data_options).head(cfg.eval_limit)
    if tuple(model_cfg.image_shape) != train_set.image_shape:
        raise ConfigError(f"model expects images {model_cfg.image_shape} but {cfg.dataset} has {train_set.image_shape}")
    if len(train_set) < cfg.batch_size:
        raise ConfigError(f"--batch-size {cfg.batch_size} is larger than the {len(train_set)} training images")
    train_set = train_set.to(device)  # loaded once; batches are drawn by index on the device

    model = build_model(model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    train_info = asdict(cfg)
    ckpt_path = out_dir / CKPT_NAME
    first, last_saved = 0, None
    if start is not None:  # after the model is built: its random init is then overwritten
        first = resume.restore(start, model, optimizer, cfg.lr)
        last_saved = start.path
        if rank.main:
            resume.trim_metrics(out_dir / "metrics.jsonl", first)
            resume.remove_stale_temps(ckpt_path)
    net = distributed.wrap(model, rank, device)  # `model` itself for one process
    if rank.world > 1 and not (start and distributed.restore_rank_rng(start.rng, rank, device)):
        torch.manual_seed(cfg.seed * 1_000_003 + first * 1009 + rank.rank + 1)  # every rank its own noise
    resume_hint = f"vlae train {cfg.dataset} --resume {out_dir}"
    log = open(out_dir / "metrics.jsonl" if rank.main else os.devnull, "a")  # rank 0 alone writes
    last: dict = {}
    t0 = time.perf_counter() - (resume.seconds_so_far(start) if start else 0.0)  # the curve's clock goes on
    model.train()
    with progress_bar(show_progress) as bar, guards.StopRequest() as stop:
        task = bar.add_task("train", total=cfg.steps, completed=first, stats="")
        for step in range(first, cfg.steps):
            idx = batch_indices(step, len(train_set), cfg.batch_size, cfg.seed, device)
            x = train_set.batch(distributed.shard(idx, rank))  # [B / world, C, H, W]
            w = kl_weight(step, cfg.warmup)
            eps = None if cfg.noise_seed is None else explicit_noise(cfg.noise_seed, step, rank.rank, len(x),
                                                                     model_cfg.latent_dims, device)
            out = net(x, eps)
            recon, kl = out.recon.mean(), out.kl.mean(0)  # kl: [L]
            loss = recon + w * kl.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            bad_norm = guards.clip_and_check(model, loss, cfg.grad_clip)
            if bad_norm is not None:
                log.close()
                raise guards.non_finite(step + 1, loss.item(), bad_norm, cfg.lr, cfg.grad_clip, last_saved, resume_hint)
            optimizer.step()

            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                figures = distributed.mean_over_ranks(torch.cat([loss.detach()[None], recon.detach()[None], kl.detach()]), rank)
                loss_v, recon_v, *kl_list = figures.tolist()  # a CPU-GPU sync point: only every log_every steps
                last = {"step": done, "loss": loss_v, "recon": recon_v, "kl": kl_list,
                        "kl_weight": w, "seconds": round(time.perf_counter() - t0, 2)}
                log.write(json.dumps(last) + "\n")
                log.flush()
                kl_txt = " ".join(f"KL{l}={v:.2f}" for l, v in enumerate(kl_list, 1))
                bar.update(task, stats=f"loss={last['loss']:.2f} recon={last['recon']:.2f} {kl_txt}")
            bar.update(task, completed=done)
            stopping = distributed.any_rank(stop.requested, rank, device)  # all ranks stop at the same step
            if (cfg.save_every and done % cfg.save_every == 0 or stopping) and done < cfg.steps:
                rng = distributed.rng_states(rank, device, resume.rng_state())  # every rank's, gathered
                if rank.main:
                    save_checkpoint(ckpt_path, model, optimizer=optimizer, step=done, train=train_info,
                                    metrics={"train": last}, rng=rng)
                last_saved = str(ckpt_path)
            if stopping and done < cfg.steps:
                log.close()
                distributed.teardown(rank)
                raise stop.stopped(done, cfg.steps, str(ckpt_path), resume_hint)
    seconds = time.perf_counter() - t0
    rng = distributed.rng_states(rank, device, resume.rng_state())
    if not rank.main:
        log.close()
        distributed.teardown(rank)
        return {"rank": rank.rank}
    with guards.StopRequest():  # all steps are done: a Ctrl-C now waits for the final checkpoint
        result = evaluate(model, test_set, seed=cfg.seed, discrete=True)
        summary = eval_compact(model, train_set, test_set, cfg.seed, limit=cfg.eval_limit, likelihood=dict(result))
        result.update(train_seconds=round(seconds, 1), steps=cfg.steps, device=str(device))
        log.write(json.dumps({"step": cfg.steps, "test": result}) + "\n")
        log.close()
        save_checkpoint(ckpt_path, model, optimizer=optimizer, step=cfg.steps, train=train_info,
                        metrics={"train": last, "test": result, "eval": summary}, rng=rng)
    distributed.teardown(rank)
    result["checkpoint"] = str(ckpt_path)
    return result

"""Data-parallel training across processes started by torchrun (DistributedDataParallel).

`torchrun --nproc-per-node N -m vlae_fast.cli train mnist ...` starts N copies of the one training
loop. Each draws the same global batch batch_indices(step, ...) and keeps its own contiguous shard of
B / N images; DDP averages the gradients, so a step equals one step on the whole batch. Batch-norm
statistics are computed over the whole global batch (SyncBatchNorm on CUDA, AllReduceBatchNorm below
on CPU, where torch's SyncBatchNorm refuses to run), without which each rank would normalise with its
own shard's statistics and the run would differ from a single-process one. Rank 0 alone writes
checkpoints and metrics.jsonl. Backend: nccl on CUDA, gloo on CPU.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError


class Processes:
    """The processes this run is part of: this one alone, or one of torchrun's N. The training loop holds
    one and asks it only what it needs; for one process every method is the identity or a no-op.

        procs = Processes.start(device)     join torchrun's group (if any); procs.device is this rank's device
        net = procs.wrap(model)             before the optimizer is built: the wrap may replace modules
        x = batch(procs.shard(idx))         this rank's slice of the global batch
        procs.mean(figures), procs.any(flag), procs.rng_states(own), procs.close()
    """

    def __init__(self, rank: int = 0, world: int = 1, local_rank: int = 0, device: torch.device | None = None):
        self.rank, self.world, self.local_rank = rank, world, local_rank
        self.device = torch.device("cpu") if device is None else device

    @classmethod
    def start(cls, device: torch.device) -> "Processes":
        """Join the process group torchrun describes ($WORLD_SIZE, $RANK, $LOCAL_RANK), or one already
        initialised; a single process joins nothing. On CUDA each process takes GPU $LOCAL_RANK."""
        if not dist.is_initialized():
            if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
                return cls(device=device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)  # one GPU per process
            torch.cuda.set_device(device)
        return cls(rank, world, local_rank, device)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes the run folder and reports."""
        return self.rank == 0

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.world:
            raise ConfigError(f"--batch-size {batch_size} does not split evenly over {self.world} processes; "
                              f"use a multiple of {self.world}")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The module the loop calls: `model` itself for one process, else DDP over it with batch norms that
        synchronise. Build the optimizer after this, on model.parameters(). `model` keeps its state_dict keys."""
        if self.world == 1:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            model = convert_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def shard(self, t: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch (indices, noise): [B, ...] -> [B / world, ...]."""
        per = t.shape[0] // self.world
        return t[self.rank * per : (self.rank + 1) * per]

    def mean(self, t: Tensor) -> Tensor:
        """The average of a tensor over ranks (the global batch's figures for the log); itself for one process."""
        if self.world == 1:
            return t
        t = t.detach().clone()
        dist.all_reduce(t)
        return t / self.world

    def any(self, flag: bool) -> bool:
        """True on every rank if it is True on any: all ranks stop at the same step after a signal."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)  # a host sync: every rank waits for the others here
        return bool(t.item() > 0)

    def seed(self, seed: int, step: int, saved: dict[str, Tensor] | None) -> None:
        """Give every rank its own noise stream: the rank's saved generator state when `saved` (a checkpoint's
        RNG states) was written with this many ranks, else a fresh seed from (seed, step, rank). One process
        keeps the stream train() seeded (and a resume restored)."""
        if self.world == 1:
            return
        if saved and f"rank{self.world - 1}.cpu" in saved and f"rank{self.world}.cpu" not in saved:
            torch.set_rng_state(saved[f"rank{self.rank}.cpu"].to(torch.uint8))
            if self.device.type == "cuda" and f"rank{self.rank}.cuda" in saved:
                torch.cuda.set_rng_state(saved[f"rank{self.rank}.cuda"].to(torch.uint8), self.device)
            return
        torch.manual_seed(seed * 1_000_003 + step * 1009 + self.rank + 1)

    def rng_states(self, own: dict[str, Tensor]) -> dict[str, Tensor]:
        """Every rank's generator states, for rank 0 to save: `own` (this rank's, from resume.rng_state) for
        one process, else 'rank<r>.cpu' (and 'rank<r>.cuda') for each rank r, gathered as uint8 tensors (no
        pickling). A collective: every rank calls it at the same step."""
        if self.world == 1:
            return own
        states = {"cpu": own["cpu"]}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        out = {}
        for key, s in states.items():
            s = s.to(self.device)
            parts = [torch.empty_like(s) for _ in range(self.world)]
            dist.all_gather(parts, s)
            out.update({f"rank{r}.{key}": p.cpu() for r, p in enumerate(parts)})
        return out

    def close(self) -> None:
        """Leave the group once rank 0 has finished writing; nothing for one process."""
        if self.world > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class AllReduceBatchNorm(_BatchNorm):
    """Batch norm whose training statistics cover the whole global batch (every rank's shard); works on
    any device and backend (gloo included). The sums travel through a differentiable all-reduce, so the
    backward pass also flows between ranks, as in torch's SyncBatchNorm.

        mean = sum_ranks sum x / N,   var = sum_ranks sum x^2 / N - mean^2   (N = global count per channel)
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-d input; got {x.dim()}-d")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        C = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = [1, C] + [1] * (x.dim() - 2)
        n_local = x.new_full((1,), x.numel() // C)
        stats = _AllReduceSum.apply(torch.cat([x.sum(dims), x.square().sum(dims), n_local]))  # [2C + 1]
        n = stats[-1]
        mean = stats[:C] / n
        var = (stats[C : 2 * C] / n - mean.square()).clamp_min(0.0)  # biased, as batch norm normalises
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean, m)
                self.running_var.lerp_(var * n / (n - 1).clamp_min(1.0), m)  # unbiased, as torch keeps it
                self.num_batches_tracked.add_(1)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y


def convert_batchnorm(module: nn.Module) -> nn.Module:
    """Every BatchNorm*d in `module` replaced by an AllReduceBatchNorm holding the very same Parameter and
    buffer objects (as torch's convert_sync_batchnorm does), so an optimizer built on the model before the
    swap still steps the scale and shift; same state_dict keys, so checkpoints load either way."""
    if isinstance(module, _BatchNorm):
        bn = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, affine=False,
                                track_running_stats=False)
        bn.affine, bn.track_running_stats = module.affine, module.track_running_stats
        bn.weight, bn.bias = module.weight, module.bias  # Parameters (or None without affine)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            bn.register_buffer(name, getattr(module, name))
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def launch(nproc: int, argv: list[str]) -> int:
    """`vlae train --nproc N ...`: run the same command under torchrun with N processes on this machine
    (--nproc dropped from argv); returns torchrun's exit code."""
    import subprocess
    import sys

    args, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            args.append(a)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "vlae_fast.cli", *args]
    try:
        return subprocess.call(cmd)
    except KeyboardInterrupt:  # torchrun forwards Ctrl-C to the ranks, which save and stop
        return 130

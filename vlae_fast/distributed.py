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
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from .errors import ConfigError


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup(device: torch.device) -> tuple[Dist, torch.device]:
    """Join the process group torchrun describes ($WORLD_SIZE, $RANK, $LOCAL_RANK), or one already
    initialised; one process is a no-op. Returns the rank info and this rank's device."""
    if not dist.is_initialized():
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return Dist(), device
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    d = Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)  # one GPU per process
        torch.cuda.set_device(device)
    return d, device


def teardown(d: Dist) -> None:
    if d.world > 1 and dist.is_initialized():
        dist.barrier()  # rank 0 has finished writing before anyone exits
        dist.destroy_process_group()


def check_batch(batch_size: int, d: Dist) -> None:
    if batch_size % d.world:
        raise ConfigError(f"--batch-size {batch_size} does not split evenly over {d.world} processes; "
                          f"use a multiple of {d.world}")


def shard(idx: Tensor, d: Dist) -> Tensor:
    """This rank's contiguous slice of the global batch's indices: [B] -> [B / world]."""
    per = idx.shape[0] // d.world
    return idx[d.rank * per : (d.rank + 1) * per]


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
    """Every BatchNorm*d in `module` replaced by an AllReduceBatchNorm with the same parameters and buffers
    (same state_dict keys, so checkpoints load either way)."""
    if isinstance(module, _BatchNorm):
        like = next(iter(module.state_dict().values()), torch.empty(0))  # device and dtype to keep
        bn = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats, device=like.device, dtype=like.dtype)
        bn.load_state_dict(module.state_dict())
        bn.train(module.training)
        return bn
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child))
    return module


def wrap(model: nn.Module, d: Dist, device: torch.device) -> nn.Module:
    """The module the loop calls: `model` itself for one process, else DDP over a copy of it whose batch
    norms synchronise. `model` keeps its own state_dict keys for checkpoints (DDP adds no prefix to it)."""
    if d.world == 1:
        return model
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    else:
        model = convert_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(net: nn.Module) -> nn.Module:
    return net.module if isinstance(net, nn.parallel.DistributedDataParallel) else net


def mean_over_ranks(t: Tensor, d: Dist) -> Tensor:
    """The average of a tensor over ranks (for logging the global loss); itself for one process."""
    if d.world == 1:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / d.world


def any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    """True on every rank if it is True on any: all ranks stop at the same step after a signal."""
    if d.world == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


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


def rng_states(d: Dist, device: torch.device, own: dict[str, Tensor]) -> dict[str, Tensor]:
    """Every rank's generator states, for rank 0 to save: `own` (this rank's, from resume.rng_state) for
    one process, else 'rank<r>.cpu' (and 'rank<r>.cuda') for each rank r, gathered as uint8 tensors (no
    pickling). A collective: every rank calls it at the same step."""
    if d.world == 1:
        return own
    states = {"cpu": own["cpu"]}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    out = {}
    for key, s in states.items():
        s = s.to(device)
        parts = [torch.empty_like(s) for _ in range(d.world)]
        dist.all_gather(parts, s)
        out.update({f"rank{r}.{key}": p.cpu() for r, p in enumerate(parts)})
    return out


def restore_rank_rng(states: dict[str, Tensor], d: Dist, device: torch.device) -> bool:
    """Set this rank's generators from a checkpoint written with the same number of ranks; False if it
    holds none for this rank (then the caller seeds them afresh)."""
    if d.world == 1 or f"rank{d.world - 1}.cpu" not in states or f"rank{d.world}.cpu" in states:
        return False
    torch.set_rng_state(states[f"rank{d.rank}.cpu"].to(torch.uint8))
    if device.type == "cuda" and f"rank{d.rank}.cuda" in states:
        torch.cuda.set_rng_state(states[f"rank{d.rank}.cuda"].to(torch.uint8), device)
    return True

"""One training step (forward, backward, Adam) of the library against plain eager PyTorch, side by side.

    python bench/train_step.py                                   # every case, every variant, JSON + table
    python bench/train_step.py --cases mnist-b100 --steps 40     # one case, more steps
    python bench/train_step.py --variants eager-plain,lib-default --no-memory

Variants (one setup per case serves all of them; rows that do not apply on this device say why):
    eager-plain       bench/plain_vlae.py: the MNIST VLAE as a user would write it (nn.Sequential, torch.cat,
                      textbook reparameterisation and KL, default torch.optim.Adam); MNIST VLAE cases only
    lib-before        the library as it was before issue 12: the ladder join's PyTorch path as two matmuls on
                      the weight's column slices, the per-parameter Adam loop, and the NaN guard reading the
                      gradient norm with .item() every step
    lib-adam-loop     lib-before with today's ladder join: isolates the join fix (vs lib-before) and the fused,
                      sync-free Adam + guard (vs lib-default)
    lib-torch         the library's step (vlae_fast.train.make_step) with --kernels torch
    lib-default       the library's step as `vlae train` runs it by default on this device
    lib-system-malloc CPU only: lib-default without vlae_fast.host_memory (glibc's default mmap/munmap of large
                      buffers, so each step's buffers are faulted in again); isolates that setting
    lib-bf16          lib-default under bf16 autocast (--precision bf16)
    lib-compile       torch.compile of the library's step (--compile): forward + backward + guard + Adam
    lib-triton        CUDA only: the fused Triton ops (--kernels triton)
    lib-cudagraph     CUDA only: the whole step captured in one CUDA graph and replayed

Timing: every variant runs in its own worker process (so process-wide settings such as the library's host
malloc setting, which `vlae train` applies on CPUs, apply to the variants that have them and to no other),
and one step of each (and one large sgemm in this process) runs per round, round-robin, so a loaded machine
slows them alike and the ratios stay fair; the first --warmup rounds (compilation, autotuning, Adam's state)
are not counted. Per variant: median and 20/80 % quantiles of the step time, images/s, achieved GFLOP/s
= counted FLOPs of one step / median time (FLOPs of forward + backward counted once per case with
torch.utils.flop_counter, the same figure for every variant, so GFLOP/s ratios are speed ratios), that
as a fraction of the measured sgemm ceiling (median GFLOP/s of an N x N x N float32 matmul timed in the
same rounds), and peak memory: max_memory_allocated on CUDA; on the CPU the peak RSS (VmHWM) of the
variant's worker process.

Writes bench/results/<device>-train.json (rows + CPU model and flags, load average, versions, date) and
prints the markdown table that bench/README.md keeps.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import re
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from plain_vlae import PlainVLAE, plain_step  # noqa: E402

from vlae_fast import guards, host_memory  # noqa: E402
from vlae_fast.kernels import use_backend  # noqa: E402
from vlae_fast.kernels.ladder_linear import apply_activation  # noqa: E402
from vlae_fast.models import blocks  # noqa: E402
from vlae_fast.kernels._triton import HAVE_TRITON  # noqa: E402
from vlae_fast.models import build_model, default_config  # noqa: E402
from vlae_fast.train import cpu_has_bf16, make_optimizer, make_step  # noqa: E402

CASES = {  # name -> (data set, model, batch, default timed steps)
    "mnist-b100": ("mnist", "vlae", 100, 30),
    "mnist-b1024": ("mnist", "vlae", 1024, 8),
    "hvae-b100": ("mnist", "hvae", 100, 20),
    "svhn-b100": ("svhn", "vlae", 100, 8),
    "celeba-b100": ("celeba", "vlae", 100, 4),
}
VARIANTS = ("eager-plain", "lib-before", "lib-adam-loop", "lib-torch", "lib-default", "lib-system-malloc", "lib-bf16",
            "lib-compile", "lib-triton", "lib-cudagraph")
AS_TRAIN_RUNS = ("lib-torch", "lib-default", "lib-bf16", "lib-compile", "lib-triton", "lib-cudagraph")  # host malloc as in train()
LR = 2e-4


def cpu_info() -> dict:
    info = {"model": platform.processor() or "unknown", "flags": [], "cores": os.cpu_count()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
        f = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        info["model"] = m.group(1).strip() if m else info["model"]
        flags = f.group(1).split() if f else []
        info["flags"] = [x for x in flags if re.match(r"avx|amx|fma|sse4|f16c", x)]  # the ones matmul speed depends on
    except OSError:
        pass
    return info


def device_slug(device: torch.device) -> str:
    """e.g. nvidia-h200, cpu-amd-epyc-avx512: CPUs sold under one name differ in their widest vector unit
    (this project has seen AVX2-only and AVX-512 EPYCs), and that sets the matmul ceiling."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        info = cpu_info()
        isa = "avx512" if "avx512f" in info["flags"] else "avx2" if "avx2" in info["flags"] else ""
        name = f"cpu-{info['model']}-{isa}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Variant:
    """One row: setup() builds its own model and optimizer; step() runs one training step."""

    def __init__(self, name: str, case: str, device: torch.device):
        self.name, self.case, self.device = name, case, device
        self.skip = self.skip_reason()
        self.times: list[float] = []
        self.peak = 0
        self.first_step_s = None

    def skip_reason(self) -> str | None:
        dataset, model, _, _ = CASES[self.case]
        cuda = self.device.type == "cuda"
        if self.name == "eager-plain" and (dataset, model) != ("mnist", "vlae"):
            return "bench/plain_vlae.py is the MNIST VLAE only"
        if self.name == "lib-system-malloc" and cuda:
            return "skipped: the host malloc setting is for CPU runs"
        if self.name in ("lib-triton", "lib-cudagraph") and not cuda:
            return "skipped: no CUDA device (Triton kernels and CUDA graphs need one)"
        if self.name == "lib-triton" and not HAVE_TRITON:
            return "skipped: triton is not installed"
        if self.name == "lib-bf16" and not cuda and not torch.backends.mkldnn.is_available():
            return "skipped: no oneDNN for bf16 on this CPU build"
        if self.name == "lib-bf16" and not cuda and not cpu_has_bf16():
            return "skipped: this CPU has no native bf16 (AVX-512 BF16 / AMX): emulated, ~30 s a step"
        return None

    def setup(self, x: torch.Tensor) -> None:
        dataset, model_name, _, _ = CASES[self.case]
        torch.manual_seed(0)
        self.x = x
        if self.name == "eager-plain":
            self.model = PlainVLAE().to(self.device)
            self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)  # what a user writes: the default Adam
            self.run = lambda: plain_step(self.model, self.opt, self.x)
            return
        self.model = build_model(default_config(dataset, model_name)).to(self.device)
        self.model.train()
        self.w = torch.tensor(0.5, device=self.device)
        self.backend = {"lib-torch": "torch", "lib-triton": "triton"}.get(self.name)
        if self.name in ("lib-before", "lib-adam-loop"):
            self.opt = torch.optim.Adam(self.model.parameters(), lr=LR)
            self.run = self.step_before
            if self.name == "lib-before":
                self.patch = (blocks, "ladder_linear", ladder_linear_slices)
            return
        self.opt = make_optimizer(self.model, LR)
        if self.name == "lib-cudagraph":
            for group in self.opt.param_groups:
                group["capturable"] = True  # Adam refuses capture otherwise; lr and step stay on the device
        self.guard = guards.NonFiniteGuard(self.opt, self.device)
        step = make_step(self.model, self.model, self.opt, self.guard, precision="bf16" if self.name == "lib-bf16" else "fp32",
                         compile=self.name == "lib-compile")
        self.run = (lambda: step(self.x, self.w, None)) if self.name != "lib-cudagraph" else self.capture(step)

    def step_before(self) -> torch.Tensor:
        """The loop body of vlae_fast/train.py before issue 12 (the guard's .item() every step)."""
        out = self.model(self.x)
        recon, kl = out.recon.mean(), out.kl.mean(0)
        loss = recon + 0.5 * kl.sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        if not (torch.isfinite(loss.detach()) & torch.isfinite(norm)).item():  # the sync point
            raise RuntimeError("non-finite step")
        self.opt.step()
        return loss.detach()

    def capture(self, step):
        """The whole step in one CUDA graph: warm up on a side stream (Adam builds its state), capture, replay."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(3):
                step(self.x, self.w, None)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step(self.x, self.w, None)
        return graph.replay

    def step(self) -> None:
        patch = getattr(self, "patch", None)
        if patch:
            module, name, fn = patch
            patch = (module, name, getattr(module, name))
            setattr(module, name, fn)
        try:
            with use_backend(self.backend) if getattr(self, "backend", None) else _null():
                self.run()
        finally:
            if patch:
                setattr(*patch)


def ladder_linear_slices(a, b, weight, bias=None, activation=None):
    """The ladder join's PyTorch path before issue 12: two matmuls on the weight's column slices (autograd then
    zero-fills a full-size weight gradient and copies each slice's gradient into it)."""
    Da = a.shape[1]
    y = a @ weight[:, :Da].t() + b @ weight[:, Da:].t()
    if bias is not None:
        y = y + bias
    return apply_activation(y, activation)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def count_flops(case: str, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward of the library's model (matmuls and convolutions)."""
    from torch.utils.flop_counter import FlopCounterMode

    dataset, model_name, _, _ = CASES[case]
    torch.manual_seed(0)
    model = build_model(default_config(dataset, model_name)).to(x.device)
    with use_backend("torch"), FlopCounterMode(display=False) as counter:
        out = model(x)
        (out.recon.mean() + out.kl.sum(1).mean()).backward()
    return counter.get_total_flops()


def peak_rss_mib() -> float:
    """This process's peak RSS. Linux: VmHWM (ru_maxrss would carry the parent's peak across fork + exec)."""
    try:
        return int(re.search(r"VmHWM:\s*(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_input(case: str, device: torch.device) -> torch.Tensor:
    dataset, model_name, batch, _ = CASES[case]
    shape = default_config(dataset, model_name).image_shape
    return torch.rand(batch, *shape, generator=torch.Generator().manual_seed(1)).to(device)


def worker(conn, case: str, name: str, device: str, threads: int) -> None:
    """One variant in its own process: set up, answer "ready" with its parameter count, then time one step per
    "step" message (returns seconds and the CUDA peak) until "done" (returns the peak RSS in MiB)."""
    torch.set_num_threads(threads)
    device = torch.device(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    elif name in AS_TRAIN_RUNS:
        host_memory.keep_freed_memory()  # what train() does on a CPU
    try:  # a variant that fails (a capture the device refuses, say) becomes a row saying so; the others go on
        v = Variant(name, case, device)
        v.setup(make_input(case, device))
    except Exception as e:
        conn.send(failed("set-up", e))
        return
    conn.send(sum(p.numel() for p in v.model.parameters()))
    while conn.recv() == "step":
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            sync(device)
            t = time.perf_counter()
            v.step()
            sync(device)
        except Exception as e:
            conn.send(failed("a step", e))
            return
        conn.send((time.perf_counter() - t, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0))
    conn.send(peak_rss_mib())


def failed(where: str, e: Exception) -> tuple[str, str]:
    """What a worker sends instead of a result when its variant raised: ("failed", the row's reason)."""
    return "failed", f"failed in {where}: {type(e).__name__}: {e}"[:300]


def is_failure(answer) -> bool:
    return isinstance(answer, tuple) and len(answer) == 2 and answer[0] == "failed"


def run_case(case: str, names: list[str], device: torch.device, steps: int, warmup: int, n_gemm: int,
             memory: bool) -> dict:
    _, _, batch, _ = CASES[case]
    x = make_input(case, device)
    flops = count_flops(case, x)
    variants = [Variant(n, case, device) for n in names]
    live = [v for v in variants if v.skip is None]
    ctx = mp.get_context("spawn")  # a fresh interpreter per variant (CUDA cannot fork)
    for v in live:  # set up one after the other, so the set-ups do not compete
        v.conn, child = ctx.Pipe()
        v.proc = ctx.Process(target=worker, args=(child, case, v.name, str(device), torch.get_num_threads()), daemon=True)
        v.proc.start()
        v.params = v.conn.recv()
        if is_failure(v.params):
            v.skip = v.params[1]
    live = [v for v in live if v.skip is None]
    counts = {v.name: v.params for v in live if v.name in ("eager-plain", "lib-default")}
    if len(counts) == 2:
        assert len(set(counts.values())) == 1, f"not the same network: parameter counts {counts}"
    a = torch.randn(n_gemm, n_gemm, device=device)
    b = torch.randn(n_gemm, n_gemm, device=device)
    c = torch.empty(n_gemm, n_gemm, device=device)
    gemm_times = []
    for r in range(warmup + steps):
        for v in list(live):
            v.conn.send("step")
            answer = v.conn.recv()
            if is_failure(answer):
                v.skip = answer[1]
                live.remove(v)
                continue
            dt, peak = answer
            if r == 0:
                v.first_step_s = dt
            if r >= warmup:
                v.times.append(dt)
            v.peak = max(v.peak, peak)
        sync(device)
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        sync(device)
        if r >= warmup:
            gemm_times.append(time.perf_counter() - t)
        print(f"  {case} round {r + 1}/{warmup + steps}", file=sys.stderr, end="\r")
    for v in live:
        v.conn.send("done")
        rss = v.conn.recv()
        v.proc.join()
        if device.type != "cuda":
            v.peak = rss * 2**20
    gemm_gflops = 2 * n_gemm**3 / statistics.median(gemm_times) / 1e9
    plain = next((v for v in live if v.name == "eager-plain"), None)
    base = statistics.median(plain.times) if plain else None
    rows = []
    for v in variants:
        row = {"variant": v.name}
        if v.skip:
            rows.append({**row, "skipped": v.skip})
            continue
        t = sorted(v.times)
        med = statistics.median(t)
        q = statistics.quantiles(t, n=5) if len(t) >= 2 else [med] * 4
        row.update(median_ms=1e3 * med, q20_ms=1e3 * q[0], q80_ms=1e3 * q[3], min_ms=1e3 * t[0], max_ms=1e3 * t[-1],
                   steps=len(t), first_step_s=v.first_step_s, images_per_s=batch / med, gflops=flops / med / 1e9,
                   frac_sgemm=flops / med / 1e9 / gemm_gflops, speedup_vs_plain=base / med if base else None)
        if memory:
            row["peak_mem_mib"] = v.peak / 2**20
        rows.append(row)
    params = sum(p.numel() for p in build_model(default_config(*CASES[case][:2])).parameters())
    return {"case": case, "date": time.strftime("%Y-%m-%d %H:%M %Z"), "threads": torch.get_num_threads(),
            "loadavg": list(os.getloadavg()), "batch": batch, "params": params, "flops_per_step": flops, "sgemm_n": n_gemm,
            "sgemm_gflops": gemm_gflops, "rows": rows}


def ms(t: float) -> str:
    """Milliseconds to three figures or more: a GPU step of ~2 ms reads 2.14, a CPU step 419."""
    return f"{t:.0f}" if t >= 100 else f"{t:.1f}" if t >= 10 else f"{t:.2f}"


def table(result: dict) -> str:
    lines = ["| case | variant | median ms (20-80 %) | images/s | GFLOP/s | of sgemm | vs plain | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for c in result["cases"]:
        for r in c["rows"]:
            if "skipped" in r:
                lines.append(f"| {c['case']} | {r['variant']} | {r['skipped']} | | | | | |")
                continue
            vs = f"{r['speedup_vs_plain']:.2f}x" if r.get("speedup_vs_plain") else ""
            mem = f"{r['peak_mem_mib']:.0f}" if r.get("peak_mem_mib") else ""
            lines.append(f"| {c['case']} | {r['variant']} | {ms(r['median_ms'])} ({ms(r['q20_ms'])}-{ms(r['q80_ms'])}) | "
                         f"{r['images_per_s']:.0f} | {r['gflops']:.1f} | {r['frac_sgemm']:.0%} | {vs} | {mem} |")
        lines.append(f"| {c['case']} | sgemm {c['sgemm_n']}^3 (ceiling) | | | {c['sgemm_gflops']:.1f} | 100% | | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated: {', '.join(CASES)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--steps", type=int, default=None, help="timed steps per variant (default: per case, 4 to 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first (compilation, Adam's state)")
    p.add_argument("--sgemm", type=int, default=2048, help="N of the N x N x N float32 matmul ceiling")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu or cuda[:N]")
    p.add_argument("--no-memory", dest="memory", action="store_false", help="leave the peak memory column out")
    p.add_argument("--out", default=str(HERE / "results"), help="folder for <device>-train.json")
    args = p.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 on every side, sgemm included
        torch.backends.cudnn.allow_tf32 = False

    cases = [c for c in args.cases.split(",") if c]
    names = [n for n in args.variants.split(",") if n]
    bad = [c for c in cases if c not in CASES] + [n for n in names if n not in VARIANTS]
    if bad:
        p.error(f"unknown case or variant {bad}; cases: {', '.join(CASES)}; variants: {', '.join(VARIANTS)}")

    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    result = {"device": device_slug(device), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": torch.__version__,
              "triton": triton_version, "python": platform.python_version(), "threads": torch.get_num_threads(),
              "cpu": cpu_info(), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
              "loadavg_before": list(os.getloadavg()), "warmup": args.warmup, "cases": []}
    for case in cases:
        steps = args.steps or CASES[case][3]
        result["cases"].append(run_case(case, names, device, steps, args.warmup, args.sgemm, args.memory))
        print(f"{case} done", file=sys.stderr)
    result["loadavg_after"] = list(os.getloadavg())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result['device']}-train.json"
    if path.is_file():  # keep the cases this run did not measure (each case carries its own date and load)
        rerun = {c["case"] for c in result["cases"]}
        kept = [c for c in json.loads(path.read_text()).get("cases", []) if c["case"] not in rerun]
        result["cases"] = sorted(kept + result["cases"], key=lambda c: list(CASES).index(c["case"]))
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{result['device']}, torch {result['torch']}, triton {triton_version}, {result['threads']} threads, "
          f"{result['date']}, load average {result['loadavg_before'][0]:.2f} -> {result['loadavg_after'][0]:.2f}")
    print(table(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

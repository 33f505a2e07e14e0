"""Benchmark of the fused ops in vlae_fast.kernels: Triton vs eager PyTorch vs torch.compile.

    python bench/kernels.py                 # all ops, float32 and bfloat16, forward and forward+backward
    python bench/kernels.py --ops reparam --dtypes float32

Needs a CUDA GPU (it exits with a message elsewhere). For each op, shape, dtype and mode it times
every provider with triton.testing.do_bench (median and 20/80 % quantiles, in ms) and reports the
achieved GB/s, for the memory-bound ops the fraction of the device's measured copy bandwidth, and
for the GEMMs TFLOP/s. Rows are written, with the GPU name, versions and date, to
bench/results/<device>-kernels.json, and printed as a markdown table for bench/README.md.

Bytes moved (s = bytes per element; the minimum any implementation must move, so the GB/s of
every provider are comparable):
    reparam_kl fwd     : read mu, logvar [+ eps]; write z, kl     -> (3 [+1]) B D s + B s
    reparam_kl fwd+bwd : fwd + read mu, logvar, dz, dkl [+ eps]; write dmu, dlogvar -> + (5 [+1]) B D s + B s
    (the multi-level op: the same summed over levels, kl being [B, L])
    ladder_linear fwd  : read a, b, W, bias; write out            -> (M K + N K + N + M N) s
    ladder_linear fwd+bwd: fwd + read dout, out, a, b, W; write da, db, dW, dbias
                                                                  -> + (2 M N + M K + N K + M K + N K + N) s
FLOPs of ladder_linear: 2 M N K forward, 3x that forward+backward.
"""
import argparse
import datetime
import json
import os
import platform
import re
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def fail(msg: str) -> None:
    print(f"bench/kernels.py: {msg}", file=sys.stderr)
    sys.exit(2)


def check_machine() -> None:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        fail("TRITON_INTERPRET is set: the interpreter cannot be timed; unset it and run on a CUDA GPU")
    if not torch.cuda.is_available():
        fail("needs a CUDA GPU, and torch sees none (torch " + torch.__version__ + "); nothing was measured. "
             "Run it on a GPU machine with CUDA torch and Triton installed (pip install -e . without the CPU pin).")


def timed(fn, grad_to_none=None) -> tuple[float, float, float]:
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8], grad_to_none=grad_to_none)
    return med, p20, p80


def copy_bandwidth_gbps() -> float:
    """The device's copy bandwidth: dst.copy_(src) over 1 GiB, counting the read and the write."""
    n = 2**28  # float32 elements = 1 GiB
    src, dst = torch.randn(n, device="cuda"), torch.empty(n, device="cuda")
    med, _, _ = timed(lambda: dst.copy_(src))
    return 2 * n * 4 / (med * 1e-3) / 1e9


# --- reparam_kl (single and multi-level) -------------------------------------------------------
def reparam_cases(dtype):
    """(name, B, Ds): the wide single op and the MNIST ladder (3 levels of 100 x 2)."""
    return [("reparam_kl", 8192, [512]), ("reparam_kl_multi", 100, [2, 2, 2])]


def bench_reparam(name, B, Ds, dtype, compile_ok):
    from vlae_fast.kernels import reparam_kl_multi_torch, reparam_kl_multi_triton

    s = torch.finfo(dtype).bits // 8
    rows = []
    for noise in ("kernel", "given"):
        mus = [torch.randn(B, D, device="cuda", dtype=dtype, requires_grad=True) for D in Ds]
        lvs = [(-torch.rand(B, D, device="cuda") * 3).to(dtype).requires_grad_() for D in Ds]
        eps = None if noise == "kernel" else [torch.randn(B, D, device="cuda", dtype=dtype) for D in Ds]
        dzs = [torch.randn(B, D, device="cuda", dtype=dtype) for D in Ds]
        dkl = torch.randn(B, len(Ds), device="cuda", dtype=dtype)
        n = B * sum(Ds)
        extra = 0 if eps is None else 1
        fwd_bytes = (3 + extra) * n * s + B * len(Ds) * s
        bwd_bytes = (5 + extra) * n * s + B * len(Ds) * s
        providers = {"eager": reparam_kl_multi_torch, "triton": reparam_kl_multi_triton}
        if compile_ok:
            providers["compile"] = torch.compile(reparam_kl_multi_torch, dynamic=False)
        for prov, fn in providers.items():
            def fwd():
                with torch.no_grad():
                    return fn(mus, lvs, eps)

            def fwd_bwd():
                zs, kl = fn(mus, lvs, eps)
                torch.autograd.backward([*zs, kl], [*dzs, dkl])

            for mode, f, nbytes in (("fwd", fwd, fwd_bytes), ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes)):
                f()  # warm up (compiles Triton / torch.compile)
                med, p20, p80 = timed(f, grad_to_none=[*mus, *lvs])
                rows.append(dict(op=name, shape=f"{B}x{'+'.join(map(str, Ds))}", noise=noise, dtype=str(dtype)[6:],
                                 mode=mode, provider=prov, ms=med, ms_p20=p20, ms_p80=p80,
                                 gbps=nbytes / (med * 1e-3) / 1e9, memory_bound=True))
    return rows


# --- ladder_linear -----------------------------------------------------------------------------
def ladder_shapes() -> list[tuple[str, int, int, int, int]]:
    """(model, M, Da, Db, N) of every concat LadderJoin (a ladder_linear call) of the MNIST and CelebA
    models at batch 100. The CelebA / SVHN ladders join feature maps channel-wise before a convolution,
    so they contribute no ladder_linear GEMM; the MNIST ladder's are the ones the model runs."""
    from vlae_fast.models import build_model, default_config
    from vlae_fast.models.blocks import LadderJoin

    configs = [("mnist", default_config("mnist")), ("celeba", default_config("celeba"))]
    shapes = []
    for name, cfg in configs:
        with torch.device("meta"):
            model = build_model(cfg)
        for m in model.modules():
            if isinstance(m, LadderJoin) and m.join == "concat":
                N, K = m.linear.weight.shape
                Da = cfg.hidden
                shapes.append((name, 100, Da, K - Da, N))
    return sorted(set(shapes))


def bench_ladder(model, M, Da, Db, N, dtype, compile_ok):
    from vlae_fast.kernels import ladder_linear_triton

    s = torch.finfo(dtype).bits // 8
    K = Da + Db
    a = torch.randn(M, Da, device="cuda", dtype=dtype, requires_grad=True)
    b = torch.randn(M, Db, device="cuda", dtype=dtype, requires_grad=True)
    W = (torch.randn(N, K, device="cuda", dtype=dtype) / K**0.5).requires_grad_()
    bias = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True)
    ab = torch.cat([a, b], 1).detach().requires_grad_()  # addmm's input, concatenated beforehand
    dout = torch.randn(M, N, device="cuda", dtype=dtype)

    def eager(a, b, W, bias):
        return F.relu(F.linear(torch.cat([a, b], 1), W, bias))

    providers = {
        "eager": (lambda: eager(a, b, W, bias), [a, b, W, bias]),
        "cublas_addmm": (lambda: F.relu(torch.addmm(bias, ab, W.t())), [ab, W, bias]),
        "triton": (lambda: ladder_linear_triton(a, b, W, bias, "relu"), [a, b, W, bias]),
    }
    if compile_ok:
        compiled = torch.compile(eager, dynamic=False)
        providers["compile"] = (lambda: compiled(a, b, W, bias), [a, b, W, bias])
    fwd_bytes = (M * K + N * K + N + M * N) * s
    bwd_bytes = (2 * M * N + 2 * M * K + 2 * N * K + N) * s
    flops = 2 * M * N * K
    rows = []
    for prov, (fn, leaves) in providers.items():
        def fwd():
            with torch.no_grad():
                return fn()

        def fwd_bwd():
            fn().backward(dout)

        for mode, f, nbytes, nflops in (("fwd", fwd, fwd_bytes, flops),
                                        ("fwd+bwd", fwd_bwd, fwd_bytes + bwd_bytes, 3 * flops)):
            f()
            med, p20, p80 = timed(f, grad_to_none=leaves)
            rows.append(dict(op="ladder_linear", shape=f"{model}: M={M} Da={Da} Db={Db} N={N}", noise=None,
                             dtype=str(dtype)[6:], mode=mode, provider=prov, ms=med, ms_p20=p20, ms_p80=p80,
                             gbps=nbytes / (med * 1e-3) / 1e9, tflops=nflops / (med * 1e-3) / 1e12,
                             memory_bound=False))
    return rows


def markdown(rows: list[dict], copy_gbps: float) -> str:
    lines = ["| op | shape | noise | dtype | mode | provider | median ms | GB/s | % copy BW | TFLOP/s | x eager |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    eager = {(r["op"], r["shape"], r["noise"], r["dtype"], r["mode"]): r["ms"] for r in rows if r["provider"] == "eager"}
    for r in rows:
        key = (r["op"], r["shape"], r["noise"], r["dtype"], r["mode"])
        frac = f"{100 * r['gbps'] / copy_gbps:.0f}" if r["memory_bound"] else ""
        tf = f"{r['tflops']:.1f}" if "tflops" in r else ""
        lines.append(f"| {r['op']} | {r['shape']} | {r['noise'] or ''} | {r['dtype']} | {r['mode']} | {r['provider']} | "
                     f"{r['ms']:.4f} | {r['gbps']:.0f} | {frac} | {tf} | {eager[key] / r['ms']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ops", nargs="+", default=["reparam", "ladder"], choices=["reparam", "ladder"])
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    ap.add_argument("--no-compile", action="store_true", help="leave out the torch.compile provider")
    ap.add_argument("--out", type=Path, default=None, help="results file (default bench/results/<device>-kernels.json)")
    args = ap.parse_args()
    check_machine()
    import triton

    from vlae_fast.kernels import set_backend

    set_backend("triton")
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 GEMMs in full precision, on both sides
    device = torch.cuda.get_device_name()
    copy_gbps = copy_bandwidth_gbps()
    print(f"{device}: measured copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
    rows = []
    for dtype in (DTYPES[d] for d in args.dtypes):
        if "reparam" in args.ops:
            for name, B, Ds in reparam_cases(dtype):
                rows += bench_reparam(name, B, Ds, dtype, not args.no_compile)
        if "ladder" in args.ops:
            for shape in ladder_shapes():
                rows += bench_ladder(*shape, dtype, not args.no_compile)
    for r in rows:
        if r["memory_bound"]:
            r["fraction_of_copy_bw"] = r["gbps"] / copy_gbps
    table = markdown(rows, copy_gbps)
    print(table)
    slug = re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-")
    out = args.out or HERE / "results" / f"{slug}-kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=device, copy_bandwidth_gbps=copy_gbps, torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, python=platform.python_version(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()

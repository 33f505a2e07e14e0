"""How long the explorer takes to answer one drag on the CPU: decoding one image (model.decode_controls) and
the whole /api/decode answer (JSON checks + decode + PNG data URL), median over many calls.

    OMP_NUM_THREADS=1 python bench/explore_decode.py [CKPT] [--repeat 200]

Without CKPT it builds the default MNIST VLAE untrained (the time does not depend on the weights).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from vlae_fast.checkpoint import load_model
from vlae_fast.explore.session import Explorer
from vlae_fast.models import build_model, default_config


def median_ms(fn, repeat: int) -> tuple[float, float]:
    for _ in range(10):  # warm-up
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("ckpt", nargs="?")
    ap.add_argument("--repeat", type=int, default=200)
    args = ap.parse_args()
    model = load_model(args.ckpt)[0] if args.ckpt else build_model(default_config("mnist"))
    explorer = Explorer(model, args.ckpt or "default MNIST VLAE (untrained)")
    c = model.prior_controls(1, torch.Generator().manual_seed(0))
    body = json.dumps({"controls": [cl[0].tolist() for cl in c]}).encode()
    dec = median_ms(lambda: model.decode_controls(c), args.repeat)
    full = median_ms(lambda: explorer.decode(body), args.repeat)
    print(f"{explorer.name}: {model.cfg.model}, levels {list(model.latent_dims)}, image {tuple(model.cfg.image_shape)}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"decode_controls, one image:    median {dec[0]:.2f} ms, 90th percentile {dec[1]:.2f} ms")
    print(f"/api/decode answer (+ checks, PNG): median {full[0]:.2f} ms, 90th percentile {full[1]:.2f} ms")


if __name__ == "__main__":
    main()

"""Time (1) building the CelebA decode cache from generated 178x218 JPEGs, per 1 000 images, and
(2) one training step (forward, backward, Adam) of the SVHN and CelebA ladders at batch 100.

    python bench/cache_and_step_time.py [--images 1000] [--steps 3]
"""
import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlae_fast.data import load_dataset
from vlae_fast.models import build_model, default_config

p = argparse.ArgumentParser()
p.add_argument("--images", type=int, default=1000)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--batch", type=int, default=100)
args = p.parse_args()
print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {time.strftime('%Y-%m-%d %H:%M')}")

with tempfile.TemporaryDirectory() as tmp:
    folder = Path(tmp) / "img_align_celeba"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, args.images + 1):
        Image.fromarray(rng.integers(0, 256, (218, 178, 3), dtype=np.uint8)).save(folder / f"{i:06d}.jpg", quality=90)
    t0 = time.perf_counter()
    load_dataset("celeba", "train", tmp, show_progress=False)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_dataset("celeba", "train", tmp, show_progress=False)
    reuse = time.perf_counter() - t0
    print(f"celeba cache: built in {build:.2f} s for {args.images} images = {1000 * build / args.images:.2f} s per 1 000; "
          f"reused in {reuse:.3f} s")

for dataset in ("svhn", "celeba"):
    torch.manual_seed(0)
    cfg = default_config(dataset)
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=2e-4)
    x = torch.rand(args.batch, *cfg.image_shape)
    times = []
    for step in range(args.steps + 1):  # the first step warms up and is not counted
        t0 = time.perf_counter()
        out = model(x)
        loss = out.recon.mean() + out.kl.sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    t = sorted(times[1:])
    print(f"{dataset}: {cfg.arch} ladder, {sum(q.numel() for q in model.parameters()) / 1e6:.1f} M parameters, "
          f"batch {args.batch}: median step {t[len(t) // 2]:.2f} s (min {t[0]:.2f}, max {t[-1]:.2f}) over {len(t)} steps")

"""Wall time of one MNIST epoch through `vlae train`'s own code path (vlae_fast.train.train), data included.

    python bench/epoch.py --data-dir ../shared/data/mnist                 # 600 steps of 100 images
    python bench/epoch.py --data-dir ../shared/data/mnist --compile --precision bf16
    python bench/epoch.py --data-dir ../shared/data/mnist --images 5000     # an epoch of the first 5000 images
    python bench/epoch.py --data-dir ../shared/data/mnist --recipe paper    # the model of another recipe

The model and schedule are those of `vlae train mnist --recipe R` (default: MNIST's default recipe), the
run cut to one epoch (its stages and warm-up scaled to it, as for any --steps).

Prints (and appends to bench/results/<device>-epoch.jsonl) the wall time of the whole call, the training
loop's own time (the `train_seconds` train() reports: from the first step to the last, data on the device
already), and the rest (data loading, model set-up, the final evaluation on --eval-limit test images and
the checkpoint write).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from train_step import device_slug  # noqa: E402

from vlae_fast.recipes import RECIPES  # noqa: E402
from vlae_fast.rundir import plan_run  # noqa: E402
from vlae_fast.train import resolve_device, train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=None, help="MNIST files (default: vlae train's own lookup)")
    p.add_argument("--batch-size", type=int, default=100)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--images", type=int, default=60000, help="train on the first N training images (one epoch of them)")
    p.add_argument("--eval-limit", type=int, default=1000, help="test images of the final evaluation")
    p.add_argument("--recipe", default=None, choices=sorted(RECIPES), help="vlae train's --recipe (default: MNIST's)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args()
    steps = args.images // args.batch_size
    # planned as `vlae train --steps N ...` plans it: stages, warm-up and the recipe's first-stage target follow N
    plan = plan_run("mnist", {"recipe": args.recipe, "data_dir": args.data_dir, "steps": steps,
                              "batch_size": args.batch_size, "device": args.device, "save_every": 0,
                              "log_every": 100, "eval_limit": args.eval_limit,
                              "train_limit": args.images if args.images < 60000 else None,
                              "compile": args.compile, "precision": args.precision})
    cfg = plan.train_cfg
    with tempfile.TemporaryDirectory() as run:
        t0 = time.perf_counter()
        result = train(plan.model_cfg, cfg, run, show_progress=False)
        wall = time.perf_counter() - t0
    device = resolve_device(args.device)
    row = {"device": device_slug(device), "date": time.strftime("%Y-%m-%d %H:%M %Z"), "torch": torch.__version__,
           "threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()), "images": args.images, "steps": steps,
           "batch_size": args.batch_size, "recipe": cfg.recipe, "hidden": plan.model_cfg.hidden, "compile": args.compile, "precision": args.precision,
           "wall_s": round(wall, 2), "train_loop_s": result["train_seconds"],
           "rest_s": round(wall - result["train_seconds"], 2), "test_elbo": result["elbo"]}
    print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{row['device']}-epoch.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()

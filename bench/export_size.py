"""File sizes of a default-size MNIST VLAE checkpoint (`vlae train mnist`, weights + Adam state + RNG) and of its
exports (`vlae export --dtype ...`). Trains one step on 100 images to have Adam's moments, in a temp folder.

    OMP_NUM_THREADS=1 python bench/export_size.py --data-dir ../shared/data/mnist
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from vlae_fast.export import DTYPES, export_checkpoint
from vlae_fast.models import default_config
from vlae_fast.train import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cfg = TrainConfig(steps=1, batch_size=100, train_limit=100, eval_limit=100, data_dir=args.data_dir,
                          save_every=0, device="cpu")
        train(default_config("mnist"), cfg, tmp / "run", show_progress=False)
        full = (tmp / "run" / "ckpt.safetensors").stat().st_size
        print(f"default MNIST VLAE, training checkpoint (weights, Adam moments, RNG): {full / 1e6:.1f} MB")
        for dtype in DTYPES:
            size = export_checkpoint(tmp / "run" / "ckpt.safetensors", tmp / f"{dtype}.safetensors", dtype).stat().st_size
            print(f"  vlae export --dtype {dtype:8s}: {size / 1e6:6.1f} MB  ({full / size:.1f}x smaller)")


if __name__ == "__main__":
    main()

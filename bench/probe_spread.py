"""How precise is `vlae eval`'s 10-NN identity probe? Whether z_1 < z_2 < z_3 is a finding or a draw.

`vlae eval` fits the probe (vlae_fast/eval/probes.py) on the posterior means of the first 5000 training images
and scores it on the test images. Two things move that figure without the model changing: which 5000 images
the probe was fitted on, and which images it was scored on. For every run this script prints, per level, the
accuracy with the first fit set (eval's figure) and its mean ± sd over `--fits` disjoint fit sets of the same
size; and for z_2 - z_1 and z_3 - z_2 the difference with the first fit set, its sd over the fit sets, and its
paired standard error over the scored images (sd of the per-image difference of being right / sqrt(n)):

    python bench/probe_spread.py RUN [RUN ...] [--fits 5] [--data-dir DIR]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from vlae_fast.checkpoint import load_model
from vlae_fast.eval.probes import PROBE_IMAGES, knn_probe, posterior_means
from vlae_fast.eval.run import load_for_checkpoint
from vlae_fast.rundir import checkpoint_path


def knn_right(fit_x: np.ndarray, fit_y: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per scored image, whether the 10-NN probe fitted on (fit_x, fit_y) names its label: [n] bool."""
    return knn_probe(len(fit_x)).fit(fit_x, fit_y).predict(x) == y


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(b) - mean(a) for per-image outcomes a, b scored on the same images."""
    d = b.astype(float) - a.astype(float)
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def spread(fit_codes: list[np.ndarray], fit_y: np.ndarray, codes: list[np.ndarray], y: np.ndarray,
           fits: int, size: int) -> dict:
    """{'acc': [L][fits] accuracy per level and fit set, 'se': [L-1] paired SE of level l+1 - level l on the
    first fit set}. Fit set j is training images j*size .. (j+1)*size - 1."""
    right = [[knn_right(f[j * size:(j + 1) * size], fit_y[j * size:(j + 1) * size], c, y) for j in range(fits)]
             for f, c in zip(fit_codes, codes)]
    return {"acc": [[float(r.mean()) for r in level] for level in right],
            "se": [paired_se(right[l][0], right[l + 1][0]) for l in range(len(right) - 1)]}


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints with labelled data (MNIST)")
    ap.add_argument("--fits", type=int, default=5, help="disjoint fit sets of --fit-images training images")
    ap.add_argument("--fit-images", type=int, default=PROBE_IMAGES, help="images per fit set (vlae eval's 5000)")
    ap.add_argument("--limit", type=int, default=None, help="score on the first N test images only")
    ap.add_argument("--data-dir", default=None, help="the data set's folder")
    args = ap.parse_args(argv)
    print("| run | 10-NN identity z1 / z2 / z3 (eval's fit set) | mean ± sd over fit sets | z2 - z1: diff, sd over "
          "fits, paired SE | z3 - z2: diff, sd over fits, paired SE |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        model, info = load_model(checkpoint_path(run), torch.device("cpu"))
        model.eval()
        train, test = (load_for_checkpoint(info, s, args.data_dir) for s in ("train", "test"))
        need = args.fits * args.fit_images
        if len(train) < need:
            sys.exit(f"{run}: {args.fits} fit sets of {args.fit_images} need {need} training images; "
                     f"the data set has {len(train)}: lower --fits or --fit-images")
        fit_mus, fit_y = posterior_means(model, train.head(need))
        mus, y = posterior_means(model, test.head(args.limit))
        s = spread([m.double().numpy() for m in fit_mus], fit_y.numpy(), [m.double().numpy() for m in mus],
                   y.numpy(), args.fits, args.fit_images)
        acc = np.array(s["acc"])
        cols = [" / ".join(f"{a:.3f}" for a in acc[:, 0]),
                " / ".join(f"{m:.3f} ± {d:.3f}" for m, d in zip(acc.mean(1), acc.std(1, ddof=1)))]
        for l, se in enumerate(s["se"]):
            diff = acc[l + 1] - acc[l]
            cols.append(f"{diff[0]:+.3f}, {diff.std(ddof=1):.3f}, {se:.3f}")
        print(f"| {Path(run).name} | " + " | ".join(cols) + " |")


if __name__ == "__main__":
    main()

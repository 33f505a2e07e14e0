"""How precise are `vlae eval`'s hierarchy numbers? Whether an ordering between levels is a finding or a draw.

Identity (10-NN probe).

`vlae eval` fits the probe (vlae_fast/eval/probes.py) on the posterior means of the first 5000 training images
and scores it on the test images. Two things move that figure without the model changing: which 5000 images
the probe was fitted on, and which images it was scored on. For every run this script prints, per level, the
accuracy with the first fit set (eval's figure) and its mean ± sd over `--fits` disjoint fit sets of the same
size; and for z_2 - z_1 and z_3 - z_2 the difference with the first fit set, its sd over the fit sets, and its
paired standard error over the scored images (sd of the per-image difference of being right / sqrt(n)).

Factor shares (vlae_fast/eval/levels.py). `vlae eval` draws each level's 32 x 32 redraw grid with seed 0; the
second table gives each factor's share per level as mean ± sd over `--grid-seeds` seeds (0, 1, ...), and the
margin of the claim on it (ink: level 1 minus the larger other; width and slant: level 2 minus the larger
other; class: the top's share) for seed 0 and as mean ± sd.

    python bench/spread.py RUN [RUN ...] [--fits 5] [--grid-seeds 5] [--data-dir DIR] [--classifier FILE]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from hierarchy import OWN_LEVEL  # bench/hierarchy.py: the claims' definitions
from vlae_fast.checkpoint import load_model
from vlae_fast.classifier import load_classifier
from vlae_fast.eval.levels import factor_shares
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


def margin(factor: str, share: list[float]) -> float:
    """How far the claim on `factor` holds (> 0) or fails (< 0): the share of the level it names
    (hierarchy.OWN_LEVEL) minus the largest other level's; for class, the top level's share (the claim asks >= 0.60)."""
    if factor == "class":
        return share[-1]
    own = OWN_LEVEL[factor]
    return share[own] - max(v for i, v in enumerate(share) if i != own)


@torch.no_grad()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints with labelled data (MNIST)")
    ap.add_argument("--fits", type=int, default=5, help="disjoint fit sets of --fit-images training images")
    ap.add_argument("--fit-images", type=int, default=PROBE_IMAGES, help="images per fit set (vlae eval's 5000)")
    ap.add_argument("--grid-seeds", type=int, default=5, help="redraw-grid seeds for the factor shares (0 = eval's)")
    ap.add_argument("--limit", type=int, default=None, help="score on the first N test images only")
    ap.add_argument("--data-dir", default=None, help="the data set's folder")
    ap.add_argument("--classifier", default=None, help="the digit classifier for the class shares (default: the "
                    "cache vlae eval uses, trained on MNIST first if missing)")
    args = ap.parse_args(argv)
    clf, _ = load_classifier(args.classifier, args.data_dir, show_progress=False)
    factors = []
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
        print(f"| {Path(run).name} | " + " | ".join(cols) + " |", flush=True)
        per_seed = [factor_shares(model, clf, seed=g) for g in range(args.grid_seeds)]
        for f in ("ink", "width", "slant", "class"):
            sh = np.array([p[f] for p in per_seed])
            m = np.array([margin(f, p[f]) for p in per_seed])
            per_level = " / ".join(f"{a:.2f} ± {d:.2f}" for a, d in zip(sh.mean(0), sh.std(0, ddof=1)))
            factors.append(f"| {Path(run).name} | {f} | {per_level} | {m[0]:+.2f} | {m.mean():+.2f} ± {m.std(ddof=1):.2f} |")
    print("\n| run | factor | share per level, mean ± sd over grid seeds | claim margin, seed 0 | margin, mean ± sd |")
    print("|---|---|---|---|---|")
    print("\n".join(factors))


if __name__ == "__main__":
    main()

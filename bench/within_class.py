"""Is a level's share of a style factor its own, or a by-product of the digit changes it makes?

`vlae eval`'s factor shares (vlae_fast/eval/levels.py) measure each factor's variance across the redraw rows of
each level. A level that changes the digit also changes ink, width and slant, since digits differ in them. This
script splits each row's variance into the part within the classifier's predicted classes (the style a level
changes while the digit stays) and the rest, and prints both shares per level:

    python bench/within_class.py RUN [RUN ...] [--data-dir DIR]

Within-class variance of a row: sum over the classes c in the row of (share of the row in c) x (variance of the
factor among the row's cells in c). Same grids (32 x 32 per level, seed 0) as `vlae eval`.
"""
from __future__ import annotations

import argparse

import torch

from vlae_fast import generate
from vlae_fast.checkpoint import load_model
from vlae_fast.classifier import load_classifier
from vlae_fast.eval.levels import GRID, image_factors, shares
from vlae_fast.rundir import checkpoint_path


def within_class_variance(v: torch.Tensor, pred: torch.Tensor) -> float:
    """Mean over rows of the within-class variance of v [rows, cols] under the classes pred [rows, cols]."""
    total = 0.0
    for row, classes in zip(v, pred):
        for c in classes.unique():
            m = classes == c
            total += m.double().mean().item() * row[m].var(unbiased=False).item()
    return total / len(v)


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="run folders or checkpoints of 1-channel 28 x 28 models")
    ap.add_argument("--data-dir", default=None, help="MNIST folder, to train the classifier if none is cached")
    args = ap.parse_args()
    clf, _ = load_classifier(data_dir=args.data_dir, show_progress=False)
    clf.eval()
    print("| run | factor | share per level, all variance | share per level, within class | within-class part of each level's variance |")
    print("|---|---|---|---|---|")
    for run in args.runs:
        model, _ = load_model(checkpoint_path(run), torch.device("cpu"))
        model.eval()
        total, within = {k: [] for k in ("ink", "width", "slant")}, {k: [] for k in ("ink", "width", "slant")}
        for layer in range(1, len(model.latent_dims) + 1):
            g = torch.Generator().manual_seed(0)
            x = model.decode_controls(generate.redraw_controls(model, layer, GRID, g))
            pred = clf(x.float()).argmax(1).view(GRID, GRID)
            for k, f in image_factors(x).items():
                v = f.view(GRID, GRID)
                total[k].append(v.var(dim=1, unbiased=False).mean().item())
                within[k].append(within_class_variance(v, pred))
        for k in total:
            fmt = lambda xs: " / ".join(f"{a:.2f}" for a in xs)
            print(f"| {run} | {k} | {fmt(shares(total[k]))} | {fmt(shares(within[k]))} | "
                  f"{fmt([w / t for w, t in zip(within[k], total[k])])} |")


if __name__ == "__main__":
    main()

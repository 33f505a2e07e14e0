"""`vlae eval` and `vlae compare`: thin Typer commands over vlae_fast.eval (registered in cli/app.py)."""
from __future__ import annotations

import shlex
from pathlib import Path
from typing import List, Optional

import typer

from vlae_fast.eval import compare as compare_lib
from vlae_fast.eval.probes import PROBE_IMAGES
from vlae_fast.eval.report import check_output, print_report, write_json
from vlae_fast.eval.run import evaluate_checkpoint, write_markdown
from vlae_fast.rundir import checkpoint_path

from .common import CKPT, DATA_DIR, DEVICE, PROGRESS, SEED, Split, out, user_errors, value


def eval_run(
    ckpt: Path = CKPT,
    data_dir: Optional[Path] = DATA_DIR,
    split: Split = typer.Option("test", help="Split to evaluate (the probes are always fitted on training images)."),
    out_path: Optional[Path] = typer.Option(None, "--out", help="Write every number as JSON here (format in docs/eval.md)."),
    md: Optional[Path] = typer.Option(None, "--md", help="Write a markdown report here, with each level's traversal PNG beside it."),
    iw: int = typer.Option(0, "--iw", min=0, help="Importance samples K for the IW bound (0 = off). Costs K forward passes per image: "
                           "see docs/eval.md for CPU times; pair a large K with --iw-limit."),
    iw_limit: Optional[int] = typer.Option(None, "--iw-limit", min=1, help="Compute the IW bound on only the first N evaluated images (the rest of the report keeps all)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Evaluate on only the first N images of the split."),
    probe_images: int = typer.Option(PROBE_IMAGES, min=1, help="Training images the label probes are fitted on (the first N)."),
    seed: int = typer.Option(0, min=0, help="Seed of every random draw (z samples, dequantization, grids)."),
    fresh: bool = typer.Option(False, "--fresh", help="Recompute the part `vlae train` stored in the checkpoint."),
    classifier: Optional[Path] = typer.Option(None, help="The MNIST classifier file for the class factor (default: the user cache; trained once if missing)."),
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """What each level learned and how good the model is: ELBO and KL per level, IW bound (--iw), bits/dim,
    active units, label probes, variation shares, image factors and Figure 5's claims (docs/eval.md)."""
    with user_errors():
        check_output(out_path, ".json", "--out")
        check_output(md, ".md", "--md")
        report, model = evaluate_checkpoint(checkpoint_path(ckpt), data_dir=data_dir, split=value(split), limit=limit, iw=iw, iw_limit=iw_limit, seed=seed,
                                            probe_images=probe_images, classifier_path=classifier, fresh=fresh,
                                            device=device, show_progress=progress)
        written = [write_json(report, out_path)] if out_path else []
        written += [write_markdown(report, model, md, seed)] if md else []
    print_report(report, out)
    for path in written:
        out.print(f"wrote {path}", highlight=False)


def compare(
    runs: List[Path] = typer.Argument(..., help="Reports (.json from `vlae eval --out`) or checkpoints (ckpt.safetensors, or run folders).", show_default=False),
    md: Optional[Path] = typer.Option(None, "--md", help="Write the table as markdown here."),
    data_dir: Optional[Path] = DATA_DIR,
    classifier: Optional[Path] = typer.Option(None, help="The MNIST classifier file (default: the user cache)."),
    device: str = DEVICE,
    progress: bool = PROGRESS,
) -> None:
    """Several runs side by side: likelihood, per-level numbers, factor shares, and each claim's verdict as a row."""
    with user_errors():
        check_output(md, ".md", "--md")
        reports = [compare_lib.load_any(p, data_dir=data_dir, classifier_path=classifier, device=device,
                                        show_progress=progress) for p in runs]
        if md:
            compare_lib.write_markdown(reports, md, shlex.join(["vlae", "compare", *map(str, runs), "--md", str(md)]))
    compare_lib.print_table(reports, out)
    if md:
        out.print(f"wrote {md}", highlight=False)

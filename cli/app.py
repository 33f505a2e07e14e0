"""The `vlae` command: thin Typer functions over the library. No logic lives here."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from vlae_fast import distributed, generate, gibbs as gibbs_lib
from vlae_fast.checkpoint import load_model
from vlae_fast.cli.evaluate import compare as compare_cmd, eval_run as eval_cmd
from vlae_fast.classifier import load_classifier, quality_scores
from vlae_fast.data import data_options, image_shape_of, load_for_checkpoint
from vlae_fast.errors import TrainingStopped, VlaeError
from vlae_fast.images import check_writable, save_images, save_panels
from vlae_fast.models import default_config, default_lr
from vlae_fast.resume import plan_resume
from vlae_fast.train import TrainConfig, evaluate as evaluate_model, resolve_device, train as run_training

app = typer.Typer(
    help="Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017): train, sample, traverse, inspect.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

CKPT = typer.Argument(..., help="A ckpt.safetensors written by `vlae train`.", show_default=False)
DEVICE = typer.Option("auto", help="auto (cuda if available), cpu or cuda[:N].")
KERNELS = typer.Option(None, help="Fused ops: auto (Triton on CUDA, PyTorch elsewhere), triton or torch; default $VLAE_KERNELS, else auto.")
DATA_DIR = typer.Option(None, "--data-dir", help="Folder holding the data set's files (else $VLAE_DATA_DIR, else the user cache).")


def fail(e: Exception) -> typer.Exit:
    """One line on stderr and exit code 2: what went wrong and what to do."""
    err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def parse_dims(text: Optional[str]) -> Optional[list[int]]:
    if text is None:
        return None
    try:
        dims = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise typer.BadParameter(f"expected an integer or a comma-separated list like 2,2,2; got {text!r}") from None
    if not dims or min(dims) < 1:
        raise typer.BadParameter(f"code widths must be positive integers; got {text!r}")
    return dims


def default_run_dir(dataset: str, model: str) -> Path:
    return Path("runs") / f"{dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


@app.command()
def train(
    dataset: str = typer.Argument(..., help="Data set to train on: mnist, svhn, celeba or folder (--data-dir PATH).", show_default=False),
    model: str = typer.Option("vlae", help="Model: vlae (the paper's ladder) or hvae (the Markov HVAE baseline, eq. 4-5)."),
    layers: Optional[int] = typer.Option(None, help="Number of ladder levels L (MNIST default 3)."),
    latent_dim: Optional[str] = typer.Option(None, help="Code width per level: one value (e.g. 2) or one per level, bottom first (e.g. 2,2,4)."),
    steps: Optional[int] = typer.Option(None, help=f"Optimizer steps (default {TrainConfig.steps}; with --resume: the run's)."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Images per step."),
    lr: Optional[float] = typer.Option(None, help=f"Adam learning rate (default: the model's own, hvae 1e-4, else {TrainConfig.lr:g}; with --resume: the run's)."),
    grad_clip: Optional[float] = typer.Option(None, help="Clip the global gradient norm to this; 0 = off (default 0; with --resume: the run's)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder (or from this ckpt.safetensors) "
                                          "exactly where it stopped; model and data options then come from it."),
    warmup: Optional[float] = typer.Option(None, help="KL warm-up: the weight rises linearly from 0 to 1 over this many steps (at most --steps; default half the run); 0 = no warm-up."),
    output: str = typer.Option("gaussian", help="r(x | z): gaussian (fixed variance, the paper), laplace (L1) or bernoulli."),
    join: Optional[str] = typer.Option(None, help="Ladder join (vlae only): concat (eq. 11, the default) or gated_add (authors' MNIST code)."),
    seed: int = typer.Option(0, help="Random seed (weights, noise, data order)."),
    device: str = DEVICE,
    kernels: Optional[str] = KERNELS,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<dataset>-<model>-<timestamp>)."),
    data_dir: Optional[Path] = DATA_DIR,
    save_every: Optional[int] = typer.Option(None, help=f"Steps between checkpoints; 0 = only at the end (default {TrainConfig.save_every}; with --resume: the run's)."),
    log_every: Optional[int] = typer.Option(None, help=f"Steps between metrics.jsonl lines (default {TrainConfig.log_every}; with --resume: the run's)."),
    train_limit: Optional[int] = typer.Option(None, help="Train on only the first N images (quick experiments)."),
    eval_limit: Optional[int] = typer.Option(None, help="Evaluate on only the first N test images."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
    image_size: Optional[int] = typer.Option(None, help="folder: center-crop and resize images to SxS (default 64)."),
    grayscale: bool = typer.Option(False, "--grayscale", help="folder: force grey-level images (default: detected)."),
    rgb: bool = typer.Option(False, "--rgb", help="folder: force RGB images (default: detected)."),
    svhn_extra: bool = typer.Option(False, "--svhn-extra", help="svhn: add extra_32x32.mat to training, as the authors did."),
    nproc: int = typer.Option(1, help="Processes for data-parallel training (torchrun + DDP): one per GPU, or CPU "
                              "processes (gloo). --batch-size is the global batch, split evenly."),
) -> None:
    """Train a model; writes OUT/ckpt.safetensors and OUT/metrics.jsonl, then prints the test-set ELBO.
    Ctrl-C saves a checkpoint and stops; --resume OUT continues the run."""
    if nproc < 1:
        raise typer.BadParameter("--nproc must be at least 1")
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        one_dir = [] if out_dir or resume else ["--out", str(default_run_dir(dataset, model))]  # same for all ranks
        raise typer.Exit(code=distributed.launch(nproc, sys.argv[1:] + one_dir))
    if any(v is not None and v < 1 for v in (steps, batch_size, log_every)):
        raise typer.BadParameter("--steps, --batch-size and --log-every must be at least 1")
    if grad_clip is not None and grad_clip < 0:
        raise typer.BadParameter("--grad-clip must be 0 (off) or a positive norm")
    if grayscale and rgb:
        raise typer.BadParameter("give --grayscale or --rgb, not both")
    try:
        start, data = None, str(data_dir) if data_dir else None
        if resume is not None:
            mcfg, tcfg, start = plan_resume(resume, dataset, steps=steps, lr=lr, grad_clip=grad_clip, device=device,
                                            save_every=save_every, log_every=log_every, data_dir=data,
                                            eval_limit=eval_limit)
            if kernels is not None:
                tcfg.kernels = kernels
            run_dir = out_dir or Path(start.path).parent
        else:
            opts = data_options(dataset, image_size, "grayscale" if grayscale else "rgb" if rgb else None, svhn_extra)
            shape = image_shape_of(dataset, data_dir, **opts)
            mcfg = default_config(dataset, model, layers, parse_dims(latent_dim), output=output, image_shape=shape,
                                  **({"join": join} if join is not None else {}))
            tcfg = TrainConfig(dataset=dataset, steps=steps or TrainConfig.steps, batch_size=batch_size,
                               lr=lr if lr is not None else default_lr(model) or TrainConfig.lr, warmup=warmup, seed=seed, device=device,
                               save_every=TrainConfig.save_every if save_every is None else save_every,
                               log_every=log_every or TrainConfig.log_every, data_dir=data,
                               train_limit=train_limit, eval_limit=eval_limit, grad_clip=grad_clip or 0.0,
                               kernels=kernels, data_options=opts)
            run_dir = out_dir or default_run_dir(dataset, model)
        result = run_training(mcfg, tcfg, run_dir, show_progress=progress, start=start)
    except TrainingStopped as e:
        err.print(f"[bold yellow]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=e.exit_code)
    except VlaeError as e:
        raise fail(e)
    if "rank" in result:  # torchrun's other ranks: rank 0 reports
        return
    kl = ", ".join(f"{v:.2f}" for v in result["kl"])
    out.print(f"test ELBO {result['elbo']:.2f} nats/image  (-log r(x|z) {result['recon_nll']:.2f}, KL per level [{kl}])")
    out.print(f"test reconstruction error: {result['mse']:.5f} mean squared error per pixel  "
              f"({result['images']} images, {result['steps']} steps in {result['train_seconds']:.0f} s on {result['device']})")
    out.print(f"checkpoint: {result['checkpoint']}")


@app.command()
def sample(
    ckpt: Path = CKPT,
    n: int = typer.Option(64, "--n", help="Number of samples."),
    out_path: Path = typer.Option(Path("samples.png"), "--out", help="PNG grid, or .npz for the raw array (key x: [n, C, H, W])."),
    seed: int = typer.Option(0, help="Random seed."),
    device: str = DEVICE,
) -> None:
    """Samples from the prior z ~ N(0, I)."""
    try:
        check_writable(out_path)
        model, _ = load_model(ckpt, resolve_device(device))
        path = save_images(generate.sample(model, n, seed), out_path)
    except VlaeError as e:
        raise fail(e)
    out.print(f"wrote {n} samples to {path}")


@app.command()
def traverse(
    ckpt: Path = CKPT,
    layer: int = typer.Option(..., help="Level to vary, 1-based: 1 = bottom (closest to x), as in the paper."),
    out_path: Path = typer.Option(Path("traverse.png"), "--out", help="PNG grid, or .npz (key x: [rows, cols, C, H, W])."),
    steps: int = typer.Option(10, help="Grid size: steps x steps."),
    seed: int = typer.Option(0, help="Random seed for the levels held fixed."),
    device: str = DEVICE,
) -> None:
    """Vary one level with the others fixed: a [-2, 2]^2 sweep for a 2-d level (Figure 5),
    else rows of fresh draws of that level under fixed other levels (Figures 6, 7)."""
    try:
        check_writable(out_path)
        model, _ = load_model(ckpt, resolve_device(device))
        path = save_images(generate.traverse(model, layer, steps, seed), out_path)
        shares = generate.variance_shares(model, seed=seed)
    except VlaeError as e:
        raise fail(e)
    out.print(f"wrote the level-{layer} traversal ({steps}x{steps}) to {path}")
    txt = ", ".join(f"level {l}: {s:.1%}" for l, s in enumerate(shares, 1))
    out.print(f"share of pixel variance produced by redrawing each level's {model.CONTROL}_l alone "
              f"(Figure 3; 32x32 grid per level): {txt}")


@app.command()
def reconstruct(
    ckpt: Path = CKPT,
    n: int = typer.Option(16, "--n", help="Number of test images."),
    out_path: Path = typer.Option(Path("recon.png"), "--out", help="PNG (originals over reconstructions) or .npz."),
    split: str = typer.Option("test", help="Data split: train or test."),
    data_dir: Optional[Path] = DATA_DIR,
    device: str = DEVICE,
) -> None:
    """The first N images of a split (top row) over their reconstructions from the posterior means."""
    try:
        check_writable(out_path)
        model, ckpt_info = load_model(ckpt, resolve_device(device))
        data = load_for_checkpoint(ckpt_info, split, data_dir)
        path = save_images(generate.reconstruct(model, data, n), out_path)
    except VlaeError as e:
        raise fail(e)
    out.print(f"wrote {n} originals and reconstructions to {path}")


@app.command()
def encode(
    ckpt: Path = CKPT,
    split: str = typer.Option("test", help="Data split: train or test."),
    out_path: Path = typer.Option(Path("codes.npz"), "--out", help="Output .npz: z1 ... zL ([N, d_l]) and labels ([N])."),
    data_dir: Optional[Path] = DATA_DIR,
    device: str = DEVICE,
) -> None:
    """Posterior means of every level for a data split, in data-set order."""
    try:
        check_writable(out_path, (".npz",))
        model, ckpt_info = load_model(ckpt, resolve_device(device))
        data = load_for_checkpoint(ckpt_info, split, data_dir)
        codes = generate.encode(model, data)
        np.savez_compressed(out_path, **{k: v.numpy() for k, v in codes.items()})
    except VlaeError as e:
        raise fail(e)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in codes.items())
    out.print(f"wrote {shapes} to {out_path}")


@app.command()
def gibbs(
    ckpt: Optional[Path] = typer.Argument(None, show_default=False, help=(
        "An HVAE ckpt.safetensors (`vlae train mnist --model hvae`). Without it, the paper's 3-level MNIST HVAE "
        f"is trained once under {gibbs_lib.DEFAULT_RUN}/ (~30 min on 2 CPU cores) and reused after.")),
    steps: int = typer.Option(100, "--steps", help="Gibbs steps T per chain."),
    chains: int = typer.Option(100, help="Number of chains N (and of ancestral samples beside them)."),
    every: int = typer.Option(0, help="Also show the state after every K-th step as one row of the left panel (0 = only the last)."),
    init: str = typer.Option("data", help="Starting points: data (random test images) or noise (uniform in [0, 1])."),
    feed: str = typer.Option("sample", help="What continues the chain: sample (x ~ p(x|z_1), clamped to [0, 1], eq. 6) or mean."),
    out_path: Path = typer.Option(Path("gibbs.png"), "--out", help="PNG (left Gibbs, right ancestral, labelled) or .npz (keys gibbs, ancestral[, states])."),
    seed: int = typer.Option(0, help="Random seed (starting points, chain noise, ancestral samples)."),
    device: str = DEVICE,
    data_dir: Optional[Path] = DATA_DIR,
    progress: bool = typer.Option(True, help="Show progress while training the default model or the classifier."),
) -> None:
    """Figure 2: a Gibbs chain on the bottom level only, z_1 ~ q(z_1|x_t), x_{t+1} ~ p(x|z_1) (eq. 6),
    beside ancestral samples of the whole model. Images show the mean of p(x|z_1); the chain goes on
    with a sample of it. Prints sample-quality scores from a small MNIST classifier (trained once, cached)."""
    try:
        check_writable(out_path)
        if ckpt is None:
            ckpt, trained = gibbs_lib.default_checkpoint(data_dir, device, progress)
            out.print(f"{'trained' if trained else 'reusing'} {gibbs_lib.describe(ckpt)}")
        model, info = load_model(ckpt, resolve_device(device))
        gibbs_lib.check_hvae(model)
        data = load_for_checkpoint(info, "test", data_dir) if init == "data" else None
        res = gibbs_lib.run_gibbs(model, data, chains, steps, every, init, feed, seed)
        left = res["states"] if every else res["gibbs"]
        label = f"Gibbs on z_1, rows every {every} steps" if every else f"Gibbs on z_1, {steps} steps"
        path = save_panels([(label, left), ("ancestral, all levels", res["ancestral"])], out_path, **res)
        scores = None
        if info.config.dataset == "mnist":
            clf, acc = load_classifier(data_dir=data_dir, show_progress=progress)
            scores = {k: quality_scores(clf, res[k]) for k in ("gibbs", "ancestral")}
    except VlaeError as e:
        raise fail(e)
    out.print(f"wrote {chains} Gibbs-chain samples ({steps} steps from {init}) and {chains} ancestral samples to {path}")
    if scores is None:
        out.print("no quality scores: the classifier knows MNIST only")
        return
    out.print(f"sample quality (MNIST classifier, {acc:.2%} test accuracy): mean max-softmax confidence, "
              f"entropy of predicted classes (max {scores['gibbs']['max_entropy']:.2f} nats)")
    for name, s in scores.items():
        out.print(f"  {name:9s}  confidence {s['confidence']:.3f}  class entropy {s['class_entropy']:.2f}  "
                  f"classes {s['histogram']}")


@app.command()
def evaluate(
    ckpt: Path = CKPT,
    split: str = typer.Option("test", help="Data split: train or test."),
    data_dir: Optional[Path] = DATA_DIR,
    seed: int = typer.Option(0, help="Seed of the one z sample per image."),
    device: str = DEVICE,
) -> None:
    """The ELBO (eq. 14) and reconstruction error of a checkpoint on a data split (what `train` prints at the end)."""
    try:
        model, info = load_model(ckpt, resolve_device(device))
        data = load_for_checkpoint(info, split, data_dir)
        r = evaluate_model(model, data, seed=seed)
    except VlaeError as e:
        raise fail(e)
    kl = ", ".join(f"{v:.2f}" for v in r["kl"])
    out.print(f"{split} ELBO {r['elbo']:.2f} nats/image  (-log r(x|z) {r['recon_nll']:.2f}, KL per level [{kl}])")
    out.print(f"{split} reconstruction error: {r['mse']:.5f} mean squared error per pixel  "
              f"({r['images']} images, checkpoint at step {info.step})")


app.command("eval")(eval_cmd)
app.command("compare")(compare_cmd)


def main() -> None:
    app()

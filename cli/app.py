"""The `vlae` command: thin Typer functions over the library. No logic lives here."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console

from vlae_fast import generate
from vlae_fast.checkpoint import load_model
from vlae_fast.data import load_dataset
from vlae_fast.errors import VlaeError
from vlae_fast.images import check_writable, save_images
from vlae_fast.models import default_config, default_lr
from vlae_fast.train import TrainConfig, resolve_device, train as run_training

app = typer.Typer(
    help="Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017): train, sample, traverse, inspect.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

CKPT = typer.Argument(..., help="A ckpt.safetensors written by `vlae train`.", show_default=False)
DEVICE = typer.Option("auto", help="auto (cuda if available), cpu or cuda[:N].")
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


@app.command()
def train(
    dataset: str = typer.Argument(..., help="Data set to train on: mnist.", show_default=False),
    model: str = typer.Option("vlae", help="Model: vlae (the paper's ladder) or hvae (the Markov HVAE baseline, eq. 4-5)."),
    layers: Optional[int] = typer.Option(None, help="Number of ladder levels L (MNIST default 3)."),
    latent_dim: Optional[str] = typer.Option(None, help="Code width per level: one value (e.g. 2) or one per level, bottom first (e.g. 2,2,4)."),
    steps: int = typer.Option(TrainConfig.steps, help="Optimizer steps."),
    batch_size: int = typer.Option(TrainConfig.batch_size, help="Images per step."),
    lr: Optional[float] = typer.Option(None, help=f"Adam learning rate (default: the model's own, hvae 1e-4; else {TrainConfig.lr:g})."),
    warmup: float = typer.Option(TrainConfig.warmup, help="KL warm-up: weight 1 - exp(-step / warmup); 0 = no warm-up."),
    output: str = typer.Option("gaussian", help="r(x | z): gaussian (fixed variance, the paper), laplace (L1) or bernoulli."),
    join: Optional[str] = typer.Option(None, help="Ladder join (vlae only): concat (eq. 11, the default) or gated_add (authors' MNIST code)."),
    seed: int = typer.Option(0, help="Random seed (weights, noise, data order)."),
    device: str = DEVICE,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run folder (default runs/<dataset>-<model>-<timestamp>)."),
    data_dir: Optional[Path] = DATA_DIR,
    save_every: int = typer.Option(TrainConfig.save_every, help="Steps between checkpoints (0 = only at the end)."),
    train_limit: Optional[int] = typer.Option(None, help="Train on only the first N images (quick experiments)."),
    eval_limit: Optional[int] = typer.Option(None, help="Evaluate on only the first N test images."),
    progress: bool = typer.Option(True, help="Show the progress bar."),
) -> None:
    """Train a model; writes OUT/ckpt.safetensors and OUT/metrics.jsonl, then prints the test-set ELBO."""
    if steps < 1 or batch_size < 1:
        raise typer.BadParameter("--steps and --batch-size must be at least 1")
    try:
        mcfg = default_config(dataset, model, layers, parse_dims(latent_dim), output=output,
                              **({"join": join} if join is not None else {}))
        lr = lr if lr is not None else default_lr(model) or TrainConfig.lr
        tcfg = TrainConfig(dataset=dataset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed,
                           device=device, save_every=save_every, data_dir=str(data_dir) if data_dir else None,
                           train_limit=train_limit, eval_limit=eval_limit)
        run_dir = out_dir or Path("runs") / f"{dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
        result = run_training(mcfg, tcfg, run_dir, show_progress=progress)
    except VlaeError as e:
        raise fail(e)
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
    except VlaeError as e:
        raise fail(e)
    out.print(f"wrote the level-{layer} traversal ({steps}x{steps}) to {path}")


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
        data = load_dataset(ckpt_info.config.dataset, split, data_dir)
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
        data = load_dataset(ckpt_info.config.dataset, split, data_dir)
        codes = generate.encode(model, data)
        np.savez_compressed(out_path, **{k: v.numpy() for k, v in codes.items()})
    except VlaeError as e:
        raise fail(e)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in codes.items())
    out.print(f"wrote {shapes} to {out_path}")


def main() -> None:
    app()

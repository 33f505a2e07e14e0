"""The `vlae` command: thin Typer functions over the library. No logic lives here; the shared options,
checks and error handling are in common.py."""
from __future__ import annotations

import os
import sys
from importlib.metadata import PackageNotFoundError, version as package_version
from pathlib import Path
from typing import Optional

import typer

from vlae_fast import distributed, generate, gibbs as gibbs_lib, rundir, runs
from vlae_fast.classifier import score_samples
from vlae_fast.data import checkpoint_data_dir, load_for_checkpoint
from vlae_fast.errors import VlaeError
from vlae_fast.images import check_request, check_writable, save_images, save_panels
from vlae_fast.rundir import default_run_dir
from vlae_fast.train import TrainConfig, evaluate as evaluate_model, train as run_training

from . import explore as explore_cli
from .evaluate import compare as compare_cmd, eval_run as eval_cmd

from .common import (CKPT, DATA_DIR, DEVICE, JSON, KERNELS, PROGRESS, SEED, SPLIT, Anneal, Dataset, Feed, Group, Init, Join, Kernels, LrDecay, TopEncoder, TopLrScope, FirstTarget,
                     Likelihood, Model, Precision, Recipe, Schedule, Split, code_widths, err, fail, flag, given, kl_factors, parse_factors, free_bits_option, parse_nats, kl_targets, parse_targets, load, out, parse_dims, positive,
                     print_json, user_errors, value)

app = typer.Typer(
    help="Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017): train, sample, traverse, inspect.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode="markdown",
    context_settings={"help_option_names": ["-h", "--help"]}, cls=Group,
)


def show_version(flag_value: bool) -> None:
    if flag_value:
        try:
            v = package_version("vlae-fast")
        except PackageNotFoundError:
            v = "unknown (not installed)"
        out.print(f"vlae-fast {v}", highlight=False)
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True, metavar="",
                                 help="Print the version and exit."),
) -> None:
    """Variational Ladder Autoencoders (Zhao, Song & Ermon, ICML 2017): train, sample, traverse, inspect."""


def read_config(ctx: typer.Context, path: Optional[Path]) -> Optional[Path]:
    """--config FILE: its options become the defaults, so the command line still wins; every value goes
    through the same checks as on the command line."""
    if path is None:
        return None
    try:
        settings = rundir.read_settings(path)
    except VlaeError as e:
        raise typer.BadParameter(str(e).removeprefix(f"--config {path}: ")) from None
    if "output" in settings:  # the likelihood's old name
        settings.setdefault("likelihood", settings.pop("output"))
    known = {p.name for p in ctx.command.params} - {"config", "resume", "out_dir", "overwrite", "json_out"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise typer.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}; it may set: "
                                 f"{', '.join(sorted(n.replace('_', '-') for n in known))}")
    ctx.default_map = {**(ctx.default_map or {}), **settings}
    return path


@app.command()
def train(
    ctx: typer.Context,
    dataset: Dataset = typer.Argument(..., help="Data set to train on (folder: your images, --data-dir PATH).",
                                      show_default=False),
    model: Model = typer.Option("vlae", help="vlae (the paper's ladder; svhn/celeba/folder get its convolutional "
                                "conv_vlae), hvae (the Markov HVAE baseline, eq. 4-5), lvae (its generator with "
                                "ladder inference) or ar_hvae (the autoregressive HVAE, eq. 3)."),
    layers: Optional[int] = typer.Option(None, min=1, help="Number of ladder levels L (default: the data set's, MNIST 3)."),
    latent_dim: Optional[str] = typer.Option(None, callback=code_widths, help="Code width per level: one value "
                                             "(e.g. 2) or one per level, bottom first (e.g. 2,2,4)."),
    steps: Optional[int] = typer.Option(None, min=1, help=f"Optimizer steps of the whole run (default {TrainConfig.steps}; "
                                        "with --resume: the run's, or more to train further)."),
    batch_size: int = typer.Option(TrainConfig.batch_size, min=1, help="Images per step."),
    lr: Optional[float] = typer.Option(None, callback=positive, help=f"Adam learning rate, > 0 (default: the model's "
                                       f"own, hvae, lvae and ar_hvae 1e-4, else {TrainConfig.lr:g}; with --resume: "
                                       "the run's)."),
    grad_clip: Optional[float] = typer.Option(None, min=0, help="Clip the global gradient norm to this; 0 = off "
                                              "(default 0; with --resume: the run's)."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder (or from this ckpt.safetensors) "
                                          "exactly where it stopped; model and data options then come from it."),
    restart_optimizer: bool = flag(False, "--restart-optimizer", help="With --resume from a checkpoint without "
                                   "optimizer state (exported): continue with fresh Adam moments, not exactly."),
    overwrite: bool = flag(False, "--overwrite", help="Delete the run already in --out (checkpoint, metrics, settings, "
                           "tensorboard) and start afresh; without it such a folder is refused."),
    config: Optional[Path] = typer.Option(None, "--config", callback=read_config, is_eager=True, exists=True,
                                          dir_okay=False, help="A TOML file of these options (key = value, e.g. "
                                          "steps = 2000), such as a run's settings.toml; command-line options win."),
    warmup: Optional[float] = typer.Option(None, min=0, help="KL warm-up: the weight rises linearly from 0 to 1 over "
                                           "this many steps (at most --steps; default half the run); 0 = none."),
    likelihood: Optional[Likelihood] = typer.Option(None, help="r(x | z): gaussian (fixed variance, the paper; the "
                                                    "default), laplace (L1) or bernoulli."),
    output: Optional[Likelihood] = typer.Option(None, hidden=True, help="Deprecated name of --likelihood."),
    join: Optional[Join] = typer.Option(None, help="Ladder join (vlae only): concat (eq. 11, the default) or "
                                        "gated_add (authors' MNIST code)."),
    top_encoder: Optional[TopEncoder] = typer.Option(None, help="MNIST ladder (vlae): shared (eq. 12, the default: "
                                                     "every level's code read off one inference trunk) or separate "
                                                     "(the top level reads x through its own copy of the trunk, so "
                                                     "the lower levels' training cannot move it; docs/hierarchy.md)."),
    hidden: Optional[int] = typer.Option(None, min=8, help="Width of the fully-connected blocks (1024: the authors' "
                                         "and the paper recipe's; 512: the hierarchy recipe's, docs/hierarchy.md)."),
    gate_init: Optional[float] = typer.Option(None, min=0, help="--join gated_add: the starting value of the gate g in "
                                              "W(a + g b) (default 0.1, the authors': the path from above dominates "
                                              "early; 1 = a plain sum). > 0; a resumed run keeps its learned gates."),
    recipe: Optional[Recipe] = typer.Option(None, help="Defaults for the options not given: paper (every level "
                                            "from step 0, linear warm-up, concat join, 2-d codes), hierarchy (ladder "
                                            "models: progressive training, docs/hierarchy.md) or figure3 (hvae, lvae, "
                                            "ar_hvae: 10-d codes, bernoulli, --kl-scale 4,2,1, docs/gibbs.md). "
                                            "Default on mnist: hierarchy or figure3; else paper."),
    kl_anneal: Optional[Anneal] = typer.Option(None, help="KL warm-up shape: linear (weight (t+1)/warmup, capped at "
                                               "1) or exp (1 - exp(-t/warmup), the authors' code)."),
    schedule: Optional[Schedule] = typer.Option(None, help="plain (every level trains from step 0) or progressive "
                                                "(the top level alone first, then each lower level faded in; "
                                                "pro-VLAE, ladder models only)."),
    stage_steps: Optional[int] = typer.Option(None, min=0, help="progressive: steps between one level switching on "
                                              "and the next lower one (default --steps / L; --steps must cover (L-1) "
                                              "stages + a fade)."),
    fade_steps: Optional[int] = typer.Option(None, min=0, help="progressive: steps over which a new level's generator "
                                             "input rises from 0 to 1 (default a quarter of a stage)."),
    pre_kl: Optional[float] = typer.Option(None, min=0, help="progressive: KL weight of levels not yet switched on "
                                           "(keeps them at the prior until the generator listens)."),
    first_kl: Optional[float] = typer.Option(None, min=0, help="progressive: a factor on the top level's KL weight "
                                             "during the first stage, while it trains alone (default 1); > 1 keeps its "
                                             "code to the largest factors, leaving style for the levels below."),
    first_target: Optional[FirstTarget] = typer.Option(None, help="progressive: what the first stage, the top "
                                                       "level alone, reconstructs: x (the default), deskew (x with "
                                                       "its slant taken out by image moments), or normalize (slant, "
                                                       "digit width and stroke width all made common); grey images "
                                                       "only. The top's code then has no style to learn; the encoder "
                                                       "still sees x, and the recon logged in that stage is the "
                                                       "reshaped image's."),
    first_levels: Optional[int] = typer.Option(None, min=1, help="progressive: how many top levels train together "
                                               "in the first stage (default 1, the top alone); each lower level starts "
                                               "a stage later. 2 puts level L-1 beside the top from step 0, so it can "
                                               "take style (slant, width) before the top does. Must be below --layers."),
    level_warmup: Optional[float] = typer.Option(None, min=0, help="progressive: each level below the top warms its "
                                                 "KL weight up anew from its own start, over this many steps (the "
                                                 "time constant under --kl-anneal exp), so a level switched on late "
                                                 "starts nearly free. Default 0: every level follows the run's "
                                                 "--warmup."),
    top_lr: Optional[float] = typer.Option(None, min=0, help="progressive: a factor on the learning rate of the top "
                                           "level's own modules (its encoder block and head, its generator) once its "
                                           "stage is over (default 1; 0 freezes them). Measured on MNIST it does not keep "
                                           "the top's identity, which goes through the encoder trunk the levels "
                                           "below share (docs/hierarchy.md)."),
    top_lr_scope: Optional[TopLrScope] = typer.Option(None, help="--top-lr: all (the default) slows the top's "
                                                      "inference path and its generator f_L; inference slows the "
                                                      "path alone (with --top-encoder separate, its own trunk), so "
                                                      "the code z_L(x) stays as its stage left it while f_L keeps "
                                                      "learning."),
    lr_decay: Optional[LrDecay] = typer.Option(None, help="Learning-rate schedule: none (constant --lr, the default) "
                                               "or cosine (from --lr-decay-start on, every lr falls along a half "
                                               "cosine to 0 at --steps; a resumed run given more --steps stretches "
                                               "what is left of it). Not with --compile."),
    lr_decay_start: Optional[int] = typer.Option(None, min=0, help="--lr-decay: the step the decay starts from "
                                                 "(default 0; e.g. the bottom level's start under progressive "
                                                 "training)."),
    input_noise: Optional[float] = typer.Option(None, min=0, help="Denoising: the standard deviation of Gaussian "
                                                "noise added to the encoder's input while training (the authors' "
                                                "configs use it; pixels are in [0, 1]); the reconstruction is "
                                                "scored on the clean image. Default 0 (off)."),
    kl_scale: Optional[str] = typer.Option(None, callback=kl_factors, help="A fixed factor on each level's KL "
                                           "weight, bottom first (e.g. 2,1,1: the bottom level's information costs "
                                           "twice). Default 1 for every level; the reported ELBO always uses 1. "
                                           "May change on --resume (1,1,1 finishes a run on the plain ELBO)."),
    free_bits: Optional[str] = typer.Option(None, callback=free_bits_option, help="Free bits (Kingma et al. "
                                            "2016): nats of KL each level may hold at no cost, bottom first (e.g. "
                                            "5,5,0: the two lower levels' first 5 nats are free); the loss takes "
                                            "max(KL_l, this) per level, batch-averaged. Default 0 (off); the "
                                            "reported ELBO always uses the true KL. Below its budget a level's KL "
                                            "has no gradient, so free nats may go unused (docs/hierarchy.md)."),
    kl_target: Optional[str] = typer.Option(None, callback=kl_targets, help="A KL target per level in nats, bottom "
                                            "first, 0 = none (e.g. 0,0,4.5: the top level's KL is held near 4.5 "
                                            "nats): a controller multiplies the level's KL weight by a factor in "
                                            "[0.1, 10] that rises while its KL is over the target and falls while "
                                            "under (GECO, ControlVAE). Default: the hierarchy recipe's 0,6,0 on "
                                            "three levels, else off; 0,0,0 turns it off. The reported ELBO always "
                                            "uses weight 1. Not with --free-bits on the same level (--free-bits "
                                            "drops the recipe's target)."),
    kl_target_rate: Optional[float] = typer.Option(None, min=0, help="--kl-target: the controller's "
                                                   "step, the change of log(factor) per nat of error per training "
                                                   "step (default 0.01)."),
    kl_target_start: Optional[int] = typer.Option(None, min=0, help="--kl-target: the step from which the controller "
                                                  "acts (default 0); before it the KL weights are the schedule's, so "
                                                  "e.g. --stage-steps lets the top level learn alone first."),
    seed: int = typer.Option(0, min=0, help="Random seed (weights, noise, data order)."),
    device: str = DEVICE,
    kernels: Optional[Kernels] = KERNELS,
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Run folder, created with its parents (default "
                                           "runs/<dataset>-<model>-<timestamp>); refused if it holds another run."),
    data_dir: Optional[Path] = DATA_DIR,
    save_every: Optional[int] = typer.Option(None, min=0, help=f"Steps between checkpoints; 0 = only at the end "
                                             f"(default {TrainConfig.save_every}; with --resume: the run's)."),
    log_every: Optional[int] = typer.Option(None, min=1, help=f"Steps between metrics.jsonl lines (default "
                                            f"{TrainConfig.log_every}; with --resume: the run's)."),
    train_limit: Optional[int] = typer.Option(None, min=1, help="Train on only the first N images (quick experiments)."),
    eval_limit: Optional[int] = typer.Option(None, min=1, help="Evaluate on only the first N test images."),
    tensorboard: bool = flag(False, "--tensorboard", help="Also log to OUT/tensorboard/: losses and KL per level at "
                             "every metrics line, each level's traversal grid every --tensorboard-every steps "
                             "(needs the tensorboard package)."),
    tensorboard_every: int = typer.Option(500, min=1, help="Steps between the traversal grids of --tensorboard."),
    progress: bool = PROGRESS,
    json_out: bool = JSON,
    image_size: Optional[int] = typer.Option(None, min=4, help="folder: center-crop and resize images to SxS (default 64)."),
    grayscale: bool = flag(False, "--grayscale", help="folder: force grey-level images (default: detected)."),
    rgb: bool = flag(False, "--rgb", help="folder: force RGB images (default: detected)."),
    svhn_extra: bool = flag(False, "--svhn-extra", help="svhn: add extra_32x32.mat to training, as the authors did."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", metavar="", help="torch.compile the "
                                           "training step (slow to start; see bench/README.md for when it pays; "
                                           "with --resume: the run's, or changed)."),
    precision: Optional[Precision] = typer.Option(None, help="fp32 (default) or bf16 (autocast; see bench/README.md)."),
    nproc: int = typer.Option(1, min=1, help="Processes for data-parallel training (torchrun + DDP): one per GPU, or "
                              "CPU processes (gloo). --batch-size is the global batch, split evenly."),
) -> None:
    """Train a model; writes OUT/ckpt.safetensors, OUT/metrics.jsonl and OUT/settings.toml, then prints the
    test-set ELBO. Ctrl-C saves a checkpoint and stops; --resume OUT continues the run."""
    if output is not None:
        err.print("note: --output is deprecated (it is easily taken for --out); use --likelihood", highlight=False)
        likelihood = likelihood or output
    if nproc > 1 and "WORLD_SIZE" not in os.environ:  # not yet under torchrun: start it
        one_dir = [] if out_dir or resume else ["--out", str(default_run_dir(value(dataset), value(model)))]
        raise typer.Exit(code=distributed.launch(nproc, sys.argv[1:] + one_dir))  # same run folder for all ranks
    options = {**ctx.params, "dataset": value(dataset), "model": value(model), "likelihood": value(likelihood),
               "join": value(join), "top_encoder": value(top_encoder), "lr_decay": value(lr_decay), "top_lr_scope": value(top_lr_scope), "first_target": value(first_target), "kernels": value(kernels), "precision": value(precision),
               "kl_scale": parse_factors(kl_scale), "free_bits": parse_nats(free_bits),
               "kl_target": parse_targets(kl_target), "recipe": value(recipe), "kl_anneal": value(kl_anneal), "schedule": value(schedule),
               "latent_dims": parse_dims(latent_dim)}
    with user_errors():
        plan = rundir.plan_run(value(dataset), options, given(ctx), resume=resume, out=out_dir,
                             restart_optimizer=restart_optimizer)
        result = run_training(plan.model_cfg, plan.train_cfg, plan.run_dir, show_progress=progress, start=plan.start,
                              overwrite=overwrite, tensorboard_every=tensorboard_every if tensorboard else 0)
    if "rank" in result:  # torchrun's other ranks: rank 0 reports
        return
    if json_out:
        return print_json(result)
    kl = ", ".join(f"{v:.2f}" for v in result["kl"])
    out.print(f"test ELBO {result['elbo']:.2f} nats/image  (-log r(x|z) {result['recon_nll']:.2f}, KL per level [{kl}])",
              highlight=False, markup=False)
    out.print(f"test reconstruction error: {result['mse']:.5f} mean squared error per pixel  "
              f"({result['images']} images, {result['steps']} steps in {result['train_seconds']:.0f} s on {result['device']})")
    out.print(f"checkpoint: {result['checkpoint']}")


@app.command()
def sample(
    ckpt: Path = CKPT,
    n: int = typer.Option(64, "--n", min=1, help="Number of samples."),
    nrow: Optional[int] = typer.Option(None, min=1, help="Rows of the PNG grid (default: the most square grid "
                                       "with every row full, e.g. 8 -> 2 x 4)."),
    out_path: Path = typer.Option(Path("samples.png"), "--out", help="PNG grid, or .npz for the raw array "
                                  "(key x: \\[n, C, H, W]); its folder must exist."),
    seed: int = SEED,
    device: str = DEVICE,
) -> None:
    """Samples from the prior z ~ N(0, I)."""
    with user_errors():
        model, _ = load(ckpt, device, out_path)
        ncol = -(-n // nrow) if nrow else None
        check_request(n, model.cfg.image_shape, out_path, f"--n {n}", ncol)
        path = save_images(generate.sample(model, n, seed), out_path, ncol)
    out.print(f"wrote {n} samples to {path}", highlight=False)


@app.command()
def traverse(
    ckpt: Path = CKPT,
    layer: int = typer.Option(..., min=1, help="Level to vary, 1-based: 1 = bottom (closest to x), as in the paper."),
    out_path: Path = typer.Option(Path("traverse.png"), "--out", help="PNG grid (titled with what runs along rows "
                                  "and columns), or .npz (key x: \\[rows, cols, C, H, W]); its folder must exist."),
    steps: int = typer.Option(10, min=1, help="Grid size: STEPS values per side, STEPS x STEPS images."),
    seed: int = typer.Option(0, min=0, help="Random seed for the levels held fixed."),
    shares: bool = typer.Option(True, "--shares/--no-shares", metavar="", help="Also measure each level's share of "
                                "the pixel variance (32x32 redraws per level: seconds for MNIST, about a minute and "
                                "a half for a 64x64 CelebA model on 2 CPU cores)."),
    device: str = DEVICE,
    json_out: bool = JSON,
) -> None:
    """Vary one level with the others fixed: a \\[-2, 2]^2 sweep for a 2-d level (Figure 5),
    else rows of fresh draws of that level under fixed other levels (Figures 6, 7).
    Prints each level's share of the pixel variance (Figure 3)."""
    with user_errors():
        model, _ = load(ckpt, device, out_path)
        check_request(steps * steps, model.cfg.image_shape, out_path, f"--steps {steps} ({steps}x{steps} images)", steps)
        x = generate.traverse(model, layer, steps, seed)
        path = save_images(x, out_path, title=generate.traverse_caption(model, layer, steps))
        variance = generate.variance_shares(model, seed=seed) if shares else None
    if json_out:
        return print_json({"out": str(path), "layer": layer, "steps": steps, "control": model.CONTROL,
                           "variance_shares": variance})
    out.print(f"wrote the level-{layer} traversal ({steps}x{steps}) to {path}", highlight=False)
    if variance is None:
        return
    txt = ", ".join(f"level {l}: {s:.1%}" for l, s in enumerate(variance, 1))
    out.print(f"share of pixel variance produced by redrawing each level's {model.CONTROL}_l alone "
              f"(Figure 3; 32x32 grid per level): {txt}", highlight=False)


@app.command()
def reconstruct(
    ckpt: Path = CKPT,
    n: int = typer.Option(16, "--n", min=1, help="Number of images."),
    out_path: Path = typer.Option(Path("recon.png"), "--out", help="PNG (row 'original' over row 'reconstruction') "
                                  "or .npz (key x: \\[2, n, C, H, W]); its folder must exist."),
    split: Split = SPLIT,
    data_dir: Optional[Path] = DATA_DIR,
    device: str = DEVICE,
) -> None:
    """The first N images of a split (top row) over their reconstructions from the posterior means."""
    with user_errors():
        model, info = load(ckpt, device, out_path)
        check_request(2 * n, model.cfg.image_shape, out_path, f"--n {n}", n)
        data = load_for_checkpoint(info, value(split), data_dir)
        path = save_images(generate.reconstruct(model, data, n), out_path, row_labels=generate.RECONSTRUCT_ROWS)
    out.print(f"wrote {n} originals and reconstructions to {path}", highlight=False)


@app.command()
def encode(
    ckpt: Path = CKPT,
    split: Split = SPLIT,
    out_path: Path = typer.Option(Path("codes.npz"), "--out", help="Output .npz: z1 ... zL (\\[N, d_l]) and labels "
                                  "(\\[N]); its folder must exist."),
    data_dir: Optional[Path] = DATA_DIR,
    device: str = DEVICE,
) -> None:
    """Posterior means of every level for a data split, in data-set order."""
    with user_errors():
        model, info = load(ckpt, device, out_path, (".npz",))
        codes = generate.encode(model, load_for_checkpoint(info, value(split), data_dir))
        path = generate.save_codes(codes, out_path)
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in codes.items())
    out.print(f"wrote {shapes} to {path}", highlight=False)


@app.command()
def gibbs(
    ckpt: Optional[Path] = typer.Argument(None, show_default=False, help=(
        "A Markov HVAE run folder or ckpt.safetensors (`vlae train mnist --model hvae`, or lvae); with --whole any "
        "model's. Without it, the paper's 3-level "
        f"MNIST HVAE is trained once under {runs.DEFAULT_HVAE_RUN}/ (~30 min on 2 CPU cores) and reused after.")),
    steps: int = typer.Option(100, "--steps", min=1, help="Gibbs steps T of each chain."),
    chains: int = typer.Option(100, min=1, help="Number of chains N (and of ancestral samples beside them)."),
    every: int = typer.Option(0, min=0, help="Also show the state after every K-th step as one row of the left "
                              "panel (0 = only the last)."),
    init: Init = typer.Option("data", help="Starting points: data (random test images) or noise (uniform in \\[0, 1])."),
    feed: Feed = typer.Option("sample", help="What continues the chain: sample (x ~ p(x|z_1) as drawn, eq. 6) or mean."),
    whole: bool = flag(False, "--whole", help="Proposition 2: the chain on the whole code, z ~ q(z|x_t) at every "
                       "level, x_{t+1} ~ p(x|z); any model (without it: eq. 6 on z_1, Markov HVAEs only)."),
    out_path: Path = typer.Option(Path("gibbs.png"), "--out", help="PNG (left Gibbs, right ancestral, titled) or "
                                  ".npz (keys gibbs, ancestral\\[, states]); its folder must exist."),
    seed: int = typer.Option(0, min=0, help="Random seed (starting points, chain noise, ancestral samples)."),
    particles: int = typer.Option(1, min=1, max=gibbs_lib.MAX_PARTICLES, help=(
        "1: z drawn from q(z|x_t) (eq. 6, the paper's chain). K >= 2: importance resampling (i-SIR) among K - 1 "
        "draws of q and the current z, picked in proportion to p(x,z)/q(z|x): the chain then keeps the model's own "
        "p(x,z) invariant however far q is from p(z|x), and costs about K times as much; the summary says how "
        "often it moved.")),
    gap: int = typer.Option(100, min=0, help="Test images on which to measure how far q(z|x) is from the model's "
                            f"own posterior p(z|x) (IW bound, K={gibbs_lib.GAP_K}; per level on a Markov HVAE): "
                            "why a chain drifts from the model. Reads the test images; 0 skips it."),
    device: str = DEVICE,
    data_dir: Optional[Path] = DATA_DIR,
    progress: bool = PROGRESS,
    json_out: bool = JSON,
) -> None:
    """Figure 2: a Gibbs chain on the bottom level only, z_1 ~ q(z_1|x_t), x_{t+1} ~ p(x|z_1) (eq. 6),
    beside ancestral samples of the whole model; --whole: on every level, z ~ q(z|x_t), x_{t+1} ~ p(x|z)
    (Proposition 2). Images show the mean of p(x|z); the chain goes on with a sample of it. Prints
    sample-quality scores from a small MNIST classifier (trained once, cached)."""
    with user_errors():
        check_writable(out_path)
        if ckpt is None:
            ckpt, trained = runs.default_hvae(data_dir, device, progress)
            err.print(f"{'trained' if trained else 'reusing'} {runs.describe(ckpt)}", highlight=False)
        model, info = load(ckpt, device, out_path)
        gibbs_lib.check_hvae(model, whole)
        check_request(chains * (2 + (steps // every if every else 0)), model.cfg.image_shape, ".npz",
                      f"--chains {chains}")
        data = load_for_checkpoint(info, "test", data_dir) if value(init) == "data" or gap else None
        gaps = gibbs_lib.posterior_gap(model, data, gap, seed=seed) if gap else None
        res = gibbs_lib.run_gibbs(model, data, chains, steps, every, value(init), value(feed), seed, whole, particles)
        moved, starts = res.pop("moved", None), res.pop("start")
        left = res["states"] if every else res["gibbs"]
        on = ("all of z" if whole else "z_1") + (f", i-SIR K={particles}" if particles > 1 else "")
        label = f"Gibbs on {on}, rows every {every} steps" if every else f"Gibbs on {on}, {steps} steps"
        path = save_panels([(label, left), ("ancestral, all levels", res["ancestral"])], out_path, **res)
        quality = score_samples({k: res[k] for k in ("gibbs", "ancestral")}, info.config.dataset,
                                checkpoint_data_dir(info, data_dir), progress,
                                starts if value(init) == "data" else None)
    if json_out:
        return print_json({"out": str(path), "chains": chains, "steps": steps, "init": value(init),
                           "feed": value(feed), "whole": whole, "particles": particles, "moved": moved,
                           **(quality or {"scores": None}), "posterior_gap": gaps})
    out.print(f"wrote {chains} Gibbs-chain samples ({steps} steps on {'every level' if whole else 'z_1'} from "
              f"{value(init)}) and {chains} ancestral samples to {path}", highlight=False)
    if moved is not None:
        out.print(f"i-SIR with K={particles}: a fresh draw of q replaced the chain's z in {moved:.1%} of the steps "
                  "after the first (the rest kept z and redrew only x)", highlight=False)
    if quality is None:
        out.print("no quality scores: the classifier knows MNIST only")
    else:
        s = quality["scores"]
        out.print(f"sample quality (MNIST classifier, {quality['classifier_accuracy']:.2%} test accuracy): mean "
                  f"max-softmax confidence, entropy of predicted classes (max {s['gibbs']['max_entropy']:.2f} nats)",
                  highlight=False)
        for name, q in s.items():
            out.print(f"  {name:9s}  confidence {q['confidence']:.3f}  class entropy {q['class_entropy']:.2f}  "
                      f"classes {q['histogram']}", highlight=False, markup=False)
        if "same_class_as_start" in quality:
            out.print(f"  {quality['same_class_as_start']:.0%} of the chains end in the class of the test image they "
                      "started from", highlight=False)
    if gaps:
        out.print(f"posterior gap on {gaps['images']} test images (IW bound, K={gaps['k']}): log p(x) - ELBO = "
                  f"KL(q(z|x) || p(z|x)) = {gaps['total']:.2f} nats", highlight=False)
        if gaps["levels"]:
            split = ", ".join(f"level {l}: {v:.2f}" for l, v in enumerate(gaps["levels"], 1))
            out.print(f"  by level, KL(q(z_l|z_l-1) || p(z_l|z_l-1)): {split}; level 1's is how far q(z_1|x) is "
                      "from p(z_1|x), the error of the chain on z_1 (0 at the ELBO's optimum)", highlight=False)


@app.command()
def evaluate(
    ckpt: Path = CKPT,
    split: Split = SPLIT,
    data_dir: Optional[Path] = DATA_DIR,
    seed: int = typer.Option(0, min=0, help="Seed of the one z sample per image."),
    device: str = DEVICE,
    json_out: bool = JSON,
) -> None:
    """The ELBO (eq. 14) and reconstruction error of a checkpoint on a data split (what `train` prints at the end).
    The ELBO is log-likelihood-like: higher is better (a negative loss)."""
    with user_errors():
        model, info = load(ckpt, device)
        r = evaluate_model(model, load_for_checkpoint(info, value(split), data_dir), seed=seed)
    split = value(split)
    if json_out:
        return print_json({"split": split, "step": info.step, **r})
    kl = ", ".join(f"{v:.2f}" for v in r["kl"])
    out.print(f"{split} ELBO {r['elbo']:.2f} nats/image  (-log r(x|z) {r['recon_nll']:.2f}, KL per level [{kl}])",
              highlight=False, markup=False)
    out.print(f"{split} reconstruction error: {r['mse']:.5f} mean squared error per pixel  "
              f"({r['images']} images, checkpoint at step {info.step})", highlight=False)


@app.command()
def info(
    path: Path = typer.Argument(..., help="A run folder or a ckpt.safetensors.", show_default=False),
    json_out: bool = JSON,
) -> None:
    """What a run or checkpoint holds: model, config, step of total, data set, metrics, file size, and
    whether it can be resumed exactly (optimizer and RNG state)."""
    with user_errors():
        d = rundir.describe(path)
    if json_out:
        return print_json(d)
    test, last = d["metrics"].get("test") or {}, d["metrics"].get("train") or {}
    rows = [
        ("checkpoint", f"{d['checkpoint']} ({d['file_bytes'] / 1e6:.1f} MB)"),
        ("model", f"{d['model']}, {len(d['latent_dims'])} levels, code widths {d['latent_dims']} (bottom first), "
                  f"likelihood {d['config'].get('output')}"),
        ("data set", f"{d['dataset']}" + (f" from {d['data_dir']}" if d["data_dir"] else "")),
        ("step", f"{d['step']} of {d['total_steps']}" + (" (finished)" if d["finished"] else " (unfinished)")),
        ("training", ", ".join(f"{k} {d['train'][k]}" for k in ("recipe", "schedule", "stage_steps", "fade_steps",
                                                               "kl_anneal", "warmup", "kl_scale", "batch_size", "lr",
                                                               "seed") if d["train"].get(k) is not None)),
        ("last train line", f"loss {last['loss']:.2f} (KL weight {last.get('kl_weight', '?')})" if "loss" in last else "none"),
        ("test ELBO", f"{test['elbo']:.2f} nats/image, MSE {test['mse']:.5f} per pixel" if "elbo" in test else "not evaluated"),
        ("holds", ("optimizer state" if d["optimizer_state"] else "no optimizer state (cannot resume exactly)")
                  + (", RNG state" if d["rng_state"] else ", no RNG state")),
    ]
    if "metrics_file" in d:
        rows.append(("metrics", f"{d['metrics_file']} ({d['metrics_lines']} lines)"))
    if "settings_file" in d:
        rows.append(("settings", d["settings_file"]))
    for k, v in rows:
        out.print(f"{k + ':':17s}{v}", highlight=False, markup=False)


app.command()(explore_cli.explore)
app.command()(explore_cli.swap)
app.command()(explore_cli.export)


app.command("eval")(eval_cmd)
app.command("compare")(compare_cmd)


def main() -> None:
    app()

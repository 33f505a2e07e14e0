"""What every `vlae` command shares: its options, their checks, and the one way to turn a library error
into one line on stderr with exit code 2.

A command reads as: options (checked here, by Typer, before anything runs) -> `with user_errors():`
load, call the library, save -> print. New commands take the options and helpers below as they are.
"""
from __future__ import annotations

import json
import re
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from typer.core import TyperGroup

from vlae_fast.checkpoint import load_model
from vlae_fast.config import PRECISIONS
from vlae_fast.recipes import RECIPES
from vlae_fast.schedule import ANNEALS, FIRST_TARGETS, LR_DECAYS, SCHEDULES, TOP_LR_SCOPES
from vlae_fast.data import LOADERS
from vlae_fast.errors import TrainingStopped, VlaeError
from vlae_fast.gibbs import FEEDS, INITS
from vlae_fast.images import check_writable
from vlae_fast.kernels import BACKENDS
from vlae_fast.models import REGISTRY
from vlae_fast.models.likelihood import OUTPUTS
from vlae_fast.rundir import checkpoint_path
from vlae_fast.train import resolve_device

out = Console(soft_wrap=True)  # results: never wrapped at 80 columns when piped
err = Console(stderr=True, soft_wrap=True)


# --- choices: Enums, so that --help lists them and Typer refuses anything else ------------------------
def choices(name: str, values) -> type[Enum]:
    return Enum(name, {v: v for v in values}, type=str)


Dataset = choices("Dataset", LOADERS)
Model = choices("Model", REGISTRY)
Likelihood = choices("Likelihood", OUTPUTS)
Join = choices("Join", ("concat", "gated_add"))
TopEncoder = choices("TopEncoder", ("shared", "separate"))
LrDecay = choices("LrDecay", LR_DECAYS)
TopLrScope = choices("TopLrScope", TOP_LR_SCOPES)
FirstTarget = choices("FirstTarget", FIRST_TARGETS)
Kernels = choices("Kernels", BACKENDS)
Split = choices("Split", ("train", "test"))
Init = choices("Init", INITS)
Feed = choices("Feed", FEEDS)
Precision = choices("Precision", PRECISIONS)
Anneal = choices("Anneal", ANNEALS)
Schedule = choices("Schedule", SCHEDULES)
Recipe = choices("Recipe", RECIPES)


def value(v):
    """An Enum option's string (None stays None)."""
    return v.value if isinstance(v, Enum) else v


# --- value checks: typer.BadParameter, so Typer's message names the option ---------------------------
def positive(v: float | None) -> float | None:
    if v is not None and not v > 0:
        raise typer.BadParameter(f"must be greater than 0; got {v:g}")
    return v


def device_name(v: str | None) -> str | None:
    if v is not None and not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
        raise typer.BadParameter(f"must be auto, cpu, cuda or cuda:N; got {v!r}")
    return v


def code_widths(text: str | None) -> str | None:
    """'2' or '2,2,4': checked here, parsed by parse_dims."""
    if text is not None:
        parse_dims(text)
    return text


def per_level(text: str | None, cast: type, least: float, example: str, what: str) -> list | None:
    """One value per level from '2' or '2,2,4' (spaces ignored), each cast and at least `least`; None stays None.
    typer.BadParameter names the expected form (`example`) or the bound (`what`)."""
    if text is None:
        return None
    try:
        values = [cast(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise typer.BadParameter(f"expected {example}; got {text!r}") from None
    if not values or min(values) < least:
        raise typer.BadParameter(f"{what}; got {text!r}")
    return values


def parse_dims(text: str | None) -> list[int] | None:
    return per_level(text, int, 1, "an integer or a comma-separated list like 2,2,2",
                     "code widths must be positive integers")


def parse_factors(text: str | None) -> list[float] | None:
    """'2,1,1' -> [2.0, 1.0, 1.0]: one factor >= 0 per level."""
    return per_level(text, float, 0, "numbers like 2,1,1 (one per level, bottom first)",
                     "KL factors must be numbers >= 0")


def parse_nats(text: str | None) -> list[float] | None:
    """--free-bits '5,5,0' -> [5.0, 5.0, 0.0]: nats >= 0 per level."""
    return per_level(text, float, 0, "numbers like 5,5,0 (nats per level, bottom first)",
                     "free bits must be numbers of nats >= 0")


def checked_by(parse):
    """A typer callback that checks an option's text with `parse` (raising its BadParameter) and keeps the text."""
    def check(text: str | None) -> str | None:
        if text is not None:
            parse(text)
        return text
    return check


kl_factors = checked_by(parse_factors)  # --kl-scale
free_bits_option = checked_by(parse_nats)  # --free-bits


def parse_targets(text: str | None) -> list[float] | None:
    """--kl-target '0,0,4.5' -> [0.0, 0.0, 4.5]: nats >= 0 per level (0: no target)."""
    return per_level(text, float, 0, "numbers like 0,0,4.5 (nats per level, bottom first; 0 = no target)",
                     "KL targets must be numbers of nats >= 0")


kl_targets = checked_by(parse_targets)  # --kl-target


# --- options several commands take --------------------------------------------------------------------
def flag(default: bool, *names: str, help: str) -> bool:
    """A boolean flag shown as a flag in --help (no '<bool>' type column)."""
    return typer.Option(default, *names, help=help, metavar="")


def _as_flag(option):
    if option is not None:
        option.metavar = ""  # -h/--help is a flag too
    return option


class Group(TyperGroup):
    """The app's command group: shows -h/--help as a flag, in its own help and in every command's."""

    def get_help_option(self, ctx):
        return _as_flag(super().get_help_option(ctx))

    def get_command(self, ctx, name):
        cmd = super().get_command(ctx, name)
        if cmd is not None and not hasattr(cmd, "_help_as_flag"):
            base = cmd.get_help_option
            cmd.get_help_option = lambda c: _as_flag(base(c))
            cmd._help_as_flag = True
        return cmd


CKPT = typer.Argument(..., help="A run folder, or the ckpt.safetensors `vlae train` wrote in it.", show_default=False)
DEVICE = typer.Option("auto", help="auto (cuda if available), cpu, cuda or cuda:N.", callback=device_name)
KERNELS = typer.Option(None, help="Fused ops: auto (Triton on CUDA, PyTorch elsewhere), triton or torch; "
                       "default $VLAE_KERNELS, else auto.")
DATA_DIR = typer.Option(None, "--data-dir", exists=True, file_okay=False,
                        help="Folder holding the data set's files (else the folder the checkpoint was trained on, "
                        "else $VLAE_DATA_DIR, else the user cache).")
SEED = typer.Option(0, min=0, help="Random seed.")
SPLIT = typer.Option("test", help="Data split.")
JSON = flag(False, "--json", help="Print the figures as one JSON object on stdout (progress stays on stderr).")
PROGRESS = flag(True, "--progress/--no-progress", help="Show progress on stderr (a bar in a terminal, "
                "else plain lines).")


# --- errors and the load/try/save pattern -------------------------------------------------------------
def fail(e: Exception) -> typer.Exit:
    """One line on stderr and exit code 2: what went wrong and what to do."""
    err.print(f"[bold red]error:[/] {e}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(code=2)


@contextmanager
def user_errors() -> Iterator[None]:
    """Run library calls; a VlaeError becomes one line on stderr and exit 2 (TrainingStopped: its own exit
    code, 128 + signal after Ctrl-C). Anything else is a bug and keeps its traceback."""
    try:
        yield
    except TrainingStopped as e:
        err.print(f"[bold yellow]stopped:[/] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=e.exit_code)
    except VlaeError as e:
        raise fail(e) from None


def load(ckpt: Path, device: str, out: Path | None = None, suffixes: tuple[str, ...] | None = None):
    """Check `out` can be written (before any work; suffixes: those allowed, default the image writer's),
    then load the model of a checkpoint or run folder onto the device: (model, Checkpoint). Call inside
    `user_errors()`."""
    if out is not None:
        check_writable(out, *([suffixes] if suffixes else []))
    return load_model(checkpoint_path(ckpt), resolve_device(device))


def print_json(obj) -> None:
    """One JSON object on stdout, unwrapped, for scripts."""
    print(json.dumps(obj, default=str))


def given(ctx: typer.Context) -> set[str]:
    """Names of the parameters set on the command line or by --config (not left at their defaults)."""
    return {name for name in ctx.params
            if (src := ctx.get_parameter_source(name)) is not None and src.name in ("COMMANDLINE", "DEFAULT_MAP")}

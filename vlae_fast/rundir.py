"""Run folders: what `vlae train` is about to do with one (start, resume, refuse to overwrite), the run's
settings file, and what `vlae info` says about a run or a checkpoint.

A run folder holds ckpt.safetensors, metrics.jsonl, settings.toml (the options of the run, readable by
`vlae train --config`) and, with --tensorboard, tensorboard/.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, fields, replace
from pathlib import Path

from . import schedule
from .checkpoint import CKPT_NAME, Checkpoint, read_checkpoint, tensor_names
from .data import data_options, image_shape_of
from .errors import CheckpointError, ConfigError
from .models import REGISTRY, default_config, default_lr, model_for
from .models.vlae import FlatPriorLadder
from .recipes import recipe_options, resolve
from .resume import OVERRIDABLE, plan_resume, remove_stale_temps

METRICS_NAME = "metrics.jsonl"
SETTINGS_NAME = "settings.toml"
TENSORBOARD_NAME = "tensorboard"
RUN_FILES = (CKPT_NAME, METRICS_NAME, SETTINGS_NAME, TENSORBOARD_NAME)  # what --overwrite deletes, and nothing else

# The model and data options of `vlae train`, fixed for the life of a run (a resumed run takes them from
# its checkpoint), as the command line spells them.
MODEL_OPTIONS = ("model", "layers", "latent_dim", "likelihood", "join", "top_encoder", "hidden", "batch_size", "warmup", "seed",
                 "train_limit", "image_size", "grayscale", "rgb", "svhn_extra", "precision", "recipe", "kl_anneal",
                 "schedule", "stage_steps", "fade_steps", "pre_kl", "first_kl", "input_noise", "free_bits",
                 "level_warmup", "gate_init", "kl_target", "kl_target_rate", "kl_target_start", "top_lr",
                 "top_lr_scope", "lr_decay", "lr_decay_start", "first_target", "first_levels")


@dataclass
class RunPlan:
    """Everything `train()` needs: the model config, the training options, the checkpoint to go on from."""

    model_cfg: object
    train_cfg: "TrainConfig"
    start: Checkpoint | None
    run_dir: Path


def default_run_dir(dataset: str, model: str) -> Path:
    return Path("runs") / f"{dataset}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"


def checkpoint_path(path: str | Path) -> Path:
    """A run folder means its ckpt.safetensors; a file means itself. CheckpointError if neither exists."""
    path = Path(path)
    if path.is_dir():
        if not (path / CKPT_NAME).is_file():
            raise CheckpointError(f"{path} is a folder without a {CKPT_NAME}; pass a run folder that `vlae train` "
                                  "has saved a checkpoint in, or the checkpoint file itself")
        return path / CKPT_NAME
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}; pass a run folder or the ckpt.safetensors written by `vlae train`")
    return path


def run_files(run_dir: Path) -> list[str]:
    """The run files (RUN_FILES) that `run_dir` already holds."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_run_dir(run_dir: str | Path, overwrite: bool = False, resuming_from: str | Path | None = None) -> None:
    """Refuse to start a run in a folder that already holds one, unless it is the run being resumed or
    --overwrite was given. Touches nothing."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    if resuming_from is not None and Path(resuming_from).resolve().parent == run_dir.resolve():
        return  # the run goes on in its own folder
    held = run_files(run_dir)
    if held and not overwrite:
        raise ConfigError(f"--out {run_dir} already holds a run ({', '.join(held)}); continue it with "
                          f"--resume {run_dir}, or pass --overwrite to delete it and start afresh")


def start_run_dir(run_dir: str | Path, overwrite: bool = False, resuming_from: str | Path | None = None) -> None:
    """Create the run folder (and its parents), deleting the old run's files first if --overwrite allows it.
    Called once training is about to start, so a command that fails earlier leaves nothing behind."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir, overwrite, resuming_from)
    fresh = resuming_from is None or Path(resuming_from).resolve().parent != run_dir.resolve()
    if fresh and overwrite:
        for name in run_files(run_dir):
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        remove_stale_temps(run_dir / CKPT_NAME)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / METRICS_NAME).touch()
    except OSError as e:
        raise ConfigError(f"--out {run_dir}: cannot write there ({e.strerror}); choose another folder") from None


def takes_option(model: str, name: str) -> bool:
    """Whether the model's config has field `name` (e.g. join)."""
    return name in {f.name for f in fields(REGISTRY[model][0])}


def plan_run(dataset: str, options: dict, given: set[str] | frozenset[str] = frozenset(), resume: str | Path | None = None,
             out: str | Path | None = None, restart_optimizer: bool = False) -> RunPlan:
    """What `vlae train` does: a fresh run from `options` (the command's options by their Python names,
    None = the default), or the run saved at `resume` (a run folder or checkpoint), where only the
    OVERRIDABLE options in `given` (those set on the command line or in --config) may change.

    Fresh: the data set's model defaults (models.default_config), the model's own learning rate.
    Refused: --join for a model without one; model or data options together with --resume; a checkpoint
    without optimizer state (unless restart_optimizer). train() refuses a run folder holding another run."""
    from .config import TrainConfig

    o = dict(options)
    if o.get("grayscale") and o.get("rgb"):
        raise ConfigError("--grayscale and --rgb contradict each other; give one of them")
    if resume is not None:
        fixed = sorted(k for k in given if k in MODEL_OPTIONS)
        if fixed:
            names = ", ".join("--" + k.replace("_", "-") for k in fixed)
            raise ConfigError(f"{names}: a resumed run keeps the model and data options of its checkpoint; "
                              f"drop {names}, or start a new run with --out")
        overrides = {k: o.get(k) for k in OVERRIDABLE if k in given}
        if overrides.get("data_dir") is not None:
            overrides["data_dir"] = str(overrides["data_dir"])  # stored in the checkpoint's JSON metadata
        model_cfg, cfg, start = plan_resume(resume, dataset, restart_optimizer=restart_optimizer, **overrides)
        if o.get("kernels") is not None:
            cfg.kernels = o["kernels"]
        if o.get("compile") is not None:  # how the step runs, not what it computes: a resumed run may change it
            cfg.compile = o["compile"]
        run_dir = Path(out) if out is not None else Path(start.path).parent
        return RunPlan(model_cfg, cfg, start, run_dir)  # train() checks run_dir (on rank 0 alone, under torchrun)

    model = o.get("model") or "vlae"
    if o.get("join") is not None and model in REGISTRY and not takes_option(model, "join"):
        raise ConfigError(f"--join applies to ladder models (vlae) only; the {model} model has no ladder join, "
                          "so drop --join")
    if o.get("top_encoder") is not None and model in REGISTRY and not takes_option(model_for(dataset, model), "top_encoder"):
        raise ConfigError(f"--top-encoder applies to the MNIST ladder (vlae) only; the {model_for(dataset, model)} model "
                          "has no such option, so drop --top-encoder")
    run_dir = Path(out) if out is not None else default_run_dir(dataset, model)
    color = "grayscale" if o.get("grayscale") else "rgb" if o.get("rgb") else None
    opts = data_options(dataset, o.get("image_size"), color, bool(o.get("svhn_extra")))
    shape = image_shape_of(dataset, o.get("data_dir"), **opts)
    ladder = model in REGISTRY and issubclass(REGISTRY[model][1], FlatPriorLadder)
    recipe, r = recipe_options(dataset, o.get("recipe"), "ladder" if ladder else "hvae")
    if model_for(dataset, model) != "vlae":
        for k in ("join", "hidden", "gate_init", "kl_target", "first_target"):  # the MNIST MLP ladder's: the conv
            r.pop(k, None)  # ladders keep their concat and widths, their KL is not held and their first stage sees x
    if (shape is not None and shape[0] != 1) or o.get("schedule") == "plain":
        r.pop("first_target", None)  # the recipe's style normalisation: grey images, and a first stage to act on
    if o.get("join") not in (None, "gated_add"):
        r.pop("gate_init", None)  # the recipe's gate goes with its join: --join concat drops it
    if o.get("free_bits") is not None:
        r.pop("kl_target", None)  # a level's KL is free up to a budget or held at a target: --free-bits drops the target
    own_target = o.get("first_target")
    o = {**{k: v for k, v in r.items()}, **{k: v for k, v in o.items() if v is not None}}  # given options win
    model_extra = {k: o[k] for k in ("join", "hidden", "top_encoder") if o.get(k) is not None and takes_option(model, k)}
    model_cfg = default_config(dataset, model, o.get("layers"), o.get("latent_dims"),
                               output=o.get("likelihood") or "gaussian", image_shape=shape, **model_extra)
    d = TrainConfig
    o = {k: resolve(v, model_cfg.layers, o.get("steps") or d.steps) for k, v in o.items()}  # a recipe's functions
    lr = o.get("lr")
    cfg = TrainConfig(dataset=dataset, steps=o.get("steps") or d.steps, batch_size=o.get("batch_size") or d.batch_size,
                      lr=lr if lr is not None else default_lr(model) or d.lr, warmup=o.get("warmup"),
                      seed=o.get("seed") or 0, device=o.get("device") or "auto",
                      save_every=d.save_every if o.get("save_every") is None else o["save_every"],
                      log_every=o.get("log_every") or d.log_every,
                      data_dir=str(o["data_dir"]) if o.get("data_dir") else None,
                      train_limit=o.get("train_limit"), eval_limit=o.get("eval_limit"),
                      grad_clip=o.get("grad_clip") or 0.0, kernels=o.get("kernels"), data_options=opts,
                      compile=bool(o.get("compile")), precision=o.get("precision") or d.precision, recipe=recipe,
                      **{k: o[k] for k in ("kl_anneal", "schedule", "stage_steps", "fade_steps", "pre_kl", "first_kl",
                                           "input_noise", "kl_scale", "free_bits", "level_warmup", "gate_init", "kl_target",
                                           "kl_target_rate", "kl_target_start", "top_lr", "top_lr_scope", "lr_decay",
                                           "lr_decay_start", "first_target", "first_levels")
                         if k in o})
    if own_target is None:  # an explicit --first-target without a first stage is refused by train()
        drop_target_without_first_stage(cfg, model_cfg.layers)
    return RunPlan(model_cfg, cfg, None, run_dir)


def drop_target_without_first_stage(cfg, layers: int) -> None:
    """The recipe's --first-target needs a first stage to act on: a run shorter than its levels (stages of 0 steps)
    or of one level has none, and then trains on x (cfg.first_target = "x")."""
    if cfg.first_target == "x":
        return
    staged = replace(cfg)
    staged.resolve_stages(layers)
    if schedule.first_stage_end(staged, layers) == 0:
        cfg.first_target = "x"


# --- the settings file ---------------------------------------------------------------------------------

def settings_of(model_cfg, cfg: TrainConfig) -> dict:
    """The `vlae train` options that rebuild this run, by their command-line names (None left out)."""
    dims = list(model_cfg.latent_dims)
    s = {"dataset": cfg.dataset, "model": model_cfg.model, "layers": len(dims),
         "latent-dim": ",".join(str(d) for d in dims), "likelihood": model_cfg.output,
         "join": getattr(model_cfg, "join", None) if takes_option(model_cfg.model, "join") else None,
         "top-encoder": getattr(model_cfg, "top_encoder", "shared") if getattr(model_cfg, "top_encoder", "shared") != "shared"
                        else None,
         "steps": cfg.steps, "batch-size": cfg.batch_size, "lr": cfg.lr, "warmup": cfg.warmup, "seed": cfg.seed,
         "grad-clip": cfg.grad_clip, "save-every": cfg.save_every, "log-every": cfg.log_every,
         "data-dir": cfg.data_dir, "train-limit": cfg.train_limit, "eval-limit": cfg.eval_limit,
         "kernels": cfg.kernels, "image-size": cfg.data_options.get("image_size"),
         "grayscale": cfg.data_options.get("color") == "grayscale" or None,
         "rgb": cfg.data_options.get("color") == "rgb" or None, "svhn-extra": cfg.data_options.get("extra"),
         "compile": cfg.compile or None, "precision": cfg.precision, "hidden": model_cfg.hidden,
         "recipe": cfg.recipe, "kl-anneal": cfg.kl_anneal, "schedule": cfg.schedule,
         "kl-scale": ",".join(f"{b:g}" for b in cfg.kl_scale) if cfg.kl_scale else None,
         "input-noise": cfg.input_noise or None, "gate-init": cfg.gate_init,
         "free-bits": ",".join(f"{b:g}" for b in cfg.free_bits) if cfg.free_bits and any(cfg.free_bits) else None,
         # an option the recipe sets is written even at its "off" value, else --config would bring the recipe's back
         "kl-target": ",".join(f"{t:g}" for t in cfg.kl_target) if cfg.kl_target
                      else ",".join(["0"] * len(dims)) if model_cfg.model == "vlae" else None,
         "kl-target-rate": cfg.kl_target_rate if cfg.kl_target else None,
         "kl-target-start": cfg.kl_target_start if cfg.kl_target and cfg.kl_target_start else None,
         "lr-decay": cfg.lr_decay if cfg.lr_decay != "none" else None,
         "lr-decay-start": cfg.lr_decay_start if cfg.lr_decay != "none" and cfg.lr_decay_start else None}
    if cfg.schedule == "progressive":
        s.update({"stage-steps": cfg.stage_steps, "fade-steps": cfg.fade_steps, "pre-kl": cfg.pre_kl,
                  "first-kl": cfg.first_kl if cfg.first_kl != 1 else None, "level-warmup": cfg.level_warmup or None,
                  "top-lr": cfg.top_lr if cfg.top_lr != 1 else None,
                  "top-lr-scope": cfg.top_lr_scope if cfg.top_lr_scope != "all" else None,
                  "first-target": cfg.first_target,  # "x" too: the recipe's is normalize
                  "first-levels": cfg.first_levels if cfg.first_levels != 1 else None})
    return {k: v for k, v in s.items() if v is not None}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # a JSON string is a valid TOML basic string


def write_settings(run_dir: str | Path, model_cfg, cfg: TrainConfig) -> Path:
    """run_dir/settings.toml: the run's options, so `vlae train --config run_dir/settings.toml` repeats it."""
    path = Path(run_dir) / SETTINGS_NAME
    lines = ["# The options of this run, written by `vlae train`; repeat it with:",
             f"#   vlae train --config {path} --out NEW_FOLDER   (options given on the command line win)"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in settings_of(model_cfg, cfg).items()]
    tmp = path.with_suffix(".toml.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)
    return path


def read_settings(path: str | Path) -> dict:
    """A settings file's options as {python_name: value}; ConfigError for a missing or malformed file."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib
        except ModuleNotFoundError:
            raise ConfigError("--config needs Python 3.11 (tomllib) or the tomli package on 3.10") from None
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"--config {path}: cannot read it ({e.strerror})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
    nested = sorted(k for k, v in data.items() if isinstance(v, dict))
    if nested:
        raise ConfigError(f"--config {path}: tables {nested} are not options; write `key = value` lines only")
    return {k.replace("-", "_"): v for k, v in data.items()}


# --- vlae info ------------------------------------------------------------------------------------------

def describe(path: str | Path) -> dict:
    """What a run folder or checkpoint holds, for `vlae info`: model, config, step of total, data set,
    latest metrics, file size, and whether it can be resumed (optimizer and RNG state)."""
    ckpt_path = checkpoint_path(path)
    ckpt = read_checkpoint(ckpt_path, weights_only=True)  # what else it holds, from the header alone
    names = tensor_names(ckpt_path)
    optim = any(n.startswith("optim.") for n in names)
    total = ckpt.train.get("steps")
    info = {
        "checkpoint": str(ckpt_path),
        "file_bytes": ckpt_path.stat().st_size,
        "model": ckpt.config.model,
        "dataset": ckpt.config.dataset,
        "latent_dims": list(ckpt.config.latent_dims),
        "config": ckpt.config.to_dict(),
        "step": ckpt.step,
        "total_steps": total,
        "finished": total is not None and ckpt.step >= total,
        "data_dir": ckpt.train.get("data_dir"),
        "train": ckpt.train,
        "metrics": ckpt.metrics,
        "optimizer_state": optim,
        "rng_state": any(n.startswith("rng.") for n in names),
        "resumable": optim and ckpt.train.get("seed") is not None,
    }
    run_dir = ckpt_path.parent
    metrics = run_dir / METRICS_NAME
    if metrics.is_file():
        info["metrics_file"] = str(metrics)
        info["metrics_lines"] = sum(1 for _ in metrics.open())
    if (run_dir / SETTINGS_NAME).is_file():
        info["settings_file"] = str(run_dir / SETTINGS_NAME)
    return info

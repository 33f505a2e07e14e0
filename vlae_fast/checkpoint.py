"""The one checkpoint format: a safetensors file, never a pickle.

Tensors:  model.<name>                 every parameter and buffer of the model
          optim.<i>.<key>              the optimizer's per-parameter state (Adam: step, exp_avg, exp_avg_sq)
          rng.<which>                  random-generator states as uint8 tensors, for resuming: rng.cpu and
                                       rng.cuda.<i> (one process), rng.rank<r>.cpu / .cuda (DDP)
          control.<name>               the KL controller's state (kl_control.py), for resuming a run with --kl-target
Metadata (all JSON strings): format, config (the model config), train (training options), step,
          optim (param-group hyper-parameters), metrics (latest training / evaluation figures), versions.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as st_save
from torch import nn

from .errors import CheckpointError, ConfigError
from .models import build_model, make_config

FORMAT = "vlae-fast/1"
CKPT_NAME = "ckpt.safetensors"  # the file `vlae train` writes in its run folder


@dataclass
class Checkpoint:
    config: object  # the model config dataclass
    model_state: dict[str, torch.Tensor]
    optim_state: dict[str, torch.Tensor] = field(default_factory=dict)
    optim_meta: dict = field(default_factory=dict)
    step: int = 0
    train: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    rng: dict[str, torch.Tensor] = field(default_factory=dict)  # 'cpu', 'cuda.<i>' -> uint8 state
    control: dict[str, torch.Tensor] = field(default_factory=dict)  # the KL controller's state; empty without one
    path: str = ""  # the file it was read from, for messages


def _optim_tensors(optimizer: torch.optim.Optimizer | None) -> tuple[dict[str, torch.Tensor], dict]:
    if optimizer is None:
        return {}, {}
    sd = optimizer.state_dict()
    tensors = {}
    for i, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{i}.{key}"] = t.detach().cpu().contiguous()
    return tensors, {"param_groups": sd["param_groups"]}


def save_checkpoint(path: str | Path, model: nn.Module, *, optimizer: torch.optim.Optimizer | None = None,
                    step: int = 0, train: dict | None = None, metrics: dict | None = None,
                    rng: dict[str, torch.Tensor] | None = None,
                    control: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model (+ optimizer, + RNG states) to `path` atomically: temp file in the same folder, fsync,
    rename. A kill at any instant leaves either the previous file or the new one, never a mix."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    optim_tensors, optim_meta = _optim_tensors(optimizer)
    tensors.update(optim_tensors)
    tensors.update({f"rng.{k}": v.detach().cpu().contiguous() for k, v in (rng or {}).items()})
    tensors.update({f"control.{k}": v.detach().cpu().contiguous() for k, v in (control or {}).items()})
    meta = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict()),
        "train": json.dumps(train or {}),
        "step": str(int(step)),
        "optim": json.dumps(optim_meta),
        "metrics": json.dumps(metrics or {}),
        "versions": json.dumps({"torch": torch.__version__}),
    }
    blob = st_save(tensors, metadata=meta)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise CheckpointError(f"cannot write a checkpoint in {path.parent}: {e.strerror}; choose a writable --out") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; a checkpoint is an ordinary file
        with os.fdopen(fd, "wb") as f:
            f.write(blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # make the rename itself durable
        finally:
            os.close(dir_fd)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _json(meta: dict, key: str, path: Path) -> dict:
    try:
        value = json.loads(meta[key])
    except KeyError:
        raise CheckpointError(f"{path}: metadata has no {key!r} entry; not a complete vlae-fast checkpoint") from None
    except (json.JSONDecodeError, RecursionError):
        raise CheckpointError(f"{path}: metadata {key!r} is not valid JSON; the file is corrupt") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path}: metadata {key!r} should be a JSON object, not {type(value).__name__}; "
                              "the file is corrupt")
    return value


# What a malformed safetensors file raises from the reader (the Rust side's errors, or a header that
# decodes to nonsense); read_checkpoint turns each into a CheckpointError.
UNREADABLE = (SafetensorError, OSError, ValueError, RuntimeError, OverflowError, MemoryError, RecursionError)


def read_safetensors(path: str | Path, keep: Callable[[str], bool] = lambda name: True
                     ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The one safetensors reader: a file's tensors whose names `keep` accepts, and its metadata (the JSON
    header's __metadata__, {} if none). Lazy (safe_open): the header is validated against the file size, and
    only the kept tensors' bytes are read. Raises one of UNREADABLE for a file that is not safetensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    return tensors, meta


def tensor_names(path: str | Path) -> list[str]:
    """The names of a safetensors file's tensors, from its header alone (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return list(f.keys())
    except UNREADABLE as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({msg}); it may be truncated or corrupt") from None


def read_checkpoint(path: str | Path, weights_only: bool = False) -> Checkpoint:
    """Read and validate a checkpoint file without building a model. Raises CheckpointError.

    weights_only: read the model's tensors alone (inference: sample, traverse, evaluate ...), leaving the
    optimizer's moments, the RNG states and the KL controller in the file; optim_state, rng and control are then empty."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; pass the ckpt.safetensors written by `vlae train`")
    try:
        tensors, meta = read_safetensors(path, (lambda k: k.startswith("model.")) if weights_only else (lambda k: True))
    except UNREADABLE as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is not a readable safetensors file ({msg}); it may be truncated or corrupt") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a safetensors file but not a vlae-fast checkpoint (format {meta.get('format')!r})")
    try:
        config = make_config(_json(meta, "config", path))
        step = int(meta.get("step", "0"))
    except (ConfigError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: {e}") from None
    if step < 0:
        raise CheckpointError(f"{path}: metadata step is {step}, a negative step count; the file is corrupt")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = {k[len("optim."):]: v for k, v in tensors.items() if k.startswith("optim.")}
    rng = {k[len("rng."):]: v for k, v in tensors.items() if k.startswith("rng.")}
    control = {k[len("control."):]: v for k, v in tensors.items() if k.startswith("control.")}
    return Checkpoint(config, model_state, optim_state, _json(meta, "optim", path), step,
                      _json(meta, "train", path), _json(meta, "metrics", path), rng, control, str(path))


def expected_state(config, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict the config's model has, built on the meta device: shapes and dtypes, no memory, so a
    config claiming huge widths costs nothing before it is checked against the file's tensors."""
    try:
        with torch.device("meta"):
            return build_model(config).state_dict()
    except (RuntimeError, ValueError, TypeError, ZeroDivisionError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path}: its {config.model} config describes no buildable model ({msg}); "
                              "the file is corrupt or from another version") from None


EXPORT_DTYPES = (torch.float16, torch.bfloat16)  # what `vlae export --dtype` may store a float32 weight as


def _dtype_fits(stored: torch.dtype, expected: torch.dtype) -> bool:
    """A weight fits in its own dtype, or exported at half precision (loading widens it again)."""
    return stored == expected or (stored in EXPORT_DTYPES and expected == torch.float32)


def check_fits(expected: dict[str, torch.Tensor], ckpt: Checkpoint, path: str | Path) -> None:
    """CheckpointError naming every missing, unexpected and wrongly shaped or typed tensor at once."""
    missing = sorted(set(expected) - set(ckpt.model_state))
    unexpected = sorted(set(ckpt.model_state) - set(expected))
    wrong = [f"{k} {tuple(v.shape)}/{v.dtype} (expected {tuple(expected[k].shape)}/{expected[k].dtype})"
             for k, v in ckpt.model_state.items()
             if k in expected and (v.shape != expected[k].shape or not _dtype_fits(v.dtype, expected[k].dtype))]
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}" if missing else "",
                 f"unexpected {unexpected[:3]}{'...' if len(unexpected) > 3 else ''}" if unexpected else "",
                 f"wrong shape/dtype {wrong[:2]}" if wrong else ""]
        raise CheckpointError(f"{path}: weights do not fit its {ckpt.config.model} config: "
                              + "; ".join(p for p in parts if p))


def load_weights(model: nn.Module, ckpt: Checkpoint, path: str | Path) -> None:
    """Load ckpt's weights into `model` strictly; CheckpointError naming every key that does not fit.
    Half-precision weights (an export) are widened to the model's float32 as they are copied in."""
    check_fits(model.state_dict(), ckpt, path)
    model.load_state_dict(ckpt.model_state, strict=True)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint describes, load its weights strictly, move it to `device`. For inference:
    the optimizer state and RNG states stay in the file (read_checkpoint(path) for resuming)."""
    ckpt = read_checkpoint(path, weights_only=True)
    check_fits(expected_state(ckpt.config, path), ckpt, path)  # before allocating anything
    model = build_model(ckpt.config)
    load_weights(model, ckpt, path)
    return model.to(device), ckpt


def load_optimizer_state(optimizer: torch.optim.Optimizer, ckpt: Checkpoint) -> None:
    """Restore the optimizer state saved by save_checkpoint (for resuming). Each moment tensor must have its
    parameter's shape: Adam itself would only fail later, inside a training step."""
    where = ckpt.path or "the checkpoint"
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    try:
        for key, t in ckpt.optim_state.items():
            i, name = key.split(".", 1)
            i = int(i)
            if not 0 <= i < len(params) or (t.dim() > 0 and t.shape != params[i].shape):
                raise ValueError(f"tensor optim.{key} {tuple(t.shape)} fits no parameter")
            state.setdefault(i, {})[name] = t
        sd = {"state": state, "param_groups": ckpt.optim_meta.get("param_groups", optimizer.state_dict()["param_groups"])}
        optimizer.load_state_dict(sd)
    except (ValueError, KeyError, RuntimeError, TypeError, IndexError, AttributeError) as e:
        raise CheckpointError(f"{where}: its optimizer state does not fit this model ({e}); "
                              "the file is corrupt, or start a fresh run") from None

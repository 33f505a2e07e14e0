"""Models by name. A checkpoint's config names its model; build_model rebuilds it from that dict."""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from .ar_hvae import ARHVAE, ARHVAEConfig
from .conv_vlae import ConvVLAE, ConvVLAEConfig
from .hvae import HVAE, HVAEConfig
from .lvae import LVAE, LVAEConfig
from .vlae import VLAE, VLAEConfig

REGISTRY: dict[str, tuple[type, type]] = {  # name -> (config class, model class)
    "vlae": (VLAEConfig, VLAE),
    "conv_vlae": (ConvVLAEConfig, ConvVLAE),  # the SVHN / CelebA ladders
    "hvae": (HVAEConfig, HVAE),  # the Markov HVAE baseline (eq. 4-5)
    "lvae": (LVAEConfig, LVAE),  # the HVAE's generative model with ladder inference (Figure 4, right)
    "ar_hvae": (ARHVAEConfig, ARHVAE),  # the autoregressive HVAE (eq. 3): priors and decoder read every level above
}


def make_config(d: dict):
    """Rebuild a model config from its dict (as stored in a checkpoint); ConfigError if it does not fit."""
    name = d.get("model")
    if name not in REGISTRY:
        raise ConfigError(f"unknown model {name!r}; this version knows: {', '.join(sorted(REGISTRY))}")
    cfg_cls = REGISTRY[name][0]
    try:
        return cfg_cls(**d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid {name} config: {e}") from None


def build_model(cfg) -> nn.Module:
    return REGISTRY[cfg.model][1](cfg)


def default_lr(model: str) -> float | None:
    """The model's own Adam learning rate where it has one (hvae: 1e-4, appendix B.1); None = the trainer's."""
    return getattr(REGISTRY[model][1], "DEFAULT_LR", None) if model in REGISTRY else None




# Per data set: image shape and default code width per level (authors' settings). "model" replaces
# the generic "vlae" where the paper's ladder for that data set is another architecture; "latent_dims"
# (one width per level) is used when the level count matches; image_shape None = taken from the data.
DATASET_DEFAULTS: dict[str, dict] = {
    "mnist": {"image_shape": (1, 28, 28), "layers": 3, "latent_dim": 2},
    "svhn": {"image_shape": (3, 32, 32), "layers": 4, "latent_dim": 5, "latent_dims": [5, 5, 5, 10],
             "model": "conv_vlae"},
    "celeba": {"image_shape": (3, 64, 64), "layers": 4, "latent_dim": 10, "model": "conv_vlae"},
    "folder": {"image_shape": None, "layers": 4, "latent_dim": 5, "latent_dims": [5, 5, 5, 10],
               "model": "conv_vlae"},  # SVHN's codes; 64-pixel and larger folders take CelebA's
}


def model_for(dataset: str, model: str) -> str:
    """The model `vlae train <dataset> --model <model>` builds: 'vlae' is the paper's ladder for that data set."""
    return DATASET_DEFAULTS.get(dataset, {}).get("model", model) if model == "vlae" else model


def default_config(dataset: str, model: str = "vlae", layers: int | None = None,
                   latent_dims: list[int] | None = None, **overrides):
    """The model config `vlae train <dataset>` uses: the data set's defaults, then the user's choices.

    latent_dims: one width for every level, or one per level (bottom first).
    """
    if dataset not in DATASET_DEFAULTS:
        raise ConfigError(f"unknown data set {dataset!r}; choose one of: {', '.join(sorted(DATASET_DEFAULTS))}")
    if model not in REGISTRY:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(sorted(REGISTRY))}")
    d = DATASET_DEFAULTS[dataset]
    image_shape = overrides.pop("image_shape", None) or d["image_shape"]
    if image_shape is None:
        raise ConfigError(f"the {dataset} data set's image shape comes from its files; pass image_shape")
    if dataset == "folder" and max(image_shape[1:]) >= 64:
        d = {**d, "latent_dim": 10, "latent_dims": None}
    model = model_for(dataset, model)
    L = layers or (len(latent_dims) if latent_dims and len(latent_dims) > 1 else d["layers"])
    if L < 1:
        raise ConfigError(f"--layers must be at least 1; got {L}")
    dims = latent_dims or (d["latent_dims"] if len(d.get("latent_dims") or []) == L else [d["latent_dim"]])
    if len(dims) == 1:
        dims = dims * L
    if len(dims) != L:
        raise ConfigError(f"--latent-dim gives {len(dims)} widths for {L} levels; give one width or one per level")
    return make_config({"model": model, "dataset": dataset, "image_shape": image_shape,
                        "latent_dims": dims, **overrides})

__all__ = ["DATASET_DEFAULTS", "REGISTRY", "ARHVAE", "ARHVAEConfig", "ConvVLAE", "ConvVLAEConfig", "HVAE", "HVAEConfig",
           "LVAE", "LVAEConfig", "VLAE", "VLAEConfig",
           "build_model", "default_config", "default_lr", "make_config", "model_for"]

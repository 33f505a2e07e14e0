"""One base for the model configs (models/config.py), and checkpoints written before it still load.

tests/data/main-e2bd54c-{vlae,hvae}.safetensors were saved by save_checkpoint at commit e2bd54c (before
ModelConfig), each a tiny model after one Adam step, with its optimizer state."""
import json
from pathlib import Path

import pytest
import torch

from vlae_fast.checkpoint import load_model, load_optimizer_state, read_checkpoint
from vlae_fast.models import REGISTRY, make_config
from vlae_fast.models.config import ModelConfig

DATA = Path(__file__).resolve().parent / "data"
# the config metadata e2bd54c wrote for each model (json.dumps(cfg.to_dict()))
OLD_CONFIGS = [
    '{"model": "vlae", "dataset": "mnist", "image_shape": [1, 28, 28], "latent_dims": [2, 3], "channels": [2, 4], '
    '"hidden": 8, "output": "laplace", "output_scale": 0.25, "join": "gated_add", "extra": {}}',
    '{"model": "hvae", "dataset": "mnist", "image_shape": [1, 28, 28], "latent_dims": [2, 2], "channels": [2, 4], '
    '"hidden": 8, "output": "gaussian", "output_scale": 0.35355339059327373, "learn_scale": true, "extra": {}}',
    '{"model": "conv_vlae", "dataset": "svhn", "image_shape": [1, 8, 8], "latent_dims": [2, 3], "arch": "medium", '
    '"hidden": 8, "output": "gaussian", "output_scale": 0.17677669529663687, "join": "concat", "extra": {}}',
]


@pytest.mark.parametrize("text", OLD_CONFIGS)
def test_old_config_metadata_rebuilds_the_same_config(text):
    old = json.loads(text)
    cfg = make_config(old)
    assert isinstance(cfg, ModelConfig) and type(cfg) is REGISTRY[old["model"]][0]
    assert json.loads(json.dumps(cfg.to_dict())) == old  # same fields, same values (order aside)


@pytest.mark.parametrize("model", ["vlae", "hvae"])
def test_checkpoints_written_before_the_base_config_still_load(model):
    path = DATA / f"main-e2bd54c-{model}.safetensors"
    net, ckpt = load_model(path)
    assert ckpt.config.model == model and ckpt.step == 1
    out = net.eval()(torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert torch.isfinite(out.recon).all() and out.kl.shape == (3, 2)
    full = read_checkpoint(path)  # and for resuming: the Adam moments fit the rebuilt model
    opt = torch.optim.Adam(net.parameters())
    load_optimizer_state(opt, full)
    assert len(opt.state) == len({k.split('.')[0] for k in full.optim_state}) > 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_model_config_runs_the_shared_checks(name):
    cfg_cls = REGISTRY[name][0]
    assert issubclass(cfg_cls, ModelConfig) and cfg_cls().model == name
    with pytest.raises(ValueError, match="output must be one of"):
        cfg_cls(output="poisson")
    with pytest.raises(ValueError, match="one positive width per level"):
        cfg_cls(latent_dims=(2, 0))
    assert cfg_cls(latent_dims=[3, 3]).latent_dims == (3, 3) and cfg_cls().layers == len(cfg_cls().latent_dims)
    assert cfg_cls(output="laplace").output_scale == 0.25  # the shared default scale

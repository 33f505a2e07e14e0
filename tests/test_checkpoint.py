"""Checkpoints: safetensors with config in metadata; save -> load gives identical outputs; clear errors."""
import json

import pytest
import torch
from safetensors.torch import save_file

from vlae_fast.checkpoint import load_model, load_optimizer_state, read_checkpoint, save_checkpoint
from vlae_fast.errors import CheckpointError
from vlae_fast.models import VLAE, VLAEConfig


def trained_model():
    torch.manual_seed(0)
    m = VLAE(VLAEConfig(latent_dims=(2, 3)))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    for _ in range(2):  # non-trivial batch-norm statistics and Adam state
        m(torch.rand(8, 1, 28, 28)).recon.mean().backward()
        opt.step()
    return m, opt


def test_roundtrip_identical_outputs(tmp_path):
    m, opt = trained_model()
    p = save_checkpoint(tmp_path / "c.safetensors", m, optimizer=opt, step=2, metrics={"a": 1})
    m2, ck = load_model(p)
    m.eval(), m2.eval()
    x = torch.rand(5, 1, 28, 28)
    eps = [torch.randn(5, d) for d in (2, 3)]
    o1, o2 = m(x, eps=eps), m2(x, eps=eps)
    assert torch.equal(o1.logits, o2.logits) and torch.equal(o1.kl, o2.kl)
    assert ck.step == 2 and ck.metrics == {"a": 1} and ck.config == m.cfg
    opt2 = torch.optim.Adam(m2.parameters(), lr=1e-3)
    load_optimizer_state(opt2, read_checkpoint(p))  # the full read, as resuming does
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[i]["exp_avg_sq"], s2[i]["exp_avg_sq"]) for i in s1)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temp file


def test_errors(tmp_path):
    m, _ = trained_model()
    p = save_checkpoint(tmp_path / "c.safetensors", m)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        read_checkpoint(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_text("hello, I am text")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        read_checkpoint(tmp_path / "junk.safetensors")
    blob = p.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "trunc.safetensors")
    save_file({"w": torch.zeros(2)}, tmp_path / "other.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="not a vlae-fast checkpoint"):
        read_checkpoint(tmp_path / "other.safetensors")
    cfg = dict(m.cfg.to_dict(), model="gan")
    save_file({"w": torch.zeros(2)}, tmp_path / "gan.safetensors", metadata={"format": "vlae-fast/1", "config": json.dumps(cfg)})
    with pytest.raises(CheckpointError, match="unknown model 'gan'"):
        read_checkpoint(tmp_path / "gan.safetensors")
    cfg = dict(m.cfg.to_dict(), latent_dims=[2, 5])  # weights no longer fit the config
    ck = read_checkpoint(p)
    tensors = {f"model.{k}": v for k, v in ck.model_state.items()}
    save_file(tensors, tmp_path / "mis.safetensors", metadata={"format": "vlae-fast/1", "config": json.dumps(cfg),
                                                               "train": "{}", "optim": "{}", "metrics": "{}"})
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "mis.safetensors")


def test_load_model_reads_the_weights_alone(tmp_path, monkeypatch):
    """Inference reads only model.* tensors (lazily, through safe_open); Adam's moments and the RNG states
    stay in the file. read_checkpoint without weights_only reads everything, for resuming."""
    import vlae_fast.checkpoint as C

    m, opt = trained_model()
    p = save_checkpoint(tmp_path / "c.safetensors", m, optimizer=opt, step=2, rng={"cpu": torch.get_rng_state()})
    read = []
    real_open = C.safe_open

    class Spy:
        def __init__(self, *a, **k):
            self.f = real_open(*a, **k)

        def __enter__(self):
            self.inner = self.f.__enter__()
            return self

        def __exit__(self, *exc):
            return self.f.__exit__(*exc)

        def get_tensor(self, name):
            read.append(name)
            return self.inner.get_tensor(name)

        def __getattr__(self, name):
            return getattr(self.inner, name)

    monkeypatch.setattr(C, "safe_open", Spy)
    model, ck = load_model(p)
    assert read and all(k.startswith("model.") for k in read), read
    assert len(read) == len(m.state_dict()) and ck.optim_state == {} and ck.rng == {}
    read.clear()
    full = read_checkpoint(p)
    assert any(k.startswith("optim.") for k in read) and full.optim_state and "cpu" in full.rng


def test_one_cache_root_for_data_and_classifier(tmp_path, monkeypatch):
    from vlae_fast.classifier import default_cache_path
    from vlae_fast.data.base import default_data_root
    from vlae_fast.paths import cache_root

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_root() == tmp_path / "vlae-fast"
    assert default_data_root() == cache_root() / "data"
    assert default_cache_path() == cache_root() / "classifier" / "mnist-cnn.safetensors"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_data_root() == tmp_path / "home" / ".cache" / "vlae-fast" / "data"

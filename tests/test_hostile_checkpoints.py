"""Hostile and broken checkpoint files: a seeded fuzz over a few hundred mutations of a real checkpoint.

Every mutated file either loads (a flipped byte inside tensor data, or a header byte whose change keeps
the header valid, cannot be told apart from a real weight) or raises CheckpointError; any other
exception is a hole. The CLI turns a CheckpointError into one line on stderr and exit code 2.
"""
import json
import re
import random
import struct
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from vlae_fast.checkpoint import load_model, load_optimizer_state, read_checkpoint, save_checkpoint
from vlae_fast.cli.app import app
from vlae_fast.errors import CheckpointError
from vlae_fast.models import build_model, make_config

SEED = 7


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> bytes:
    """A small but complete checkpoint (tiny widths, optimizer and RNG state) as bytes."""
    torch.manual_seed(0)
    cfg = make_config({"model": "vlae", "latent_dims": [2, 2], "channels": [4, 8], "hidden": 16})
    model = build_model(cfg)
    opt = torch.optim.Adam(model.parameters())
    out = model(torch.rand(4, 1, 28, 28))
    (out.recon.mean() + out.kl.sum()).backward()
    opt.step()
    path = tmp_path_factory.mktemp("good") / "ckpt.safetensors"
    save_checkpoint(path, model, optimizer=opt, step=1, train={"seed": 0}, rng={"cpu": torch.get_rng_state()})
    return path.read_bytes()


def split(blob: bytes) -> tuple[dict, bytes]:
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join(header: dict, data: bytes) -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


def resave(blob: bytes, change) -> bytes:
    """A well-formed safetensors file whose tensors or metadata `change(tensors, meta)` altered."""
    from safetensors.torch import load
    header, _ = split(blob)
    tensors, meta = dict(load(blob)), dict(header["__metadata__"])
    change(tensors, meta)
    return st_save(tensors, metadata=meta)


def mutations(good: bytes):
    """(class, bytes) pairs: every class the issue names, each many times with seeded random choices."""
    rng = random.Random(SEED)
    header, data = split(good)
    hlen = 8 + struct.unpack("<Q", good[:8])[0]
    names = [k for k in header if k != "__metadata__"]
    # truncation: every byte of the length prefix and the header's first bytes, then random cut points
    for cut in list(range(0, 40)) + rng.sample(range(40, len(good)), 80):
        yield "truncated", good[:cut]
    # corrupted header: random bytes of the JSON header overwritten
    for _ in range(60):
        b = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(8, hlen)] = rng.randrange(256)
        yield "corrupt header", bytes(b)
    # header length prefix claiming huge, negative (as a signed int), zero or off-by-some sizes
    for n in [0, 1, 2**63, 2**64 - 1, 2**64 - 8, 2**32, hlen, hlen - 9, len(good)] + [rng.randrange(2**64) for _ in range(11)]:
        yield "huge/negative header size", struct.pack("<Q", n) + good[8:]
    # tensor entries claiming huge, negative, overlapping or reversed data offsets, or huge shapes
    for _ in range(40):
        h = json.loads(json.dumps(header))
        e = h[rng.choice(names)]
        kind = rng.randrange(4)
        if kind == 0:
            e["data_offsets"] = [rng.choice([-1, 0, 2**62, 2**64 - 1]), rng.choice([-(2**40), 2**63, 5])]
        elif kind == 1:
            e["data_offsets"] = e["data_offsets"][::-1]
        elif kind == 2:
            e["shape"] = [rng.choice([2**40, -3, 2**31, 0])] + e["shape"][1:]
        else:
            e["dtype"] = rng.choice(["F64", "I8", "BOOL", "XX", 7])
        yield "bad offsets/shape/dtype in header", join(h, data)
    # well-formed files whose tensors have the wrong shape or dtype for the config, or are missing/extra
    for _ in range(30):
        name = rng.choice([n for n in names if n.startswith("model.")])
        kind = rng.randrange(4)

        def change(t, m, name=name, kind=kind):
            if kind == 0:
                t[name] = torch.zeros(*[s + 1 for s in t[name].shape]) if t[name].dim() else torch.zeros(2)
            elif kind == 1:
                t[name] = t[name].double()
            elif kind == 2:
                del t[name]
            else:
                t[name + "_extra"] = torch.zeros(3)
        yield "wrong tensors for the config", resave(good, change)
    # metadata: not JSON, not an object, unknown model, invalid or absurd config values, missing entries
    bad_meta = [
        ("config", "{not json"), ("config", "[1, 2]"), ("config", '"vlae"'), ("train", "{"), ("optim", "nul"),
        ("metrics", "[]"), ("config", json.dumps({"model": "gpt"})), ("config", json.dumps({"model": None})),
        ("step", "minus one"), ("step", "-4"), ("format", "something/else"), ("config", "[" * 100000),
    ]
    cfg = json.loads(header["__metadata__"]["config"])
    for key, value in [("latent_dims", []), ("latent_dims", "ab"), ("latent_dims", [0]), ("hidden", -5),
                       ("hidden", 10**12), ("channels", [10**9, 10**9]), ("image_shape", [1, 30, 30]),
                       ("image_shape", [1, 2]), ("output", "poisson"), ("join", 3), ("latent_dims", [2, 2, 2]),
                       ("channels", [0, 0]), ("nonsense", 1)]:
        bad_meta.append(("config", json.dumps({**cfg, key: value})))
    for key, value in bad_meta:
        yield "bad metadata", resave(good, lambda t, m, key=key, value=value: m.__setitem__(key, value))
    for key in ["config", "format", "optim"]:
        yield "bad metadata", resave(good, lambda t, m, key=key: m.pop(key))
    # not a safetensors file at all
    for _ in range(10):
        yield "not safetensors", bytes(rng.randrange(256) for _ in range(rng.randrange(1, 3000)))
    yield "not safetensors", b"PK\x03\x04" + good[4:]  # a zip (torch.save's container) header


def test_fuzz_mutated_checkpoints(good, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    outcome: Counter = Counter()
    for cls, blob in mutations(good):
        path.write_bytes(blob)
        try:
            model, _ = load_model(path)  # the weights alone, as inference reads them
            load_optimizer_state(torch.optim.Adam(model.parameters()), read_checkpoint(path))  # all, as resuming
            outcome[cls, "loaded"] += 1
        except CheckpointError as e:
            msg = str(e)
            assert "\n" not in msg and str(path) in msg, msg
            outcome[cls, "CheckpointError"] += 1
    total = sum(outcome.values())
    print(f"\n{total} mutated checkpoints:")
    for (cls, how), n in sorted(outcome.items()):
        print(f"  {cls:36s} {how:16s} {n}")
    assert total >= 300
    for cls in ["truncated", "huge/negative header size", "wrong tensors for the config", "not safetensors"]:
        assert outcome[cls, "loaded"] == 0, f"a {cls} file loaded"
    assert outcome["bad metadata", "loaded"] == 0 and outcome["bad offsets/shape/dtype in header", "loaded"] == 0


@pytest.mark.parametrize("cls", ["truncated", "corrupt header", "huge/negative header size", "bad metadata",
                                 "wrong tensors for the config"])
def test_cli_prints_one_line_and_exits_2(good, tmp_path, cls):
    rng = random.Random(cls)
    candidates = [b for c, b in mutations(good) if c == cls]
    path = tmp_path / "ckpt.safetensors"
    for blob in rng.sample(candidates, 3):
        path.write_bytes(blob)
        try:
            read_checkpoint(path) and load_model(path)
            continue  # a corrupt-header mutation that still loads is no error case
        except CheckpointError:
            pass
        r = CliRunner().invoke(app, ["sample", str(path), "--out", str(tmp_path / "s.png"), "--device", "cpu"])
        assert r.exit_code == 2, (r.output, r.exception)
        assert r.stderr.strip().startswith("error:") and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert r.stdout == ""


def test_package_never_unpickles():
    pkg = Path(__file__).resolve().parent.parent
    for f in [*pkg.glob("vlae_fast/**/*.py"), *pkg.glob("cli/*.py"), *pkg.glob("kernels/*.py")]:
        text = f.read_text()
        code = re.compile(r"^\s*(import|from)\s+(pickle|dill|cloudpickle)\b|pickle\.loads?\(|(?<!safetensors\.)torch\.load\(",
                          re.MULTILINE)
        assert not code.search(text), f"{f} may unpickle: {code.search(text)}"

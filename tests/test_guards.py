"""The NaN/inf guard, --grad-clip, atomic checkpoint writes, and the download checksum."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from typer.testing import CliRunner

from vlae_fast.checkpoint import read_checkpoint, save_checkpoint
from vlae_fast.cli.app import app
from vlae_fast.data.download import download
from vlae_fast.errors import DataError, TrainingStopped
from vlae_fast.guards import NonFiniteGuard, grad_norm
from vlae_fast.models import build_model, make_config
from vlae_fast.train import TrainConfig, make_optimizer, make_step, train

TINY = {"model": "vlae", "latent_dims": [2, 2], "channels": [4, 8], "hidden": 16}


def tiny_model():
    torch.manual_seed(0)
    return build_model(make_config(TINY))


def test_guard_clips_and_flags_non_finite_on_the_device():
    model = tiny_model()
    guard = NonFiniteGuard(make_optimizer(model, 1e-3), torch.device("cpu"))
    out = model(torch.rand(8, 1, 28, 28) + 0.3)
    loss = 1e3 * (out.recon.mean() + out.kl.sum())  # a large gradient
    loss.backward()
    before = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    exact = torch.stack([p.grad.double().norm() for p in model.parameters()]).norm()
    assert guard.check(model, loss, grad_clip=0.0).item() == pytest.approx(exact.item(), rel=1e-5)
    assert guard.tripped() is None
    guard.check(model, loss, grad_clip=0.5)
    after = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert before > 1 and after == pytest.approx(0.5, rel=1e-4) and guard.found_inf == 0, (before, after)
    guard.step_t.fill_(7)
    next(model.parameters()).grad[0] = float("inf")
    guard.check(model, loss, grad_clip=0.0)
    assert guard.found_inf == 1 and guard.tripped() == (7, loss.item(), float("inf"))
    guard.step_t.fill_(8)  # a later bad step does not overwrite the first one's report
    guard.check(model, loss.detach() * float("nan"), grad_clip=1.0)
    assert guard.tripped()[0] == 7 and guard.found_inf == 1


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_grad_norm_is_the_global_norm_and_sees_any_non_finite_entry(seed):
    """guards.grad_norm (dot products on the CPU) against the float64 norm, on odd shapes and a non-contiguous
    gradient; one nan, inf or -inf anywhere makes it non-finite."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7,), (33, 5), (3, 1, 4, 4), (1000, 17), (1,)]
    grads = [torch.randn(s, generator=gen) * 10 ** torch.randint(-3, 3, (), generator=gen).item() for s in shapes]
    grads.append(torch.randn(9, 12, generator=gen).t())  # non-contiguous
    exact = torch.stack([g.double().norm() for g in grads]).norm().item()
    assert grad_norm(grads, torch.device("cpu")).item() == pytest.approx(exact, rel=1e-6)
    for bad in (float("nan"), float("inf"), float("-inf")):
        i = torch.randint(len(grads), (), generator=gen).item()
        poisoned = [g.clone() for g in grads]
        flat = torch.randint(poisoned[i].numel(), (), generator=gen)
        poisoned[i][torch.unravel_index(flat, poisoned[i].shape)] = bad
        assert not torch.isfinite(grad_norm(poisoned, torch.device("cpu"))), (bad, i)
    assert grad_norm([], torch.device("cpu")).item() == 0.0


@pytest.mark.parametrize("poison", ["loss", "gradient"])
def test_non_finite_step_never_changes_weights_or_adam_moments(poison):
    """The update is skipped on the device: weights, Adam's moments and its step count stay bit-identical,
    for the bad step and every step after it until the loop reads the flag."""
    model = tiny_model()
    opt = make_optimizer(model, 1e-3)
    guard = NonFiniteGuard(opt, torch.device("cpu"))
    step = make_step(model, model, opt, guard)
    x, w = torch.rand(8, 1, 28, 28), torch.tensor(0.5)
    step(x, w, None)  # one good step: Adam has moments now
    weights = {k: v.clone() for k, v in model.named_parameters()}
    moments = {(i, k): v.clone() for i, s in enumerate(opt.state.values()) for k, v in s.items()}
    if poison == "loss":
        w = torch.tensor(float("nan"))  # the loss is nan
    else:  # a finite loss with an infinite gradient
        model.g[0][0][0].weight.register_hook(lambda g: g * float("inf"))
    guard.step_t.fill_(2)
    stats = step(x, w, None)
    assert torch.isfinite(stats[0]) == (poison == "gradient")
    step(x, torch.tensor(0.5), None)  # finite, but after a bad step: skipped too (sticky until reported)
    assert all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert all(torch.equal(v, moments[(i, k)]) for i, s in enumerate(opt.state.values()) for k, v in s.items())
    assert guard.tripped()[0] == 2


def test_non_finite_loss_stops_names_the_step_and_keeps_last_good_checkpoint(tmp_path, mnist_dir):
    # lr 1e30: the first step is fine, its update blows the weights up, a later loss is not finite
    cfg = TrainConfig(steps=6, batch_size=20, lr=1e30, train_limit=100, eval_limit=20, data_dir=str(mnist_dir),
                      save_every=1, log_every=1, device="cpu", warmup=0)
    with pytest.raises(TrainingStopped) as e:
        train(make_config(TINY), cfg, tmp_path, show_progress=False)
    msg = str(e.value)
    ckpt = read_checkpoint(tmp_path / "ckpt.safetensors")
    assert msg.startswith(f"step {ckpt.step + 1}: the loss is nan"), msg  # the bad step follows the kept one
    assert "--lr" in msg and "--grad-clip" in msg and f"--resume {tmp_path}" in msg, msg
    assert ckpt.step >= 1 and all(torch.isfinite(t).all() for t in ckpt.model_state.values() if t.is_floating_point())
    assert e.value.exit_code == 2


def test_atomic_save_survives_sigkill_at_random_instants(tmp_path):
    """A child saves checkpoints in a loop; SIGKILL at random instants must leave a loadable file."""
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_model(), step=0)
    child = f"""
import sys, torch
from vlae_fast.checkpoint import save_checkpoint
from vlae_fast.models import build_model, make_config
model = build_model(make_config({TINY!r}))
print("ready", flush=True)
for step in range(1, 10**9):
    save_checkpoint({str(path)!r}, model, step=step)
"""
    rng = torch.Generator().manual_seed(1)
    steps = []
    for _ in range(6):
        p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.05 + 0.4 * torch.rand(1, generator=rng).item())
        p.send_signal(signal.SIGKILL)
        p.wait()
        steps.append(read_checkpoint(path).step)  # raises if the kill left a broken file
    assert max(steps) > 0, steps  # the children did overwrite the file while being killed


def test_a_kill_inside_the_write_leaves_the_old_file_and_a_temp_that_resume_removes(tmp_path):
    """A child killed while its temp file is half written (inside fsync): the checkpoint is the previous one,
    and the temp it left is what resume.remove_stale_temps deletes before a resumed run saves again."""
    from vlae_fast.resume import remove_stale_temps

    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_model(), step=1)
    child = f"""
import os, time
from vlae_fast.checkpoint import save_checkpoint
from vlae_fast.models import build_model, make_config
def stuck(fd):
    print("writing", flush=True)
    time.sleep(600)
os.fsync = stuck
save_checkpoint({str(path)!r}, build_model(make_config({TINY!r})), step=2)
"""
    p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert read_checkpoint(path).step == 1
    assert len(list(tmp_path.iterdir())) == 2, list(tmp_path.iterdir())  # the checkpoint and the temp
    remove_stale_temps(path)
    assert [f.name for f in tmp_path.iterdir()] == [path.name]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    save_checkpoint(path, tiny_model(), step=3)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(OSError):
        save_checkpoint(path, tiny_model(), step=4)
    assert read_checkpoint(path).step == 3 and [f.name for f in tmp_path.iterdir()] == [path.name]


def test_tampered_download_is_rejected(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    good = b"\x1f\x8b real file contents"
    (mirror / "data.gz").write_bytes(good[:-1] + b"X")  # one byte changed in transit
    with pytest.raises(DataError) as e:
        download("data.gz", [mirror.as_uri() + "/"], hashlib.sha256(good).hexdigest(), tmp_path / "dest")
    assert "checksum mismatch" in str(e.value) and "rejected" in str(e.value)
    assert list((tmp_path / "dest").iterdir()) == []  # nothing tampered is left behind
    (mirror / "data.gz").write_bytes(good)
    got = download("data.gz", [mirror.as_uri() + "/"], hashlib.sha256(good).hexdigest(), tmp_path / "dest")
    assert got.read_bytes() == good


def test_cli_resume_errors_are_one_line(tmp_path):
    r = CliRunner().invoke(app, ["train", "mnist", "--resume", str(tmp_path)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1 and "no ckpt.safetensors" in r.stderr


def test_sigterm_is_caught_once_then_handlers_are_restored():
    from vlae_fast.guards import StopRequest
    before = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.requested
        e = stop.stopped(7, 10, "run/ckpt.safetensors", "vlae train mnist --resume run")
        assert signal.getsignal(signal.SIGTERM) == before  # a second SIGTERM would stop at once
    assert e.exit_code == 143 and str(e).startswith("SIGTERM received: stopped after step 7/10") and "--resume run" in str(e)
    assert signal.getsignal(signal.SIGTERM) == before

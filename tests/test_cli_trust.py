"""Issue 15: a command line people can trust. One test per promise: strict options (each bad value names
its option, exit 2, no traceback), no silent overwrite, nothing left behind by a failed command, resume
refused without optimizer state, size caps, plain progress lines off a terminal, --json, TensorBoard,
--config, --version / -h, labelled pictures, one data-folder rule, `vlae info`."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlae_fast.cli import app

runner = CliRunner()
TINY = ["--layers", "2", "--latent-dim", "2", "--steps", "2", "--batch-size", "20", "--train-limit", "40",
        "--eval-limit", "20", "--device", "cpu", "--no-progress"]


def run(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def tiny_train(tmp_path, mnist_dir, out, *extra):
    return run("train", "mnist", *TINY, "--data-dir", mnist_dir, "--out", out, *extra)


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, mnist_dir) -> Path:
    """A finished tiny run: ckpt.safetensors, metrics.jsonl, settings.toml."""
    out = tmp_path_factory.mktemp("trust") / "run"
    r = tiny_train(None, mnist_dir, out)
    assert r.exit_code == 0, r.output
    return out


# --- strict options -------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,option", [
    (["train", "mnist", "--layers", "0"], "--layers"),
    (["train", "mnist", "--train-limit", "0"], "--train-limit"),
    (["train", "mnist", "--eval-limit", "0"], "--eval-limit"),
    (["train", "mnist", "--lr", "-1"], "--lr"),
    (["train", "mnist", "--lr", "0"], "--lr"),
    (["train", "mnist", "--steps", "0"], "--steps"),
    (["train", "mnist", "--batch-size", "0"], "--batch-size"),
    (["train", "mnist", "--log-every", "0"], "--log-every"),
    (["train", "mnist", "--save-every", "-1"], "--save-every"),
    (["train", "mnist", "--grad-clip", "-1"], "--grad-clip"),
    (["train", "mnist", "--warmup", "-5"], "--warmup"),
    (["train", "mnist", "--seed", "-1"], "--seed"),
    (["train", "mnist", "--nproc", "0"], "--nproc"),
    (["train", "mnist", "--latent-dim", "2,0"], "--latent-dim"),
    (["train", "mnist", "--latent-dim", "two"], "--latent-dim"),
    (["train", "mnist", "--model", "gan"], "--model"),
    (["train", "mnist", "--likelihood", "poisson"], "--likelihood"),
    (["train", "mnist", "--join", "sum"], "--join"),
    (["train", "mnist", "--kernels", "cuda"], "--kernels"),
    (["train", "mnist", "--device", "gpu"], "--device"),
    (["train", "mnist", "--tensorboard-every", "0"], "--tensorboard-every"),
    (["train", "mnist", "--data-dir", "{tmp}/typo"], "--data-dir"),
    (["train", "cifar10"], "'cifar10' is not one of"),
    (["train", "mnist", "--model", "hvae", "--join", "gated_add"], "--join applies to ladder models"),
    (["train", "mnist", "--top-encoder", "own"], "--top-encoder"),
    (["train", "mnist", "--lr-decay", "step"], "--lr-decay"),
    (["train", "mnist", "--lr-decay", "cosine", "--lr-decay-start", "6000"], "--lr-decay-start 6000 must be a step"),
    (["train", "mnist", "--lr-decay", "cosine", "--compile", "--data-dir", "{mnist}", "--steps", "2", "--train-limit",
      "40", "--eval-limit", "20", "--hidden", "16"], "drop --compile or --lr-decay"),  # small, should the check break
    (["train", "mnist", "--model", "hvae", "--top-encoder", "separate"], "--top-encoder applies to the MNIST ladder"),
    (["train", "mnist", "--layers", "1", "--top-encoder", "separate"], "a 1-level model has none below"),
    (["train", "folder", "--grayscale", "--rgb"], "--grayscale and --rgb"),
    (["sample", "{ckpt}", "--n", "0"], "--n"),
    (["sample", "{ckpt}", "--nrow", "0"], "--nrow"),
    (["traverse", "{ckpt}", "--layer", "0"], "--layer"),
    (["traverse", "{ckpt}", "--layer", "4"], "--layer must be between 1 and 3"),
    (["traverse", "{ckpt}", "--layer", "1", "--steps", "0"], "--steps"),
    (["reconstruct", "{ckpt}", "--split", "valid"], "--split"),
    (["reconstruct", "{ckpt}", "--n", "0"], "--n"),
    (["encode", "{ckpt}", "--split", "all"], "--split"),
    (["evaluate", "{ckpt}", "--split", "dev"], "--split"),
    (["gibbs", "{ckpt}", "--chains", "0"], "--chains"),
    (["gibbs", "{ckpt}", "--steps", "0"], "--steps"),
    (["gibbs", "{ckpt}", "--every", "-1"], "--every"),
    (["gibbs", "{ckpt}", "--init", "zeros"], "--init"),
    (["gibbs", "{ckpt}", "--feed", "mode"], "--feed"),
])
def test_each_bad_value_names_its_option_and_exits_2(tmp_path, tiny_ckpt, mnist_dir, args, option, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default run folder would appear
    r = runner.invoke(app, [a.format(tmp=tmp_path, ckpt=tiny_ckpt, mnist=mnist_dir) for a in args], env={"COLUMNS": "300"})
    assert r.exit_code == 2, r.output
    assert option in r.output, r.output
    assert "Traceback" not in r.output
    assert not (tmp_path / "typo").exists() and not (tmp_path / "runs").exists()  # nothing created on the way


def test_resume_refuses_model_options_it_would_ignore(run_dir):
    r = run("train", "mnist", "--resume", run_dir, "--steps", "4", "--layers", "3", "--seed", "5")
    assert r.exit_code == 2 and "--layers, --seed" in r.output and len(r.output.strip().splitlines()) == 1


# --- never lose work ------------------------------------------------------------------------------------
def test_refused_overwrite_leaves_the_old_run_byte_identical(run_dir, tmp_path, mnist_dir):
    before = digest(run_dir)
    r = tiny_train(tmp_path, mnist_dir, run_dir, "--seed", "1")
    assert r.exit_code == 2
    assert f"--resume {run_dir}" in r.output and "--overwrite" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert digest(run_dir) == before


def test_overwrite_starts_the_folder_clean(run_dir, tmp_path, mnist_dir):
    other = tmp_path / "run"
    other.mkdir()
    for name in ("ckpt.safetensors", "metrics.jsonl", "settings.toml"):
        (other / name).write_bytes((run_dir / name).read_bytes())
    (other / "notes.txt").write_text("mine")  # not a run file: kept
    r = tiny_train(tmp_path, mnist_dir, other, "--overwrite", "--steps", "3")
    assert r.exit_code == 0, r.output
    lines = [json.loads(l) for l in (other / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines if "loss" in l] == [1, 3]  # the new run's lines only (step 1, then the last)
    assert sum("test" in l for l in lines) == 1
    assert (other / "notes.txt").read_text() == "mine"


def test_a_failed_train_leaves_no_run_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = tmp_path / "new" / "run"
    r = run("train", "mnist", *TINY, "--data-dir", empty, "--out", out)
    assert r.exit_code == 2 and "MNIST files missing" in r.output
    assert not (tmp_path / "new").exists()


def test_resume_without_optimizer_state_is_refused_unless_asked(run_dir, tmp_path, mnist_dir):
    from vlae_fast.checkpoint import load_model, save_checkpoint

    model, ckpt = load_model(run_dir / "ckpt.safetensors")
    exported = tmp_path / "exported"
    save_checkpoint(exported / "ckpt.safetensors", model, step=ckpt.step, train=ckpt.train, metrics=ckpt.metrics)
    before = digest(exported)
    r = run("train", "mnist", "--resume", exported, "--steps", "3", "--no-progress")
    assert r.exit_code == 2 and "no optimizer state" in r.output and "--restart-optimizer" in r.output
    assert len(r.output.strip().splitlines()) == 1 and digest(exported) == before
    r = run("train", "mnist", "--resume", exported, "--steps", "3", "--no-progress", "--restart-optimizer",
            "--data-dir", mnist_dir)
    assert r.exit_code == 0, r.output
    assert "3 steps" in r.output


def test_resume_from_vlae_export_is_refused(run_dir, tmp_path):
    (tmp_path / "shared").mkdir()
    r = run("export", run_dir / "ckpt.safetensors", "--out", tmp_path / "shared" / "ckpt.safetensors")
    assert r.exit_code == 0, r.output
    r = run("train", "mnist", "--resume", tmp_path / "shared", "--steps", "3", "--no-progress")
    assert r.exit_code == 2 and "no optimizer state" in r.output and "--restart-optimizer" in r.output


# --- resource caps --------------------------------------------------------------------------------------
def test_requests_that_do_not_fit_are_refused_with_their_size(tiny_ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("vlae_fast.images.MAX_ARRAY_BYTES", 1_000_000)
    r = run("sample", tiny_ckpt, "--n", "500", "--out", tmp_path / "s.npz")
    assert r.exit_code == 2 and "--n 500" in r.output and "1.6 MB" in r.output and "at most 318 images" in r.output
    monkeypatch.undo()
    r = run("traverse", tiny_ckpt, "--layer", "1", "--steps", "1000", "--out", tmp_path / "t.npz")
    assert r.exit_code == 2 and "--steps 1000" in r.output and "3.1 GB" in r.output
    r = run("sample", tiny_ckpt, "--n", "100000", "--out", tmp_path / "s.png")
    assert r.exit_code == 2 and "--n 100000" in r.output and "M pixels" in r.output
    assert list(tmp_path.iterdir()) == []


# --- output outside a terminal ----------------------------------------------------------------------------
def test_plain_progress_lines_when_not_a_terminal(tmp_path, mnist_dir):
    args = [a for a in TINY if a != "--no-progress"]
    p = subprocess.run([sys.executable, "-m", "vlae_fast.cli", "train", "mnist", *args, "--steps", "3",
                        "--data-dir", str(mnist_dir), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "40"},
                       timeout=300)
    assert p.returncode == 0, p.stderr
    lines = p.stderr.splitlines()
    first = [l for l in lines if l.startswith("train  step 1/3")]
    assert first and "loss=" in first[0] and "KL1=" in first[0] and "steps/s" in first[0] and "ETA" in first[0]
    assert any(l.startswith("train  step 3/3") and "done in" in l for l in lines)
    assert any(l.startswith("evaluate on 20 test images") for l in lines)
    assert "\r" not in p.stderr and "━" not in p.stderr  # no bar
    assert p.stdout.startswith("test ELBO") and len(p.stdout.splitlines()[-1]) > 40  # results not wrapped at 40


def test_json_results(run_dir, tiny_ckpt, tmp_path, mnist_dir):
    r = tiny_train(tmp_path, mnist_dir, tmp_path / "j", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert {"elbo", "recon_nll", "kl", "mse", "steps", "checkpoint"} <= set(result) and len(result["kl"]) == 2
    r = run("evaluate", tiny_ckpt, "--data-dir", mnist_dir, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] == 3
    r = run("info", run_dir, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["step"] == 2


def test_tensorboard_logs_losses_kl_and_traversal_grids(tmp_path, mnist_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = tiny_train(tmp_path, mnist_dir, tmp_path / "tb", "--tensorboard", "--tensorboard-every", "2")
    assert r.exit_code == 0, r.output
    ea = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    ea.Reload()
    tags = ea.Tags()
    assert {"train/loss", "train/recon", "kl/level1", "kl/level2", "test/elbo"} <= set(tags["scalars"])
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2]
    assert {"traverse/level1", "traverse/level2"} <= set(tags["images"])


def test_config_file_sets_defaults_command_line_wins_and_is_written_back(tmp_path, mnist_dir):
    cfg = tmp_path / "run.toml"
    cfg.write_text('layers = 2\nlatent-dim = "2"\nsteps = 5\nbatch-size = 20\ntrain-limit = 40\neval-limit = 20\n'
                   'device = "cpu"\nlikelihood = "laplace"\n')
    r = run("train", "mnist", "--config", cfg, "--steps", "2", "--data-dir", mnist_dir, "--out", tmp_path / "c",
            "--no-progress")
    assert r.exit_code == 0, r.output
    info = json.loads(run("info", tmp_path / "c", "--json").stdout)
    assert info["step"] == 2 and info["latent_dims"] == [2, 2] and info["config"]["output"] == "laplace"
    written = (tmp_path / "c" / "settings.toml").read_text()
    assert "steps = 2\n" in written and 'likelihood = "laplace"' in written
    r = run("train", "--config", tmp_path / "c" / "settings.toml", "--out", tmp_path / "again", "--no-progress")
    assert r.exit_code == 0, r.output  # the written file repeats the run, data set included
    assert json.loads(run("info", tmp_path / "again", "--json").stdout)["config"] == info["config"]

    cfg.write_text("layers = 0\n")
    r = run("train", "mnist", "--config", cfg, env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "--layers" in r.output
    cfg.write_text("layres = 2\n")
    r = run("train", "mnist", "--config", cfg, env={"COLUMNS": "300"})
    assert r.exit_code == 2 and "layres" in r.output


# --- help and conveniences ------------------------------------------------------------------------------
def test_version_short_help_brackets_and_flags():
    from importlib.metadata import version

    r = run("--version")
    assert r.exit_code == 0 and r.stdout.strip() == f"vlae-fast {version('vlae-fast')}"
    r = run("sample", "-h", env={"COLUMNS": "300"})
    assert r.exit_code == 0 and "[n, C, H, W]" in r.stdout
    r = run("train", "-h", env={"COLUMNS": "300"})
    flags = [l for l in r.stdout.splitlines() if any(f in l for f in ("--grayscale", "--overwrite", "--json", "--help"))]
    assert len(flags) == 4 and not any("<bool>" in l for l in flags)
    assert "--output" not in r.stdout and "--likelihood" in r.stdout


def test_output_still_works_with_a_deprecation_note(tmp_path, mnist_dir):
    r = tiny_train(tmp_path, mnist_dir, tmp_path / "o", "--output", "bernoulli", "--steps", "1")
    assert r.exit_code == 0, r.output
    assert "--output is deprecated" in r.stderr and "--likelihood" in r.stderr
    assert json.loads(run("info", tmp_path / "o", "--json").stdout)["config"]["output"] == "bernoulli"


def test_sample_grid_is_full_and_nrow_chooses_rows(tiny_ckpt, tmp_path):
    def size(rows, cols):
        return cols * 30 + 2, rows * 30 + 2

    assert run("sample", tiny_ckpt, "--n", 8, "--out", tmp_path / "a.png").exit_code == 0
    assert Image.open(tmp_path / "a.png").size == size(2, 4)
    assert run("sample", tiny_ckpt, "--n", 8, "--nrow", 4, "--out", tmp_path / "b.png").exit_code == 0
    assert Image.open(tmp_path / "b.png").size == size(4, 2)


def test_pictures_are_labelled(tiny_ckpt, tmp_path, mnist_dir):
    from vlae_fast.checkpoint import load_model
    from vlae_fast.generate import traverse_caption
    from vlae_fast.images import labelled

    model, _ = load_model(tiny_ckpt)
    caption = traverse_caption(model, 1, 5)
    assert "columns: z_1[1] from -2 to 2" in caption and "rows: z_1[2] from 2 (top) to -2" in caption
    assert run("traverse", tiny_ckpt, "--layer", 1, "--steps", 5, "--out", tmp_path / "t.png").exit_code == 0
    t = np.asarray(Image.open(tmp_path / "t.png"))
    title_h = t.shape[0] - (5 * 30 + 2)
    assert title_h > 0 and (t[:title_h] < 128).any()  # dark text above the grid
    assert run("reconstruct", tiny_ckpt, "--n", 3, "--data-dir", mnist_dir, "--out", tmp_path / "r.png").exit_code == 0
    r = np.asarray(Image.open(tmp_path / "r.png"))
    left_w = r.shape[1] - (3 * 30 + 2)
    assert left_w > 40 and (r[: r.shape[0] // 2, :left_w] < 128).any() and (r[r.shape[0] // 2 :, :left_w] < 128).any()
    # a title never touches its grid: the margin rows between them are blank
    tile = np.full((32, 32), 77, dtype=np.uint8)
    out = labelled(tile, "Gibbs on z_1, 100 steps")
    top = out.shape[0] - 32
    assert (out[:top] < 128).any() and (out[top - 4 : top] == 255).all()


# --- one rule for where data is found ------------------------------------------------------------------
def test_gibbs_scores_with_data_from_the_checkpoints_folder(tmp_path, mnist_dir, monkeypatch):
    import torch

    import vlae_fast.classifier as classifier

    monkeypatch.delenv("VLAE_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "empty-cache"))  # nothing cached
    seen = {}

    def fake_load_classifier(cache_path=None, data_dir=None, show_progress=True):
        seen["data_dir"] = data_dir
        return classifier.DigitNet(), 0.5

    monkeypatch.setattr(classifier, "load_classifier", fake_load_classifier)
    hv = tmp_path / "hv"
    r = run("train", "mnist", *TINY, "--model", "hvae", "--data-dir", mnist_dir, "--out", hv)
    assert r.exit_code == 0, r.output
    r = run("gibbs", hv, "--chains", 4, "--steps", 2, "--out", tmp_path / "g.png", "--json")  # a run folder, no --data-dir
    assert r.exit_code == 0, r.output
    assert Path(seen["data_dir"]) == Path(mnist_dir)
    scores = json.loads(r.stdout)["scores"]
    assert set(scores) == {"gibbs", "ancestral"} and sum(scores["gibbs"]["histogram"]) == 4


# --- vlae info ------------------------------------------------------------------------------------------
def test_info_on_a_run_folder_and_on_a_checkpoint(run_dir):
    r = run("info", run_dir)
    assert r.exit_code == 0, r.output
    assert "step:            2 of 2 (finished)" in r.stdout
    assert "vlae, 2 levels, code widths [2, 2]" in r.stdout and "mnist from" in r.stdout
    assert "optimizer state, RNG state" in r.stdout and "test ELBO" in r.stdout
    assert "metrics.jsonl (3 lines)" in r.stdout  # steps 1 and 2, then the test figures
    size = (run_dir / "ckpt.safetensors").stat().st_size
    assert f"({size / 1e6:.1f} MB)" in r.stdout
    r2 = run("info", run_dir / "ckpt.safetensors")
    assert r2.exit_code == 0 and r2.stdout == r.stdout
    r3 = run("info", run_dir / "metrics.jsonl")
    assert r3.exit_code == 2 and "not a readable safetensors file" in r3.output


def test_info_on_an_export_says_it_cannot_resume(run_dir, tmp_path):
    """info reads what a file holds from its header: an export has neither optimizer nor RNG state."""
    assert run("export", run_dir, "--out", tmp_path / "w.safetensors").exit_code == 0
    r = run("info", tmp_path / "w.safetensors", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["optimizer_state"] is False and d["rng_state"] is False and d["resumable"] is False
    full = json.loads(run("info", run_dir, "--json").stdout)
    assert full["optimizer_state"] is True and full["rng_state"] is True and full["resumable"] is True

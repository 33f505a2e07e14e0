"""`vlae eval` and `vlae compare` through Typer's runner on tiny trained checkpoints; their JSON, markdown and
tables parsed; the stored compact part reused; user mistakes one line and exit 2."""
import json

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from vlae_fast.checkpoint import read_checkpoint
from vlae_fast.cli import app
from vlae_fast.classifier import FORMAT as CLASSIFIER_FORMAT, DigitNet
from vlae_fast.eval.report import FORMAT

runner = CliRunner()
QUICK = ["--no-progress", "--device", "cpu"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """An untrained DigitNet in the cache format: the class factor's plumbing without a minute of training."""
    path = tmp_path_factory.mktemp("clf") / "mnist-cnn.safetensors"
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in DigitNet().state_dict().items()}, path,
              metadata={"format": CLASSIFIER_FORMAT, "test_accuracy": "0.1", "epochs": "0"})
    return path


@pytest.fixture(scope="module")
def tiny_hvae(tmp_path_factory, mnist_dir):
    from vlae_fast.models import default_config
    from vlae_fast.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny-hvae")
    cfg = TrainConfig(steps=3, batch_size=50, train_limit=200, eval_limit=100, data_dir=str(mnist_dir),
                      save_every=0, device="cpu")
    train(default_config("mnist", "hvae"), cfg, out, show_progress=False)
    return out / "ckpt.safetensors"


def test_train_stores_the_compact_part(tiny_ckpt):
    stored = read_checkpoint(tiny_ckpt).metrics
    part = stored["eval"]
    assert part["likelihood"]["elbo"] == stored["test"]["elbo"] and part["images"] == 100 and part["limit"] == 100
    assert len(part["active_units"]) == 3 and len(part["probes"]["levels"]) == 3 and part["probe_images"] == 200
    assert sum(part["variation_shares"]) == pytest.approx(1)


def test_eval_of_a_finished_run_reuses_its_stored_part(tmp_path, tiny_ckpt, mnist_dir, classifier):
    r = run("eval", tiny_ckpt, "--limit", 100, "--probe-images", 200, "--classifier", classifier,
            "--out", tmp_path / "r.json", "--md", tmp_path / "r.md", *QUICK)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    stored = read_checkpoint(tiny_ckpt).metrics["eval"]
    assert report["format"] == FORMAT and report["compact_source"] == "checkpoint metadata (step 3)"
    assert (report["model"], report["dataset"], report["split"], report["images"]) == ("vlae", "mnist", "test", 100)
    assert report["elbo"] == stored["likelihood"]["elbo"] and report["iw"] is None
    assert [lv["kl"] for lv in report["levels"]] == stored["likelihood"]["kl"]
    assert [lv["logreg_acc"] for lv in report["levels"]] == [p["logreg"] for p in stored["probes"]["levels"]]
    assert [lv["variation_share"] for lv in report["levels"]] == stored["variation_shares"]
    assert report["bits_per_dim"] == pytest.approx(-stored["likelihood"]["discrete_elbo"] / (784 * 0.6931471805599453))
    assert set(report["factors"]) >= {"ink", "width", "slant", "class"} and len(report["factors"]["class"]) == 3
    assert all(isinstance(c["holds"], bool) for c in report["claims"]) and len(report["claims"]) == 4
    assert f"test ELBO {report['elbo']:.2f} nats/image" in r.output and "holds" in r.output
    md = (tmp_path / "r.md").read_text()
    for level in (1, 2, 3):
        assert f"![](r-level{level}.png)" in md and (tmp_path / f"r-level{level}.png").is_file()
    assert "| level | dims | KL | active units |" in md and "## Claims" in md


def test_eval_with_iw_bound_on_the_stored_part(tmp_path, tiny_ckpt, classifier):
    r = run("eval", tiny_ckpt, "--limit", 100, "--probe-images", 200, "--iw", 3, "--iw-limit", 20, "--classifier", classifier,
            "--out", tmp_path / "r.json", *QUICK)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compact_source"].startswith("checkpoint metadata") and report["images"] == 100
    assert report["iw"]["images"] == 20 and report["iw"]["k"] == 3 and report["bits_per_dim_from"] == "iw"


def test_eval_fresh_with_iw_bound(tmp_path, tiny_ckpt, mnist_dir, classifier):
    r = run("eval", tiny_ckpt, "--limit", 30, "--iw", 4, "--probe-images", 100, "--fresh", "--data-dir", mnist_dir,
            "--classifier", classifier, "--out", tmp_path / "r.json", *QUICK)
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compact_source"] == "computed" and report["images"] == 30
    iw = report["iw"]
    assert iw["k"] == 4 and iw["images"] == 30 and iw["bound"] >= iw["elbo"] and iw["discrete"] == "dequantize"
    assert report["bits_per_dim_from"] == "iw" and report["bits_per_dim"] == pytest.approx(-iw["bound"] / (784 * 0.6931471805599453))
    assert report["probes"]["fit_images"] == 100 and report["probes"]["score_images"] == 30
    assert "IW bound K=4" in r.output


@pytest.fixture(scope="module")
def hvae_eval(tmp_path_factory, tiny_hvae, classifier):
    path = tmp_path_factory.mktemp("hvae-report") / "h.json"
    return run("eval", tiny_hvae, "--limit", 100, "--probe-images", 200, "--classifier", classifier, "--out", path, *QUICK), path


def test_eval_of_an_hvae_adds_figure_2(hvae_eval):
    r, path = hvae_eval
    assert r.exit_code == 0, r.output
    report = json.loads(path.read_text())
    assert report["model"] == "hvae" and report["control"] == "eps" and report["compact_source"].startswith("checkpoint")
    g = report["gibbs"]
    assert g["chains"] == 100 and 0 <= g["gibbs"]["confidence"] <= 1 and 0 <= g["ancestral"]["class_entropy"] <= 2.31
    assert "Figure 2, gibbs" in r.output


def test_compare_a_checkpoint_and_a_report(tmp_path, tiny_ckpt, tiny_hvae, hvae_eval, classifier):
    r = run("compare", tiny_ckpt.parent, hvae_eval[1], "--classifier", classifier, "--md", tmp_path / "c.md", *QUICK)
    assert r.exit_code == 0, r.output
    lines = [line for line in (tmp_path / "c.md").read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0] == ["", tiny_ckpt.parent.name, tiny_hvae.parent.name]
    rows = {c[0]: c[1:] for c in cells[2:]}
    assert rows["model"][0].startswith("vlae (z_l)") and rows["model"][1].startswith("hvae (eps_l)")
    assert rows["step"] == ["3", "3"] and len(rows["level 3 KL"]) == 2
    verdicts = [v for name, v in rows.items() if name.startswith("claim: ")]
    assert len(verdicts) == 4 and all(c in ("holds", "does not hold") for v in verdicts for c in v)
    hvae_claims = json.loads(hvae_eval[1].read_text())["claims"]
    assert [rows[f"claim: {c['claim']}"][1] for c in hvae_claims] == [
        "holds" if c["holds"] else "does not hold" for c in hvae_claims]
    assert any(not c["holds"] for c in hvae_claims)  # the untrained classifier sees no class variation
    assert rows["Figure 2 Gibbs / ancestral confidence"][0] == "—" != rows["Figure 2 Gibbs / ancestral confidence"][1]
    assert "vlae compare" in r.output
    assert f"vlae compare {tiny_ckpt.parent} {hvae_eval[1]} --md {tmp_path / 'c.md'}" in (tmp_path / "c.md").read_text()


@pytest.mark.parametrize("args,message", [
    (["eval", "{tmp}/missing.safetensors"], "no checkpoint at"),
    (["eval", "{ckpt}", "--split", "val"], "Invalid value for '--split'"),
    (["eval", "{ckpt}", "--iw", "-1"], "Invalid value for '--iw': Input should be greater than or equal to 0"),
    (["eval", "{ckpt}", "--iw", "2", "--iw-limit", "0"], "Invalid value for '--iw-limit': Input should be greater than or equal to 1"),
    (["eval", "{ckpt}", "--out", "{tmp}/r.txt"], "use a file name ending in .json"),
    (["eval", "{ckpt}", "--md", "{tmp}/nowhere/r.md"], "does not exist"),
    (["compare", "{tmp}/bad.json"], "this version reads"),
])
def test_bad_input_one_line_exit_2(tmp_path, tiny_ckpt, args, message):
    (tmp_path / "bad.json").write_text(json.dumps({"format": "something-else/9"}))
    r = run(*[a.format(tmp=tmp_path, ckpt=tiny_ckpt) for a in args], *QUICK)
    assert r.exit_code == 2, r.output
    text = " ".join(r.output.replace("│", " ").split())  # Typer boxes its own usage errors
    assert message in text and "Traceback" not in r.output, text

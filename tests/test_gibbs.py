"""`vlae gibbs` (Figure 2; --whole: Proposition 2), its default model, the cached classifier, and the HVAE traverse
summary."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from vlae_fast import gibbs, runs
from vlae_fast.checkpoint import read_checkpoint, save_checkpoint
from vlae_fast.classifier import FORMAT as CLASSIFIER_FORMAT, DigitNet, load_classifier, quality_scores
from vlae_fast.cli.app import app
from vlae_fast.data import load_dataset
from vlae_fast.errors import CheckpointError, ConfigError
from vlae_fast.kernels import reparam_kl
from vlae_fast.models import build_model, default_config

runner = CliRunner()
TINY = {"steps": 3, "warmup": 2, "batch_size": 50, "train_limit": 200, "eval_limit": 100, "save_every": 0}


@pytest.fixture(scope="module")
def hvae_ckpt(tmp_path_factory, mnist_dir):
    """A 3-level MNIST HVAE trained for 3 steps, through the same function the bare `vlae gibbs` uses (runs.py)."""
    run = tmp_path_factory.mktemp("hvae") / "runs" / "mnist-hvae-gibbs"
    ckpt, trained = runs.default_hvae(mnist_dir, "cpu", False, run_dir=run, **TINY)
    assert trained and ckpt.is_file()
    return ckpt


@pytest.fixture(scope="module")
def classifier_cache(tmp_path_factory, mnist_dir):
    """The classifier trained from scratch on real MNIST into a fresh cache (about a minute)."""
    cache = tmp_path_factory.mktemp("cache")
    path = cache / "vlae-fast" / "classifier" / "mnist-cnn.safetensors"
    clf, acc = load_classifier(path, mnist_dir, show_progress=False)
    return cache, path, clf, acc


@pytest.mark.slow
def test_classifier_reaches_95_percent_and_caches_as_safetensors(classifier_cache, mnist_dir):
    cache, path, clf, acc = classifier_cache
    assert acc > 0.95, f"MNIST test accuracy {acc:.4f}"
    with safe_open(path, "pt") as f:  # a safetensors file with its accuracy in the metadata
        assert float(f.metadata()["test_accuracy"]) == acc
    again, acc2 = load_classifier(path)  # from the cache: no data needed, same weights
    assert acc2 == acc
    test = load_dataset("mnist", "test", mnist_dir)
    x = test.batch(torch.arange(500))
    assert torch.equal(again(x).argmax(1), clf(x).argmax(1))
    real = quality_scores(again, x)
    assert real["confidence"] > 0.9 and real["class_entropy"] > 2.2  # real digits: confident, all classes
    blank = quality_scores(again, torch.zeros(50, 1, 28, 28))
    assert blank["class_entropy"] == 0.0 and sum(blank["histogram"]) == 50  # one class: collapse shows


def test_corrupt_classifier_cache_is_a_clear_error(tmp_path):
    path = tmp_path / "mnist-cnn.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="delete it"):
        load_classifier(path)


def test_gibbs_chain_keeps_shapes_and_range(hvae_ckpt, mnist_dir):
    from vlae_fast.checkpoint import load_model

    model, _ = load_model(hvae_ckpt)
    data = load_dataset("mnist", "test", mnist_dir)
    for init in ("data", "noise"):
        res = gibbs.run_gibbs(model, data, chains=6, steps=4, every=2, init=init, seed=1)
        assert res["gibbs"].shape == res["ancestral"].shape == (6, 1, 28, 28)
        assert res["states"].shape == (2, 6, 1, 28, 28)
        for v in res.values():  # what is shown: means of p(x | z_1) and ancestral means, in [0, 1]
            assert torch.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
        # the state after 2 of 4 steps is where a 2-step chain with the same seed ends
        short = gibbs.run_gibbs(model, data, chains=6, steps=2, init=init, seed=1)
        torch.testing.assert_close(res["states"][0], short["gibbs"])
        assert not torch.equal(res["states"][0], res["gibbs"])  # and the chain moved on after it
    with pytest.raises(ConfigError, match="--every"):
        gibbs.run_gibbs(model, data, chains=2, steps=3, every=5)


def spy_encoder(model, monkeypatch) -> list:
    """Record the x that every step of the chain encodes with q(z_1 | x)."""
    seen, q_params = [], model.q_params

    def recording(l, h):
        if l == 0:
            seen.append(h.clone())
        return q_params(l, h)

    monkeypatch.setattr(model, "q_params", recording)
    return seen


def test_gibbs_chain_re_encodes_what_it_drew(hvae_ckpt, monkeypatch):
    """Eq. 6: step t + 1 encodes x^(t+1), the x step t produced (here its mean, feed='mean'), not x^(0)."""
    from vlae_fast.checkpoint import load_model

    model, _ = load_model(hvae_ckpt)
    seen = spy_encoder(model, monkeypatch)
    x0 = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    final, states, _ = gibbs.gibbs_chain(model, x0, steps=4, every=1, feed="mean")
    assert len(seen) == 4 and torch.equal(seen[0], x0)
    for t in range(1, 4):
        torch.testing.assert_close(seen[t], states[t - 1])
    assert not torch.equal(seen[1], x0)


def test_gibbs_chain_draws_x_from_p_x_given_z1(monkeypatch):
    """x^(t+1) ~ p(x | z_1^(t)) = N(mean, sigma^2 I) around the decoded mean, unclamped: the residuals the
    chain re-encodes have mean 0 and standard deviation sigma (a clamp to [0, 1] cuts the tails off: measured
    std 0.30 at sigma 0.354). An untrained Gaussian HVAE (the default run's likelihood is Bernoulli)."""
    torch.manual_seed(0)
    model = build_model(default_config("mnist", "hvae", layers=3, output="gaussian")).eval()
    seen = spy_encoder(model, monkeypatch)
    x0 = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    _, states, _ = gibbs.gibbs_chain(model, x0, steps=3, every=1, feed="sample", seed=2)
    r = torch.stack([seen[t] - states[t - 1] for t in (1, 2)])  # x^(t+1) - mean of p(x | z_1^(t))
    sigma, n = model.sigma, r.numel()  # 62720 draws: the mean's standard error is sigma / 250
    assert abs(r.mean().item()) < 5 * sigma / n ** 0.5, r.mean()
    assert r.std().item() == pytest.approx(sigma, rel=0.02)
    assert seen[1].min() < 0 and seen[1].max() > 1  # draws outside the data range reach the encoder


@pytest.mark.parametrize("output, scale", [("gaussian", 0.3), ("laplace", 0.25), ("bernoulli", None)])
def test_sample_x_has_the_likelihoods_mean_and_scale(output, scale):
    mean = torch.linspace(0.02, 0.98, 50).repeat(400)  # 20000 pixels, many near the edges of [0, 1]
    x = gibbs.sample_x(mean, output, scale, torch.Generator().manual_seed(0))
    r = x - mean
    assert abs(r.mean().item()) < 0.01, r.mean()  # unbiased around the decoded mean
    if output == "gaussian":
        assert r.std().item() == pytest.approx(scale, rel=0.02)
    elif output == "laplace":  # E|x - mean| = b
        assert r.abs().mean().item() == pytest.approx(scale, rel=0.02)
    else:
        assert set(x.unique().tolist()) == {0.0, 1.0}


def test_gibbs_refuses_a_vlae_and_unfinished_runs(tiny_ckpt, tmp_path):
    from vlae_fast.checkpoint import load_model

    vlae, _ = load_model(tiny_ckpt)
    with pytest.raises(ConfigError, match="Markov HVAE"):
        gibbs.gibbs_chain(vlae, torch.rand(2, 1, 28, 28), 2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(ConfigError, match="not saved a checkpoint yet"):
        runs.default_hvae(run_dir=tmp_path / "run")


def test_cli_bare_gibbs_reuses_the_default_run(hvae_ckpt, classifier_cache, mnist_dir, tmp_path, monkeypatch):
    cache, *_ = classifier_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.chdir(hvae_ckpt.parent.parent.parent)  # the folder holding runs/mnist-hvae-gibbs
    png = tmp_path / "g.png"
    r = runner.invoke(app, ["gibbs", "--steps", "3", "--chains", "9", "--out", str(png), "--data-dir", str(mnist_dir),
                            "--device", "cpu", "--no-progress", "--gap", "4"])
    assert r.exit_code == 0, r.output
    assert "reusing runs/mnist-hvae-gibbs/ckpt.safetensors" in " ".join(r.output.split())
    assert "gibbs" in r.output and "ancestral" in r.output and "confidence" in r.output
    text = " ".join(r.output.split())
    assert "posterior gap on 4 test images" in text and "level 1:" in text and "level 3:" in text
    img = Image.open(png)
    assert img.size[0] > 2 * img.size[1] - 40  # two panels side by side under one label row
    assert read_checkpoint(hvae_ckpt).step == TINY["steps"]  # not retrained

    npz = tmp_path / "g.npz"
    r = runner.invoke(app, ["gibbs", str(hvae_ckpt), "--steps", "4", "--every", "2", "--chains", "5", "--init", "noise",
                            "--out", str(npz), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    d = np.load(npz)
    assert d["gibbs"].shape == d["ancestral"].shape == (5, 1, 28, 28) and d["states"].shape == (2, 5, 1, 28, 28)


def test_cli_gibbs_reports_the_posterior_gap_by_level(hvae_ckpt, mnist_dir, tmp_path):
    def run(*extra):
        return runner.invoke(app, ["gibbs", str(hvae_ckpt), "--steps", "2", "--chains", "3", "--json", "--no-progress",
                                   "--out", str(tmp_path / "g.npz"), "--data-dir", str(mnist_dir), *extra])
    r = run("--gap", "6", "--init", "noise")
    assert r.exit_code == 0, r.output
    gap = json.loads(r.stdout)["posterior_gap"]
    assert gap["images"] == 6 and gap["k"] == gibbs.GAP_K and len(gap["levels"]) == 3
    assert gap["total"] == pytest.approx(sum(gap["levels"])) and gap["total"] > 0
    assert json.loads(run("--gap", "0").stdout)["posterior_gap"] is None
    r = run("--gap", "100000")
    assert r.exit_code == 2 and "--gap must be 0 (off) or between 1 and" in r.stderr and "Traceback" not in r.output


def test_cli_gibbs_with_importance_resampling(hvae_ckpt, tmp_path):
    """--particles K: the chain's z by i-SIR; the JSON and the text say how often it moved; the same seed gives the
    same chain, which is not the chain drawn from q alone; K out of range is a one-line error."""
    def run(*extra, out="g.npz"):
        return runner.invoke(app, ["gibbs", str(hvae_ckpt), "--steps", "3", "--chains", "4", "--init", "noise",
                                   "--gap", "0", "--no-progress", "--out", str(tmp_path / out), *extra])
    r = run("--particles", "5", "--json")
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["particles"] == 5 and 0 <= d["moved"] <= 1
    first = np.load(tmp_path / "g.npz")["gibbs"]
    assert run("--particles", "5", out="again.npz").exit_code == 0
    np.testing.assert_array_equal(np.load(tmp_path / "again.npz")["gibbs"], first)
    r = run("--particles", "1", "--json", out="q.npz")
    assert json.loads(r.stdout)["moved"] is None
    assert not np.array_equal(np.load(tmp_path / "q.npz")["gibbs"], first)
    r = run("--particles", "5", out="g.png")
    assert r.exit_code == 0 and "i-SIR with K=5" in " ".join(r.output.split()), r.output
    r = run("--particles", "0")
    assert r.exit_code == 2 and "--particles" in r.stderr and "Traceback" not in r.output


def test_cli_gibbs_errors_are_one_line(tiny_ckpt, tmp_path):
    r = runner.invoke(app, ["gibbs", str(tiny_ckpt), "--out", str(tmp_path / "g.png"), "--no-progress"])
    assert r.exit_code == 2 and "Markov HVAE" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["gibbs", str(tiny_ckpt), "--out", str(tmp_path / "g.jpg")])
    assert r.exit_code == 2 and ".png or .gif or .npz" in r.stderr


def test_cli_traverse_on_hvae_prints_variance_shares(hvae_ckpt, tmp_path):
    r = runner.invoke(app, ["traverse", str(hvae_ckpt), "--layer", "3", "--steps", "4", "--out", str(tmp_path / "t.png")])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())  # rich wraps long lines
    assert "level 1:" in text and "level 3:" in text and "%" in text


def test_cli_train_hvae_uses_its_own_learning_rate(tmp_path, mnist_dir):
    r = runner.invoke(app, ["train", "mnist", "--model", "hvae", "--layers", "3", "--steps", "2", "--batch-size", "50",
                            "--train-limit", "100", "--eval-limit", "50", "--out", str(tmp_path), "--device", "cpu",
                            "--data-dir", str(mnist_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    info = read_checkpoint(tmp_path / "ckpt.safetensors")
    assert info.config.model == "hvae" and info.config.layers == 3 and info.train["lr"] == 1e-4
    r = runner.invoke(app, ["train", "mnist", "--model", "hvae", "--join", "gated_add", "--steps", "1",
                            "--out", str(tmp_path / "x"), "--data-dir", str(mnist_dir), "--no-progress"])
    assert r.exit_code == 2 and "join" in r.stderr


def test_the_sampling_module_does_not_train():
    """Training the default HVAE is runs.py's job: gibbs.py reads finished checkpoints only."""
    import ast
    import inspect

    imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(gibbs)))
                if isinstance(node, ast.ImportFrom)}
    assert not imported & {"train", "config", "runs"}, imported


# --- Proposition 2: the chain on the whole code (--whole) ------------------------------------------------
def small(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(default_config("mnist", name, latent_dims=[2, 3, 4], hidden=32, channels=(8, 16))).eval()


def test_chain_on_z1_of_an_hvae_is_eq6_drawn_as_before(hvae_ckpt):
    """The chain on z_1 of a Markov HVAE, written out: z_1 ~ q(z_1 | x) from the seed's generator, x ~ p(x | z_1)
    from the same one. Sampling the levels above from their own stream leaves these draws (and so the scores in
    docs/gibbs.md) exactly as they were."""
    from vlae_fast.checkpoint import load_model

    model, _ = load_model(hvae_ckpt)
    model.eval()
    x0 = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    final, states, _ = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=4)
    g, x = torch.Generator().manual_seed(4), x0
    with torch.no_grad():
        for t in range(3):
            mu, logvar = model.q_params(0, x)
            mean = model.generate([reparam_kl(mu, logvar, torch.randn(mu.shape, generator=g))[0]])
            x = gibbs.sample_x(mean, model.cfg.output, model.sigma, g)
            torch.testing.assert_close(states[t], mean, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["hvae", "lvae"])
def test_whole_chain_of_a_markov_model_is_its_chain_on_z1(name):
    """x reads z_1 alone, so with the same seed the two chains are one chain, step for step."""
    model = small(name)
    x0 = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    on_z1 = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=2)
    whole = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=2, whole=True)
    torch.testing.assert_close(whole[1], on_z1[1], rtol=0, atol=0)


def spy_decoder(model, monkeypatch) -> list:
    """Record the codes every step of the chain decodes."""
    seen, generate = [], model.generate

    def recording(z):
        seen.append([t.clone() for t in z])
        return generate(z)

    monkeypatch.setattr(model, "generate", recording)
    return seen


@pytest.mark.parametrize("name", ["ar_hvae", "lvae", "vlae"])
def test_whole_chain_decodes_every_level_and_repeats_with_its_seed(name, monkeypatch):
    """--whole: each step decodes a fresh z ~ q(z | x) on all levels ([N, d_l] each); the same seed gives the same
    chain, another seed another; the chain on z_1 (where defined) decodes z_1 alone."""
    model = small(name)
    seen = spy_decoder(model, monkeypatch)
    x0 = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    final, states, _ = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=5, whole=True)
    assert final.shape == (4, 1, 28, 28) and states.shape == (3, 4, 1, 28, 28)
    assert len(seen) == 3 and all([t.shape for t in z] == [(4, 2), (4, 3), (4, 4)] for z in seen)
    assert not torch.equal(seen[0][2], seen[1][2])  # the top level is redrawn every step
    again = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=5, whole=True)[1]
    torch.testing.assert_close(again, states, rtol=0, atol=0)
    assert not torch.equal(gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=6, whole=True)[1], states)
    if model.GIBBS_ON_Z1:
        seen.clear()
        gibbs.gibbs_chain(model, x0, steps=2, seed=5)
        assert [[t.shape for t in z] for z in seen] == [[(4, 2)]] * 2


@pytest.mark.parametrize("name", ["ar_hvae", "vlae"])
def test_whole_chain_with_importance_resampling(name):
    """--whole --particles K on models whose x reads every level: every level's codes are resampled together."""
    model = small(name)
    x0 = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    final, states, moved = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=5, whole=True, particles=4)
    assert final.shape == (4, 1, 28, 28) and states.shape == (3, 4, 1, 28, 28) and 0 <= moved <= 1
    again = gibbs.gibbs_chain(model, x0, steps=3, every=1, seed=5, whole=True, particles=4)
    torch.testing.assert_close(again[1], states, rtol=0, atol=0)


def test_chain_on_z1_needs_a_markov_model_and_whole_takes_any(tiny_ckpt):
    from vlae_fast.checkpoint import load_model

    ar = small("ar_hvae")
    with pytest.raises(ConfigError, match="Markov HVAE.*--whole"):
        gibbs.gibbs_chain(ar, torch.rand(2, 1, 28, 28), 2)
    gibbs.check_hvae(small("lvae"))  # the LVAE's generative model is the HVAE's: Markov
    vlae, _ = load_model(tiny_ckpt)
    res = gibbs.run_gibbs(vlae, None, chains=3, steps=2, init="noise", whole=True)
    assert res["gibbs"].shape == res["ancestral"].shape == (3, 1, 28, 28)


def test_same_class_counts_pairs_in_one_class():
    """classifier.same_class: a stand-in classifier whose class is the image's mean brightness in tenths."""
    from vlae_fast.classifier import same_class

    class Brightness(torch.nn.Module):
        def forward(self, x):
            return -(torch.arange(10.0) - x.flatten(1).mean(1, keepdim=True) * 10).abs()

    level = torch.tensor([0.02, 0.32, 0.52, 0.92]).view(4, 1, 1, 1).expand(4, 1, 28, 28)
    other = level.clone()
    other[1], other[3] = 0.12, 0.22  # two of four pairs change class
    assert same_class(Brightness(), level, other) == 0.5
    assert same_class(Brightness(), level, level.flip(0)) == 0.0


@pytest.fixture()
def untrained_classifier(tmp_path, monkeypatch):
    """An untrained DigitNet where the command looks for the cached classifier: the scores' plumbing only."""
    cache = tmp_path / "cache"
    path = cache / "vlae-fast" / "classifier" / "mnist-cnn.safetensors"
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    save_file({k: v.contiguous() for k, v in DigitNet().state_dict().items()}, path,
              metadata={"format": CLASSIFIER_FORMAT, "test_accuracy": "0.1", "epochs": "0"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return path


def test_cli_gibbs_on_z1_of_an_lvae(tmp_path, untrained_classifier, mnist_dir):
    ckpt = save_checkpoint(tmp_path / "lvae.safetensors", small("lvae"), train={"data_dir": str(mnist_dir)})
    r = runner.invoke(app, ["gibbs", str(ckpt), "--steps", "2", "--chains", "4", "--out", str(tmp_path / "g.png"),
                            "--data-dir", str(mnist_dir), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    text = " ".join(r.output.split())
    assert "2 steps on z_1 from data" in text and "confidence" in text
    assert "of the chains end in the class of the test image they started from" in text


def test_cli_gibbs_whole_on_an_ar_hvae(tmp_path, untrained_classifier, mnist_dir):
    ckpt = save_checkpoint(tmp_path / "ar.safetensors", small("ar_hvae"), train={"data_dir": str(mnist_dir)})
    r = runner.invoke(app, ["gibbs", str(ckpt), "--out", str(tmp_path / "g.png"), "--no-progress"])
    assert r.exit_code == 2 and "--whole" in r.stderr and "Traceback" not in r.output
    npz = tmp_path / "g.npz"
    r = runner.invoke(app, ["gibbs", str(ckpt), "--whole", "--steps", "4", "--every", "2", "--chains", "5", "--init",
                            "noise", "--out", str(npz), "--device", "cpu", "--no-progress", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["whole"] is True and set(out["scores"]) == {"gibbs", "ancestral"}
    assert "same_class_as_start" not in out  # noise has no class to keep
    d = np.load(npz)
    assert d["gibbs"].shape == d["ancestral"].shape == (5, 1, 28, 28) and d["states"].shape == (2, 5, 1, 28, 28)
    png = tmp_path / "g.png"
    r = runner.invoke(app, ["gibbs", str(ckpt), "--whole", "--steps", "2", "--chains", "4", "--init", "noise",
                            "--out", str(png), "--device", "cpu", "--no-progress"])
    assert r.exit_code == 0, r.output
    assert "on every level" in " ".join(r.output.split()) and "confidence" in r.output


def test_importance_resampling_in_blocks_is_the_same_step(monkeypatch):
    """Many particles go through the model in blocks of ISIR_ROWS images; each block is the same i-SIR step: with
    one block per chain, each chain's pick equals the pick of a call on that chain alone with the same stream."""
    model = small("hvae")
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    z = model.posterior_sample(x)
    monkeypatch.setattr(gibbs, "ISIR_ROWS", 8)  # 8 // 5 particles: one chain per block
    seen = []
    sample = model.posterior_sample
    monkeypatch.setattr(model, "posterior_sample", lambda x, eps: seen.append(len(x)) or sample(x, eps))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        picked, moved = gibbs.resample_posterior(model, x, z, 5, g)
        assert seen == [4, 4, 4] and [t.shape for t in picked] == [(3, 2), (3, 3), (3, 4)] and moved.shape == (3,)
        g = torch.Generator().manual_seed(3)
        for i in range(3):
            alone, _ = gibbs.resample_posterior(model, x[i : i + 1], [t[i : i + 1] for t in z], 5, g)
            for a, b in zip(alone, picked):
                torch.testing.assert_close(a[0], b[i], rtol=0, atol=0)

"""bench/hierarchy.py: issue 17's targets read off vlae eval reports, each claim failing on its own."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import hierarchy  # noqa: E402

GOOD = {"knn": [0.2, 0.3, 0.8], "ink": [0.5, 0.3, 0.2], "width": [0.2, 0.5, 0.3], "slant": [0.1, 0.6, 0.3],
        "class": [0.1, 0.25, 0.65], "elbo": 15.0}


def test_all_targets_hold_on_a_run_that_meets_them():
    assert all(hierarchy.verdicts(GOOD).values())


@pytest.mark.parametrize("key, value, claim", [
    ("knn", [0.2, 0.3, 0.74], "identity"), ("knn", [0.36, 0.4, 0.8], "identity"),
    ("knn", [0.2, 0.5, 0.45], "identity"), ("ink", [0.3, 0.5, 0.2], "ink"),
    ("width", [0.5, 0.2, 0.3], "width"), ("slant", [0.1, 0.3, 0.6], "width"),
    ("class", [0.16, 0.2, 0.64], "class"), ("class", [0.1, 0.31, 0.59], "class"), ("elbo", 11.3, "ELBO"),
    ("output", "laplace", "ELBO")])  # a Laplace ELBO (371 nats on MNIST) is not comparable with the Gaussian bar
def test_each_target_fails_alone(key, value, claim):
    v = hierarchy.verdicts({**GOOD, key: value})
    assert [k for k, ok in v.items() if not ok] == [k for k in v if k.startswith(claim)]


def test_table_from_reports_with_seeds(tmp_path):
    paths = []
    for seed, top in enumerate((0.8, 0.7)):
        r = {"levels": [{"knn_acc": a} for a in (0.2, 0.3, top)], "elbo": 15.0,
             "factors": {k: GOOD[k] for k in ("ink", "width", "slant", "class")},
             "run": {"settings": {"recipe": "hierarchy", "seed": seed}, "train_seconds": 600, "steps": 10}}
        paths.append(tmp_path / f"s{seed}.json")
        paths[-1].write_text(json.dumps(r))
    out = subprocess.run([sys.executable, "bench/hierarchy.py", *map(str, paths)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert "| s0 | 0 | 0.20 / 0.30 / 0.80 |" in out and "| 10 | 5/5 |" in out and "4/5 (fails: identity" in out
    assert "0.75 ± 0.07" in out and "identity rises, top >= .75, bottom <= .35: holds on 1 of 2 runs" in out
    assert "over 2 runs, seeds 0, 1 (mean" in out
    for i, (key, value) in enumerate((("top-encoder", "separate"), ("lr-decay", "cosine"), ("patch", "a monkeypatch"))):
        r = json.loads(paths[0].read_text())  # the same recipe but one model or training option, or a patched loop:
        r["run"]["settings"][key] = value  # a group of its own, not pooled with the recipe's runs
        (tmp_path / f"x{i}.json").write_text(json.dumps(r))
    out = subprocess.run([sys.executable, "bench/hierarchy.py", *map(str, paths), *map(str, tmp_path.glob("x*.json"))],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert "over 2 runs, seeds 0, 1 (mean" in out and out.count(" runs, seeds ") == 1, out  # one-run groups: no summary


def test_within_class_variance_leaves_out_the_class_changes():
    """bench/within_class.py: a row whose factor jumps with the class (1, 3 | 10, 12) has within-class variance 1,
    not the row's 22.25; a row of one class keeps its whole variance."""
    import torch
    import within_class

    v = torch.tensor([[1.0, 3.0, 10.0, 12.0], [1.0, 3.0, 10.0, 12.0]])
    pred = torch.tensor([[0, 0, 1, 1], [4, 4, 4, 4]])
    assert within_class.within_class_variance(v[:1], pred[:1]) == pytest.approx(1.0)
    assert within_class.within_class_variance(v, pred) == pytest.approx((1.0 + v[1].var(unbiased=False).item()) / 2)
    pred3 = torch.tensor([[0, 0, 0, 1]])  # weights: 3/4 x var(1, 3, 10) + 1/4 x 0
    assert within_class.within_class_variance(v[:1], pred3) == pytest.approx(0.75 * torch.tensor([1.0, 3, 10]).var(unbiased=False).item())


def test_spread_paired_se_and_disjoint_fit_sets():
    """bench/spread.py: the paired SE is sd(b - a) / sqrt(n); each fit set is its own slice of the
    training codes (a level whose code holds the label only in fit set 1 is right on the test set with that
    set alone), and a level that holds the label everywhere beats noise by its whole margin."""
    import numpy as np
    import spread

    a, b = np.array([1, 0, 1, 1, 0, 0]), np.array([1, 1, 1, 0, 1, 1])
    assert spread.paired_se(a, b) == pytest.approx(np.std(b - a, ddof=1) / np.sqrt(6))
    rng = np.random.default_rng(0)
    y_fit, y = np.tile(np.arange(4), 50), np.tile(np.arange(4), 25)  # 2 fit sets of 100, 100 scored
    label = lambda labels: labels[:, None] * 10.0 + rng.normal(0, 0.1, (len(labels), 2))
    noise = lambda n: rng.normal(0, 1, (n, 2))
    only_second = np.concatenate([noise(100), label(y_fit[100:])])
    s = spread.spread([noise(200), only_second, label(y_fit)], y_fit, [noise(100), label(y), label(y)], y,
                            fits=2, size=100)
    assert s["acc"][2] == [1.0, 1.0] and s["acc"][1][1] == 1.0 and s["acc"][1][0] < 0.6 and max(s["acc"][0]) < 0.6
    assert len(s["se"]) == 2 and s["se"][1] > 0.02  # on fit set 1, where level 2 is mostly wrong (set 2: SE 0)


def test_spread_runs_on_a_checkpoint(tiny_ckpt, mnist_dir, tmp_path):
    import torch
    from safetensors.torch import save_file
    from vlae_fast.classifier import FORMAT, DigitNet

    clf = tmp_path / "clf.safetensors"  # an untrained classifier in the cache format: the plumbing, not a minute of training
    save_file({k: v.contiguous() for k, v in DigitNet().state_dict().items()}, clf,
              metadata={"format": FORMAT, "test_accuracy": "0.1", "epochs": "0"})
    out = subprocess.run([sys.executable, "bench/spread.py", str(tiny_ckpt), "--fits", "2", "--fit-images", "50",
                          "--grid-seeds", "2", "--limit", "100", "--data-dir", str(mnist_dir), "--classifier", str(clf)],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    rows = [line for line in out.splitlines() if line.startswith("| ckpt.safetensors |")]
    assert len(rows) == 5 and rows[0].count(" ± ") == 3 and rows[0].count("|") == 6
    assert [r.split(" | ")[1] for r in rows[1:]] == ["ink", "width", "slant", "class"]
    assert all(r.count(" ± ") == 4 for r in rows[1:])
    bad = subprocess.run([sys.executable, "bench/spread.py", str(tiny_ckpt), "--fits", "100",
                          "--data-dir", str(mnist_dir), "--classifier", str(clf)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode != 0 and "lower --fits or --fit-images" in bad.stderr


def test_spread_claim_margins():
    import spread

    assert spread.margin("ink", [0.5, 0.3, 0.2]) == pytest.approx(0.2)
    assert spread.margin("slant", [0.01, 0.30, 0.69]) == pytest.approx(-0.39)  # the default's seed 0: fails by .39
    assert spread.margin("width", [0.07, 0.54, 0.39]) == pytest.approx(0.15)
    assert spread.margin("class", [0.1, 0.25, 0.65]) == pytest.approx(0.65)

"""A small MNIST classifier, trained once and cached, that scores generated digits.

Two scores per batch of images (section 3's claim is that Gibbs samples look like ancestral ones):
    confidence     mean over images of max_k softmax(logits)_k: high when the digits are legible
    class_entropy  entropy (nats) of the histogram of predicted classes: log 10 = 2.303 when all ten
                   digits appear equally often, 0 when the samples collapse to one digit
The weights live in a safetensors file in the user cache (never a pickle), with their test accuracy.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from .checkpoint import UNREADABLE, read_safetensors
from .data import load_dataset
from .errors import CheckpointError
from .paths import cache_root
from .progress import progress_bar

FORMAT = "vlae-fast-mnist-classifier/1"
EPOCHS = 1  # one pass over the 60k digits already gives ~98 % test accuracy (~1-3 min on 2 CPU cores)
BATCH = 128


def default_cache_path() -> Path:
    """$XDG_CACHE_HOME/vlae-fast/classifier/mnist-cnn.safetensors (else ~/.cache/...)."""
    return cache_root() / "classifier" / "mnist-cnn.safetensors"


class DigitNet(nn.Module):
    """Two 5x5 convolutions with max-pooling, then two dense layers: [B, 1, 28, 28] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # [B, 16, 14, 14]
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),  # [B, 32, 7, 7]
            nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@torch.no_grad()
def accuracy(clf: nn.Module, x: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    clf.eval()
    hits = sum((clf(x[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum().item()
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def train_classifier(data_dir: str | Path | None = None, epochs: int = EPOCHS, seed: int = 0,
                     show_progress: bool = True) -> tuple[DigitNet, float]:
    """Adam on the 60k MNIST training digits; returns the net and its accuracy on the 10k test digits."""
    train_set, test_set = load_dataset("mnist", "train", data_dir), load_dataset("mnist", "test", data_dir)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    clf = DigitNet()
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    n = len(train_set)
    steps = epochs * (n // BATCH)
    with progress_bar(show_progress) as bar:
        task = bar.add_task("MNIST classifier (once)", total=steps, stats="")
        clf.train()
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(n // BATCH):
                idx = perm[i * BATCH : (i + 1) * BATCH]
                loss = F.cross_entropy(clf(train_set.batch(idx)), train_set.labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(task, advance=1, stats=f"loss={loss.item():.3f}")
    acc = accuracy(clf, test_set.batch(torch.arange(len(test_set))), test_set.labels)
    return clf, acc


def load_classifier(cache_path: str | Path | None = None, data_dir: str | Path | None = None,
                    show_progress: bool = True) -> tuple[DigitNet, float]:
    """The cached classifier and its test accuracy; trains and caches it first if there is none."""
    path = Path(cache_path) if cache_path else default_cache_path()
    clf = DigitNet()
    if path.is_file():
        try:
            state, meta = read_safetensors(path)
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}")
            clf.load_state_dict(state, strict=True)
            clf.eval()
            return clf, float(meta["test_accuracy"])
        except (*UNREADABLE, KeyError) as e:
            raise CheckpointError(f"cached classifier {path} is unreadable ({str(e).splitlines()[0]}); "
                                  "delete it and it will be retrained") from None
    clf, acc = train_classifier(data_dir, show_progress=show_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in clf.state_dict().items()}, tmp,
              metadata={"format": FORMAT, "test_accuracy": repr(acc), "epochs": str(EPOCHS)})
    os.replace(tmp, path)
    return clf.eval(), acc


@torch.no_grad()
def quality_scores(clf: nn.Module, x: Tensor) -> dict:
    """Sample-quality scores of images x ([N, 1, 28, 28] in [0, 1]); see the module docstring."""
    clf.eval()
    probs = F.softmax(clf(x.float().cpu()), dim=1)  # [N, 10]
    counts = torch.bincount(probs.argmax(1), minlength=10)
    hist = counts.double() / counts.sum()
    entropy = -(hist[hist > 0] * hist[hist > 0].log()).sum().item() + 0.0  # + 0.0 turns -0.0 into 0.0
    return {"confidence": probs.max(1).values.mean().item(), "class_entropy": entropy,
            "max_entropy": math.log(10), "histogram": counts.tolist()}


@torch.no_grad()
def same_class(clf: nn.Module, a: Tensor, b: Tensor) -> float:
    """The fraction of pairs (a_i, b_i) the classifier puts in the same class, e.g. a chain's end and its start."""
    clf.eval()
    return (clf(a.float().cpu()).argmax(1) == clf(b.float().cpu()).argmax(1)).double().mean().item()


def score_samples(samples: dict[str, Tensor], dataset: str, data_dir: str | Path | None = None,
                  show_progress: bool = True, starts: Tensor | None = None) -> dict | None:
    """quality_scores of each named batch of samples with the cached classifier (trained first if there
    is none), or None for a data set other than MNIST (the only one it knows).

    Returns {"classifier_accuracy": test accuracy, "scores": {name: quality_scores(...)}}, and with `starts` (the
    images a Gibbs chain started from) "same_class_as_start": same_class(samples["gibbs"], starts)."""
    if dataset != "mnist":
        return None
    clf, acc = load_classifier(data_dir=data_dir, show_progress=show_progress)
    out = {"classifier_accuracy": acc, "scores": {k: quality_scores(clf, x) for k, x in samples.items()}}
    if starts is not None:
        out["same_class_as_start"] = same_class(clf, samples["gibbs"], starts)
    return out

"""What `vlae eval` and `vlae train`'s last step run: the compact part (stored in the checkpoint) and the
full report built on it. Only the model interface is used, so every model gets the same report."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import generate
from ..checkpoint import load_model
from ..classifier import load_classifier, quality_scores
from ..data import ImageSet, load_for_checkpoint
from ..errors import ConfigError
from ..images import save_images
from ..models.base import LatentModel
from .levels import factor_shares, grid_for, variation_shares
from .likelihood import evaluate, iw_bound
from .probes import PROBE_IMAGES, active_units, label_probes, posterior_means, sklearn_missing
from .report import COMPACT_FORMAT, assemble, check_output, markdown

GIBBS_CHAINS, GIBBS_STEPS = 100, 100  # `vlae gibbs`' defaults (Figure 2)
DIGIT_SHAPE = (1, 28, 28)  # images the cached MNIST classifier reads


def compact(model: LatentModel, fit_set: ImageSet | None, data: ImageSet, seed: int = 0,
            probe_images: int = PROBE_IMAGES, limit: int | None = None, likelihood: dict | None = None,
            show_progress: bool = False) -> dict:
    """ELBO terms, active units, label probes and variation shares of `data` (the probes fitted on the first
    `probe_images` of fit_set): what `vlae train` stores in the checkpoint, seconds on a CPU for MNIST.
    likelihood: evaluate()'s result if already computed; limit: how `data` was cut (None = whole split)."""
    t0 = time.perf_counter()
    lik = likelihood if likelihood is not None else evaluate(model, data, seed=seed, discrete=True,
                                                             show_progress=show_progress)
    mus, labels = posterior_means(model, data)
    au = active_units(mus)
    probes, notes, n_fit = None, [], 0
    if labels is None:
        notes.append(f"no labels in {data.name}: label probes skipped")
    elif fit_set is None or fit_set.labels is None:
        notes.append("no labelled training images: label probes skipped")
    elif (missing := sklearn_missing()) is not None:
        notes.append(missing)
    else:
        fit = fit_set.head(probe_images)
        n_fit = len(fit)
        if fit_set.split == data.split:  # never score a probe on the images it was fitted on
            mus, labels = [m[n_fit:] for m in mus], labels[n_fit:]
        fit_mus, fit_labels = posterior_means(model, fit)
        if len(labels) == 0 or len(torch.unique(fit_labels)) < 2:
            notes.append(f"label probes skipped: {len(labels)} images to score, {len(torch.unique(fit_labels))} "
                         "label values to fit on (need some and at least 2)")
        else:
            probes = label_probes(fit_mus, fit_labels, mus, labels, seed=seed)
    return {"format": COMPACT_FORMAT, "split": data.split, "images": len(data), "limit": limit, "seed": seed,
            "probe_images": n_fit or probe_images, "likelihood": lik,
            "active_units": au, "probes": probes,
            "grid": grid_for(len(data)), "variation_shares": variation_shares(model, grid_for(len(data)), seed),
            "notes": notes,
            "seconds": round(time.perf_counter() - t0, 2)}


def reusable(stored: dict | None, split: str, limit: int | None, seed: int, probe_images: int) -> bool:
    """True when a stored compact part answers exactly this request (same split, images, seed, probes)."""
    return (isinstance(stored, dict) and stored.get("format") == COMPACT_FORMAT and stored.get("split") == split
            and stored.get("limit") == limit and stored.get("seed") == seed and stored.get("probe_images") == probe_images)


def _classifier(model: LatentModel, classifier_path, data_dir, show_progress: bool):
    if tuple(model.cfg.image_shape) != DIGIT_SHAPE:
        return None, f"class factor skipped: the classifier reads 1 x 28 x 28 digits, not {tuple(model.cfg.image_shape)}"
    clf, acc = load_classifier(classifier_path, data_dir if model.cfg.dataset == "mnist" else None, show_progress)
    return clf, None


def evaluate_checkpoint(ckpt_path: str | Path, *, data_dir: str | Path | None = None, split: str = "test",
                        limit: int | None = None, iw: int = 0, iw_limit: int | None = None, seed: int = 0,
                        probe_images: int = PROBE_IMAGES,
                        classifier_path: str | Path | None = None, fresh: bool = False, stored_any: bool = False,
                        device: str = "cpu", show_progress: bool = True) -> tuple[dict, LatentModel]:
    """The full report of a checkpoint (report.FORMAT) and its model. The compact part comes from the
    checkpoint's metadata when it answers the same request (stored_any: whatever request it answered, with
    its split, limit and seed; never when `fresh`); the IW bound (iw > 0, on the first iw_limit images),
    image factors, claims and the Figure 2 numbers (models with a Markov bottom level) are computed here."""
    from ..train import resolve_device  # lazily: train imports this package

    if split not in ("train", "test"):
        raise ConfigError(f"--split must be train or test; got {split!r}")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1; got {limit}")
    if iw_limit is not None and iw_limit < 1:
        raise ConfigError(f"--iw-limit must be at least 1; got {iw_limit}")
    if probe_images < 1:
        raise ConfigError(f"--probe-images must be at least 1; got {probe_images}")
    if iw < 0:
        raise ConfigError(f"--iw must be 0 (off) or the number of importance samples K; got {iw}")
    model, info = load_model(ckpt_path, resolve_device(device))
    model.eval()
    cache: dict[str, ImageSet] = {}

    def data(which: str) -> ImageSet:
        if which not in cache:
            cache[which] = load_for_checkpoint(info, which, str(data_dir) if data_dir else None)
        return cache[which]

    stored = (info.metrics or {}).get("eval")
    if stored_any and isinstance(stored, dict) and stored.get("format") == COMPACT_FORMAT:  # take its settings
        split, limit, seed, probe_images = (stored[k] for k in ("split", "limit", "seed", "probe_images"))
    if not fresh and reusable(stored, split, limit, seed, probe_images):
        part = {**stored, "source": f"checkpoint metadata (step {info.step})"}
    else:
        part = compact(model, data("train"), data(split).head(limit), seed, probe_images, limit,
                       show_progress=show_progress)
    notes = []
    iw_part = iw_bound(model, data(split).head(limit).head(iw_limit), iw, seed, show_progress=show_progress) if iw else None
    factors, gibbs = None, None
    if model.cfg.image_shape[0] == 1:
        clf, note = _classifier(model, classifier_path, data_dir or info.train.get("data_dir"), show_progress)
        notes += [note] if note else []
        factors = {**factor_shares(model, clf, part["grid"], seed), "grid": part["grid"]}
        if model.GIBBS_ON_Z1 and clf is not None:
            from ..gibbs import run_gibbs  # Figure 2: eq. 6's chain on z_1 beside ancestral samples

            res = run_gibbs(model, data("test"), GIBBS_CHAINS, GIBBS_STEPS, seed=seed)
            gibbs = {"chains": GIBBS_CHAINS, "steps": GIBBS_STEPS,
                     **{k: quality_scores(clf, res[k]) for k in ("gibbs", "ancestral")}}
    else:
        notes.append(f"image factors skipped: they are defined on 1-channel images, not {model.cfg.image_shape[0]} channels")
    C, H, W = model.cfg.image_shape
    meta = {"model": model.cfg.model, "dataset": model.cfg.dataset, "control": model.CONTROL,
            "latent_dims": list(model.latent_dims), "output": model.cfg.output, "image_dims": C * H * W,
            "checkpoint": {"path": str(ckpt_path), "step": info.step}}
    return assemble(meta, part, iw=iw_part, factors=factors, gibbs=gibbs, notes=notes), model


def write_markdown(report: dict, model: LatentModel, path: str | Path, seed: int = 0, steps: int = 10) -> Path:
    """The markdown report at `path`, with each level's traversal (generate.traverse) as PATH-stem-levelK.png beside it."""
    path = Path(path)
    check_output(path, ".md", "--md")
    pictures = []
    for layer in range(1, len(model.latent_dims) + 1):
        png = path.with_name(f"{path.stem}-level{layer}.png")
        save_images(generate.traverse(model, layer, steps, seed), png)
        pictures.append(png.name)
    path.write_text(markdown(report, pictures))
    return path

"""What each level's code holds: active units, and how well its posterior means predict the labels.

active units (Burda et al. 2016): unit u of level l is active when Cov_x(E_q[z_lu | x]) > 0.01, the variance
    over the data of its posterior mean; a level the model does not use has mean = prior mean for every x.
probes: a k-nearest-neighbour classifier (k = 10, Euclidean on standardised codes) and a logistic
    regression (standardised codes, L2, C = 1) fitted on the posterior means of training images and
    scored on the evaluated images, for every level apart and all levels together. scikit-learn does the
    fitting (the `eval` extra: pip install "vlae-fast[eval]"); without it the probes are skipped with a note.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .. import generate
from ..data import ImageSet
from ..models.base import LatentModel

AU_THRESHOLD = 0.01  # Burda et al. 2016
KNN_K = 10
PROBE_IMAGES = 5000  # training images the probes are fitted on (the first N): a few seconds on a CPU


def posterior_means(model: LatentModel, data: ImageSet) -> tuple[list[Tensor], Tensor | None]:
    """Every level's posterior mean for every image (CPU, data-set order) and the labels (or None)."""
    codes = generate.encode(model, data)
    return [codes[f"z{l}"] for l in range(1, len(model.latent_dims) + 1)], codes.get("labels")


def active_units(mus: list[Tensor], threshold: float = AU_THRESHOLD) -> list[int]:
    """How many units of each level have Cov_x(E_q[z | x]) > threshold (mus: per level [N, d_l])."""
    return [int((mu.double().var(dim=0, unbiased=True) > threshold).sum()) if len(mu) > 1 else 0 for mu in mus]


def sklearn_missing() -> str | None:
    """None if scikit-learn can be imported, else the note that says how to get it."""
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return 'label probes skipped: scikit-learn is not installed (pip install "vlae-fast[eval]")'
    return None


def knn_probe(fit_images: int, k: int = KNN_K):
    """The unfitted kNN probe: standardised codes, k nearest neighbours (fewer when fit on fewer images)."""
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(k, fit_images)))


def probe_accuracy(fit_x: np.ndarray, fit_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                   k: int = KNN_K, seed: int = 0) -> dict[str, float]:
    """Test accuracy of the kNN and logistic-regression probes fitted on (fit_x, fit_y): {'knn', 'logreg'}."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    knn = knn_probe(len(fit_x), k)
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    return {name: float(clf.fit(fit_x, fit_y).score(test_x, test_y)) for name, clf in (("knn", knn), ("logreg", logreg))}


def label_probes(fit_mus: list[Tensor], fit_labels: Tensor, mus: list[Tensor], labels: Tensor, seed: int = 0) -> dict:
    """Probe accuracies of each level and of all levels together:
    {'levels': [{'knn', 'logreg'} per level], 'all': {...}, 'chance': the share of the commonest test label,
     'fit_images', 'score_images'}."""
    fy, ty = fit_labels.cpu().numpy(), labels.cpu().numpy()

    def probe(fit: list[Tensor], test: list[Tensor]) -> dict[str, float]:
        return probe_accuracy(torch.cat(fit, 1).double().numpy(), fy, torch.cat(test, 1).double().numpy(), ty, seed=seed)

    per_level = [probe([f], [t]) for f, t in zip(fit_mus, mus)]
    return {"levels": per_level, "all": probe(fit_mus, mus), "chance": float(np.bincount(ty).max() / len(ty)),
            "fit_images": len(fy), "score_images": len(ty)}

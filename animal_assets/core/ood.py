"""Out-of-distribution scores from image embeddings, and the share of images to flag.

An image whose nearest neighbours in feature space are far away is unlike the rest of the
dataset (a person, a car, text in an animal dataset), so the mean cosine distance to its ``k``
nearest neighbours (:mod:`animal_assets.core.knn`, exact) serves as its outlier score; the
entropy of its neighbours' given labels is the other score. How many images to flag is
estimated from the scores' distribution (:func:`estimate_outlier_share`).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from animal_assets.core.knn import knn

def knn_ood_scores(
    features: np.ndarray,
    *,
    k: int = 10,
    block_size: int = 4096,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Outlier score per row: mean cosine distance to its k nearest neighbours.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
    k, block_size, device
        As in :func:`animal_assets.core.knn.knn`.

    Returns
    -------
    np.ndarray, float32, shape (N,)
        Higher means more outlying; values lie in [0, 2].
    """
    distances, _ = knn(features, k=k, block_size=block_size, device=device)
    return mean_distance(distances)


def mean_distance(distances: np.ndarray) -> np.ndarray:
    """Outlier score per row from its neighbours' cosine distances (N, k): their mean, float32."""
    return np.asarray(distances).mean(axis=1, dtype=np.float64).astype(np.float32)


def neighbour_label_entropy(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
) -> np.ndarray:
    """Outlier score per row: entropy of the given labels of its nearest neighbours.

    Out-of-distribution images that form dense clusters of their own (e.g. vehicles in an animal
    set) sit close to each other, so their kNN distance is small; but they carry labels drawn at
    random, so their neighbours disagree on the label, while an in-distribution image's
    neighbours agree up to the label noise between look-alike classes.

    Parameters
    ----------
    indices : np.ndarray, int, shape (N, k)
        Neighbour indices, e.g. from :func:`knn`.
    labels : np.ndarray, int, shape (N,)
        Given label of every row, in 0..num_classes-1.
    num_classes : int
        K.

    Returns
    -------
    np.ndarray, float32, shape (N,)
        Entropy in nats, in [0, log(min(k, K))]; higher means more outlying.
    """
    indices = np.asarray(indices)
    labels = np.asarray(labels)
    if indices.ndim != 2 or labels.shape != (indices.shape[0],):
        raise ValueError(f"ood.neighbour_label_entropy: expected indices (N, k) and labels (N,), got "
                         f"{indices.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"ood.neighbour_label_entropy: labels must lie in 0..{num_classes - 1}")
    votes = np.zeros((indices.shape[0], num_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(indices.shape[0]), indices.shape[1]), labels[indices].ravel()), 1.0)
    p = votes / max(indices.shape[1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return entropy.astype(np.float32)


def flag_outliers(
    scores: np.ndarray,
    *,
    fraction: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Mark the most outlying rows, by share or by score threshold (give exactly one).

    Parameters
    ----------
    scores : np.ndarray, shape (N,)
        Outlier scores, higher = more outlying.
    fraction : float in [0, 1], optional
        Flag the ``floor(fraction * N)`` highest scores; among equal scores the lower
        index is flagged first.
    threshold : float, optional
        Flag every score strictly above it.

    Returns
    -------
    np.ndarray, bool, shape (N,)
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"ood.py: scores must be 1-D (N,), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("ood.py: scores contain NaN")
    if (fraction is None) == (threshold is None):
        raise ValueError("ood.py: give exactly one of fraction and threshold")
    if threshold is not None:
        return scores > threshold
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ood.py: fraction must lie in [0, 1], got {fraction!r}")
    # The small tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    count = min(len(scores), math.floor(fraction * len(scores) + 1e-9))
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    flags = np.zeros(len(scores), dtype=bool)
    flags[order[:count]] = True
    return flags


#: Below this many images the share is not estimated (a mixture of 3 needs more points).
MIN_IMAGES_TO_ESTIMATE = 50


def estimate_outlier_share(scores: np.ndarray, *, components: tuple[int, ...] = (3, 4),
                           max_share: float = 0.5, seed: int = 0) -> float:
    """The share of outliers a score distribution shows, without a share fixed in advance.

    Gaussian mixtures of each size in ``components`` are fitted to the standardised (refined)
    scores and the one with the lowest BIC is kept. Its components whose mean lies above the
    midpoint between the lowest and the highest mean are the outliers, and the images it puts
    in them are counted. In-distribution scores are skewed, so their bulk takes two components;
    the outliers take one, or two when their scores spread (junk of several kinds).

    Mixtures of 2 to 4 with only the top component counted go wrong both ways: BIC can split
    the outliers over two components, of which only one is counted, or choose 2 components, so
    that the top one takes in the skewed bulk's upper tail. The estimate's errors on the CIFAR
    family (:mod:`animal_assets.core.family`) are in benchmarks/RESULTS.md.

    Scores without any outliers still have a top tail, and it is counted: this estimate
    assumes there is junk to find. Set a fixed share (0 for none) on data known to be clean.

    Parameters
    ----------
    scores : np.ndarray, shape (N,)
        Outlier scores, higher = more outlying.
    components : tuple of int
        Mixture sizes to choose from (each at least 2).
    max_share : float
        The estimate never exceeds it.
    seed : int
        Seed of the mixtures' initialisation (the result is deterministic for a seed).

    Returns
    -------
    float
        The estimated share in ``[0, max_share]``.
    """
    from sklearn.mixture import GaussianMixture

    if not components or min(components) < 2:
        raise ValueError(f"ood.py: components must be mixture sizes >= 2, got {components!r}")
    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    if len(scores) < MIN_IMAGES_TO_ESTIMATE:
        raise ValueError(f"ood.py: {len(scores)} images are too few to estimate the outlier share "
                         f"(at least {MIN_IMAGES_TO_ESTIMATE}); set a fixed fraction")
    spread = scores.std()
    if spread == 0:
        return 0.0
    z = (scores - scores.mean()) / spread
    fits = [GaussianMixture(n, random_state=seed, n_init=3).fit(z) for n in components]
    mixture = min(fits, key=lambda m: m.bic(z))
    means = mixture.means_.ravel()
    outlying = np.flatnonzero(means > (means.min() + means.max()) / 2)
    return min(float(np.isin(mixture.predict(z), outlying).mean()), max_share)

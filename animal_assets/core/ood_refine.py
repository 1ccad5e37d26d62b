"""Sharpen an outlier score by self-training a linear model on its confident extremes.

A neighbourhood score (kNN distance, neighbour-label entropy) judges each image by a few dozen
neighbours, so it is noisy image by image, yet its extremes are mostly right. A linear model
trained to separate the top ``out_share`` of the ranking (pseudo-OOD) from the bottom
``in_share`` (pseudo-in-distribution) learns the direction in feature space that the junk
shares, and scores every image along it. Each image is scored by a model fitted on the other
folds, and the new score seeds the next round.

What the rounds buy on the CIFAR ground-truth benchmark (vehicles given random animal labels)
is in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import KFold

from animal_assets.core.probe import map_folds
from animal_assets.core.scaling import ChunkedStandardScaler


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Ranks in [0, 1), ties broken by index (deterministic)."""
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(len(scores)) / max(len(scores), 1)
    return ranks


def self_train(
    features: np.ndarray,
    scores: np.ndarray,
    *,
    rounds: int = 3,
    out_share: float = 0.05,
    in_share: float = 0.7,
    c: float = 0.05,
    n_folds: int = 5,
    seed: int = 0,
    n_threads: int | None = 1,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Refined outlier scores (higher = more outlying).

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        Image embeddings.
    scores : np.ndarray, shape (N,)
        The seed score, higher = more outlying.
    rounds : int
        Self-training rounds; 0 returns ``scores`` unchanged.
    out_share, in_share : float
        Shares of the ranking taken as pseudo-OOD (top) and pseudo-in-distribution (bottom).
    c : float
        Inverse L2 strength of the logistic regression.
    n_folds, seed : int
        Cross-fitting folds and their shuffling seed.
    n_threads, n_jobs : int or None
        BLAS thread cap while fitting and folds fitted at once (see
        ``probe.out_of_sample_probs``); the result does not depend on ``n_jobs``.

    Returns
    -------
    np.ndarray, float64, shape (N,)
        The last round's out-of-fold decision values.
    """
    features = np.asarray(features)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    if features.ndim != 2 or features.shape[0] != n:
        raise ValueError(f"ood_refine.py: features must have shape ({n}, D), got {features.shape}")
    if rounds < 0:
        raise ValueError(f"ood_refine.py: rounds must be >= 0, got {rounds}")
    if not (0.0 < out_share < 1.0 and 0.0 < in_share < 1.0 and out_share + in_share <= 1.0):
        raise ValueError("ood_refine.py: out_share and in_share must lie in (0, 1) and sum to at "
                         f"most 1, got {out_share} and {in_share}")
    n_out, n_in = int(out_share * n), int(in_share * n)
    if rounds == 0 or n_out < n_folds or n_in < n_folds:
        # Too few pseudo-labelled images to fit anything: keep the seed score.
        return scores.copy()
    x = ChunkedStandardScaler().fit_transform(features).astype(np.float32, copy=False)
    folds = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x))
    current = scores
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(rounds):
            ranks = _ranks(current)
            target = np.full(n, -1, dtype=np.int64)
            target[ranks >= 1.0 - n_out / n] = 1
            target[ranks < n_in / n] = 0

            def fit(fold: int, target=target):
                train, test = folds[fold]
                use = train[target[train] >= 0]
                if len(np.unique(target[use])) < 2:
                    return None
                model = LogisticRegression(C=c, max_iter=300, class_weight="balanced")
                return model.fit(x[use], target[use]).decision_function(x[test])

            results = map_folds(fit, n_folds, n_jobs=n_jobs, n_threads=n_threads)
            if any(r is None for r in results):
                # A fold without both pseudo-classes: scores of two scales cannot be mixed,
                # so the last complete round stands.
                return current.copy()
            refined = np.empty(n, dtype=np.float64)
            for (_, test), values in zip(folds, results):
                refined[test] = values
            current = refined
    return current

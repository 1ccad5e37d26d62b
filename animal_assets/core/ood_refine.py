"""Sharpen an outlier score by self-training a linear model on its confident extremes.

A neighbourhood score (kNN distance, neighbour-label entropy) judges each image by a few dozen
neighbours, so it is noisy image by image, yet its extremes are mostly right. A linear model
trained to separate the top ``out_share`` of the ranking (pseudo-OOD) from the bottom
``in_share`` (pseudo-in-distribution) learns the direction in feature space that the junk
shares, and scores every image along it. Each image is scored by a model fitted on the other
folds, and the new score seeds the next round.

On the CIFAR ground-truth benchmark (vehicles given random animal labels, 10 % of the set,
EfficientNet-Lite0 at 128 px) three rounds raised the OOD AUROC of neighbour-label entropy
from 0.92 to 0.97 on the 1,280 head features and to 0.98 on all 4,592 embedding values; on
the same data the kNN distance alone reaches 0.68.
"""
from __future__ import annotations

import numpy as np
from sklearn.model_selection import KFold

from animal_assets.core import probe


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
        BLAS thread cap and threads per fit (see ``probe.fit_softmax``); the result does not
        depend on ``n_jobs``.

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
    std = probe.standardise(features, seed=seed, n_threads=n_threads)
    x = std.x
    folds = list(KFold(n_splits=n_folds, shuffle=True, random_state=seed).split(x))
    current = scores
    for _ in range(rounds):
        ranks = _ranks(current)
        target = np.full(n, -1, dtype=np.int64)
        target[ranks >= 1.0 - n_out / n] = 1
        target[ranks < n_in / n] = 0

        refined = np.empty(n, dtype=np.float64)
        for fold, (train, test) in enumerate(folds):
            use = train[target[train] >= 0]
            if len(np.unique(target[use])) < 2:
                # A fold without both pseudo-classes: scores of two scales cannot be mixed,
                # so the last complete round stands.
                return current.copy()
            model = probe.fit_softmax(x[use], target[use], c=c, max_iter=300,
                                      preconditioner=std.preconditioner, n_threads=n_threads,
                                      n_jobs=n_jobs)
            refined[test] = model.decision_function(x[test])
        current = refined
    return current

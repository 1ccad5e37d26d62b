"""A cross-validated softmax probe on image features: out-of-sample class probabilities, the
probe's strength chosen by log-loss, and folds fitted in parallel threads.

Every probability of an image comes from a probe that never saw it (nor any byte-identical copy
of it), so a wrong given label cannot vouch for itself. The label stage
(:mod:`animal_assets.core.noise_model`) and the outlier refinement
(:mod:`animal_assets.core.ood_refine`) both build on it.

Folds run in threads (``map_folds``): one per CPU core, or ``ANIMAL_ASSETS_JOBS`` where that is
set; every fit keeps to one BLAS thread, so the result does not depend on how many run at once.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from animal_assets.core.jobs import default_jobs
from animal_assets.core.scaling import ChunkedStandardScaler



# A 1-2-5 series: a coarser 1-3-10 grid can leave two of its values tied around the log-loss
# minimum, and the pick then flips between them with the subsample, and the cleaning with it.
PROBE_C_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


def select_probe_c(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    train_mask: np.ndarray | None = None,
    grid: Sequence[float] = PROBE_C_GRID,
    max_rows: int = 6000,
    n_folds: int = 3,
    seed: int = 0,
    class_weight: str | None = "balanced",
    n_threads: int | None = 1,
    n_jobs: int | None = None,
) -> float:
    """The probe strength with the lowest out-of-sample log-loss on the given labels.

    Under class-conditional noise the given labels' log-loss is minimised by the probe that best
    matches ``P(given | image)``, so noisy labels can choose it. The search runs on a seeded
    stratified subsample of at most ``max_rows`` rows and stops once the loss has risen twice in
    a row along the ascending grid.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
    labels : np.ndarray of int, shape (N,)
    num_classes : int
    train_mask : np.ndarray of bool, shape (N,), optional
        Rows to use (default: all).
    grid : sequence of float
        Candidate values of C, ascending.
    max_rows, n_folds, seed, class_weight, n_threads, n_jobs
        Subsample size, folds, seed and probe settings.

    Returns
    -------
    float
    """
    from sklearn.metrics import log_loss

    labels = np.asarray(labels, dtype=np.int64)
    rows = np.flatnonzero(np.ones(len(labels), bool) if train_mask is None else train_mask)
    if len(np.unique(labels[rows])) < 2:
        # Nothing to choose between; the probe itself reports the missing classes.
        return float(grid[len(grid) // 2])
    if len(rows) > max_rows:
        # A class's share of the sample follows its share of the rows, but every class keeps
        # at least min(its size, 2 * n_folds) rows, so a rare class is never sampled away.
        rng = np.random.default_rng(seed)
        picked = []
        for k in np.unique(labels[rows]):
            members = rows[labels[rows] == k]
            take = max(min(len(members), 2 * n_folds), round(max_rows * len(members) / len(rows)))
            picked.append(rng.choice(members, min(take, len(members)), replace=False))
        rows = np.sort(np.concatenate(picked))
    best_c, best_loss, rises, last = float(grid[0]), math.inf, 0, math.inf
    for c in grid:
        probs = out_of_sample_probs(features[rows], labels[rows], num_classes=num_classes,
                                    n_folds=n_folds, seed=seed, c=c, class_weight=class_weight,
                                    n_threads=n_threads, n_jobs=n_jobs)
        probs = np.clip(probs, 1e-7, 1.0)
        loss = log_loss(labels[rows], probs / probs.sum(axis=1, keepdims=True),
                        labels=list(range(num_classes)))
        if loss < best_loss:
            best_c, best_loss = float(c), loss
        rises = rises + 1 if loss > last else 0
        last = loss
        if rises >= 2:
            break
    return best_c


def check_labels(labels: np.ndarray, num_classes: int, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"probe.py: {name} must be an integer array of shape ({n},), got "
                         f"{labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"probe.py: {name} must lie in 0..{num_classes - 1}")
    return labels.astype(np.int64)


def out_of_sample_probs(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    n_folds: int = 5,
    seed: int = 0,
    train_mask: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    c: float = 0.1,
    max_iter: int = 200,
    class_weight: str | None = "balanced",
    n_threads: int | None = 1,
    n_jobs: int | None = None,
) -> np.ndarray:
    """Cross-validated class probabilities from a softmax-regression probe.

    Rows in ``train_mask`` are split into stratified folds; each fold's rows are scored by a
    model fitted on the other folds (scaler and logistic regression both fitted there), so
    no row is scored by a model that saw it, nor its byte-identical twin when ``groups`` is
    given. Rows outside ``train_mask`` (e.g. OOD images) never train a model and get the mean of
    the fold models' probabilities.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        Image embeddings.
    labels : np.ndarray, shape (N,)
        Given labels in ``0..num_classes-1`` (ignored outside ``train_mask``).
    num_classes : int
        K; the output always has K columns, with 0 for a class a fold's training rows lack.
    n_folds, seed : int
        Stratified fold count and shuffling seed.
    train_mask : np.ndarray of bool, shape (N,), optional
        Rows the probe learns from (default: all).
    groups : np.ndarray of int, shape (N,), optional
        :func:`duplicate_groups` ids; a group's rows share a fold, so byte-identical copies never
        score each other (a model that saw the twin has memorised its label).
    c, max_iter, class_weight
        Probe settings, see :class:`CleaningConfig`.
    n_threads : int or None
        Thread cap for BLAS and OpenMP while fitting (None: no cap). One thread never waits
        for another; spin-waiting BLAS threads slow a fit down badly whenever another process
        holds one of the cores.
    n_jobs : int or None
        Folds fitted at the same time, each in its own thread (None: one per CPU core, at most
        ``n_folds``). The folds are independent and their results are combined in fold order,
        so the output does not depend on it.

    Returns
    -------
    np.ndarray, shape (N, K), float64
        Row-stochastic out-of-sample probabilities.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"probe.py: features must be 2-D (N, D), got shape {features.shape}")
    n = features.shape[0]
    train_mask = np.ones(n, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if train_mask.shape != (n,):
        raise ValueError(f"probe.py: train_mask must have shape ({n},), got {train_mask.shape}")
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"probe.py: labels must have shape ({n},), got {labels.shape}")
    train_idx = np.flatnonzero(train_mask)
    y = check_labels(labels[train_idx], num_classes, len(train_idx))
    if len(np.unique(y)) < 2:
        found = f"all {len(y)} are of class {int(y[0])}" if len(y) else "there are none"
        raise ValueError("probe.py: the probe needs images of at least two classes to learn from "
                         f"(images not flagged out-of-distribution); {found}")

    probs = np.zeros((n, num_classes), dtype=np.float64)
    rest = np.flatnonzero(~train_mask)
    fold_of = _assign_folds(y, None if groups is None else np.asarray(groups)[train_idx], n_folds, seed)

    def fit(fold: int):
        return _fit_fold(features, y, train_idx, rest, fold_of == fold, c=c, max_iter=max_iter,
                         class_weight=class_weight)

    with warnings.catch_warnings():
        # max_iter is a time budget; stopping lbfgs early only regularises the probe further.
        warnings.simplefilter("ignore", ConvergenceWarning)
        results = map_folds(fit, n_folds, n_jobs=n_jobs, n_threads=n_threads)
    for fold, (cols, held_probs, rest_probs) in enumerate(results):
        probs[np.ix_(train_idx[fold_of == fold], cols)] = held_probs
        if len(rest):
            probs[np.ix_(rest, cols)] += rest_probs / n_folds
    return probs


def map_folds(fit, n_folds: int, *, n_jobs: int | None, n_threads: int | None) -> list:
    """``[fit(0), ..., fit(n_folds - 1)]``, computed by up to ``n_jobs`` threads.

    The heavy parts of a fit (BLAS products, scikit-learn's loss and gradient) release the GIL,
    so threads fit folds in parallel without copying the features into other processes.

    Parameters
    ----------
    fit : callable (fold) -> result
    n_folds : int
    n_jobs : int or None
        Threads; None: ``ANIMAL_ASSETS_JOBS`` where set, else one per CPU core. Never more
        than ``n_folds``.
    n_threads : int or None
        BLAS/OpenMP thread cap inside each fit (None: no cap). The OpenMP part of a cap holds
        for the thread that sets it only, so every fit sets it for itself.
    """
    if n_jobs is None:
        n_jobs = default_jobs()
    if n_jobs < 1:
        raise ValueError(f"probe.py: n_jobs must be >= 1 or None, got {n_jobs}")

    def capped(fold: int):
        with threadpool_limits(limits=n_threads):
            return fit(fold)

    jobs = min(n_jobs, n_folds)
    if jobs == 1:
        return [capped(fold) for fold in range(n_folds)]
    # The BLAS part of a cap is process-wide: a fit that ends restores the value it found,
    # which would lift the cap under a fit still running in another thread and change its
    # float sums, so that scores differ between runs of the same data. Holding the cap around
    # the whole pool makes every restore land on the capped value.
    with threadpool_limits(limits=n_threads), ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(capped, range(n_folds)))


def _fit_fold(features, y, train_idx, rest, held, *, c, max_iter, class_weight):
    """Fit one fold's probe on the training rows outside ``held``.

    Returns the class columns it predicts, its probabilities for the ``held`` rows and for the
    ``rest`` rows (None when there are none).
    """
    seen = np.unique(y[~held])
    if len(seen) == 1:
        # A class rarer than the folds can be held out whole, leaving one class to learn from
        # (e.g. 1 image against 10,000 with K=2). lbfgs refuses a one-class fit, and any model of
        # these rows could only answer that class, so the fold answers it with certainty.
        return seen, np.ones((int(held.sum()), 1)), np.ones((len(rest), 1)) if len(rest) else None
    # copy=False: the rows it scales are already a fresh copy (fancy indexing below).
    model = make_pipeline(
        ChunkedStandardScaler(copy=False),
        LogisticRegression(C=c, max_iter=max_iter, class_weight=class_weight),
    ).fit(features[train_idx[~held]], y[~held])
    cols = model.classes_.astype(np.int64)
    held_probs = model.predict_proba(features[train_idx[held]])
    return cols, held_probs, model.predict_proba(features[rest]) if len(rest) else None


def _assign_folds(y: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
    """Stratified fold index per row; with ``groups``, stratified on each group's first row."""
    if groups is None:
        groups = np.arange(len(y))
    if groups.shape != y.shape:
        raise ValueError(f"probe.py: groups must have shape {y.shape}, got {groups.shape}")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if len(first) < n_folds:
        raise ValueError(f"probe.py: {len(first)} independent images cannot fill {n_folds} folds")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rep_fold = np.empty(len(first), dtype=np.int64)
    with warnings.catch_warnings():
        # A rare class with fewer members than folds is expected and handled by the column map.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held) in enumerate(folds.split(np.zeros(len(first)), y[first])):
            rep_fold[held] = fold
    return rep_fold[inverse]

"""The label probe: class-weighted softmax regression on the embeddings, cross-fitted.

The probe is refitted for every fold, every round of the noise model and every strength the
search tries, and the outlier refinement refits a binary one for every fold of every round.
:func:`fit_softmax` fits the model scikit-learn's ``LogisticRegression(solver="lbfgs")`` fits,
the same objective with the same L-BFGS-B settings,

    sum_i w_i * logloss_i / sum_i w_i  +  ||W||^2 / (2 * C * sum_i w_i)

(``w_i`` the class weights, the intercept unpenalised; two classes are one binary model, as
scikit-learn fits them), and differs in how it gets there:

* the loss and its gradient come from one pass over row chunks in float32, each chunk used for
  the logits and for the gradient while it is in cache;
* L-BFGS runs in coordinates whitened by the leading eigenvectors of the features'
  covariance (:class:`Preconditioner`), where the problem is close to round, so it meets
  scikit-learn's tolerance after a few dozen iterations rather than a hundred or more;
* the chunks of a pass are shared by threads, so one fit uses every core.

:func:`out_of_sample_probs` scores every image with a model that never saw it;
:func:`select_probe_c` picks the strength by the given labels' out-of-sample log-loss.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy import optimize
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.extmath import randomized_svd
from threadpoolctl import threadpool_limits

from animal_assets.core.scaling import ChunkedStandardScaler

CHUNK_ROWS = 2048  # rows per pass chunk: 2048 x 4,592 float32 is 38 MB
# The preconditioner takes the loss's Hessian to be CURVATURE x covariance + the L2 term; it
# sets only how the directions are scaled, and so how soon the tolerance is met (see the lab
# notes for the trade of iterations against distance from the exact optimum).
CURVATURE = 1.0
COV_ROWS = 4000  # rows the preconditioner is estimated from
RANK = 512  # leading directions the preconditioner scales one by one
# A 1-2-5 series: with the 4,592 embedding values the CIFAR benchmark's log-loss is lowest near
# 5e-4, where a 1-3-10 grid left 3e-4 and 1e-3 tied within 0.001 and the pick flipped between
# them with the subsample (label-issue F1 0.811 at 3e-4 and 5e-4, 0.789 at 1e-3).
PROBE_C_GRID = (1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0)


@dataclass(frozen=True)
class Preconditioner:
    """The leading eigenvectors of the covariance of standardised features.

    The directions of large variance make the probe's problem ill-conditioned; each of them
    gets its own scale, and every other direction one common scale, from the largest of the
    remaining eigenvalues.

    Attributes
    ----------
    eigvals : np.ndarray, shape (r,), float64
        The ``r`` largest eigenvalues.
    eigvecs : np.ndarray, shape (D, r), float32
        Their orthonormal eigenvectors, as columns.
    rest : float
        An upper bound of the other ``D - r`` eigenvalues (0 when ``r == D``).
    """

    eigvals: np.ndarray
    eigvecs: np.ndarray
    rest: float

    @classmethod
    def from_features(cls, x: np.ndarray, *, rank: int = RANK, seed: int = 0) -> Preconditioner:
        """Estimate it from the rows of ``x`` (standardised, shape (N, D)). Any estimate gives
        the same fit, a better one a faster fit; a few thousand rows are enough."""
        x = np.array(x, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            raise ValueError(f"probe.py: the preconditioner needs a non-empty (N, D) array, got {x.shape}")
        x -= x.mean(axis=0)
        n, d = x.shape
        total = float(np.einsum("ij,ij->", x, x, dtype=np.float64)) / n
        r = min(rank, n, d)
        if d <= 2 * rank:
            cov = x.T @ x / np.float32(n)
            vals, vecs = scipy.linalg.eigh(cov, driver="evd", overwrite_a=True, check_finite=False)
            vals, vecs = vals[::-1][:r], vecs[:, ::-1][:, :r]
        else:
            _, sv, vt = randomized_svd(x, r, n_oversamples=min(32, min(n, d) - r), n_iter=2,
                                       random_state=seed)
            vals, vecs = sv.astype(np.float64) ** 2 / n, vt.T
        vals = np.clip(np.asarray(vals, dtype=np.float64), 0.0, None)
        # The other directions share the scale of the largest of them (at most the r-th
        # eigenvalue): a mean would make L-BFGS overshoot along the larger ones and retry.
        rest = min(float(vals[-1]), max(total - float(vals.sum()), 0.0)) if d > r else 0.0
        return cls(eigvals=vals, eigvecs=np.ascontiguousarray(vecs, dtype=np.float32), rest=rest)

    def scales(self, l2: float) -> tuple[np.ndarray, float]:
        """Step scales, the inverse square root of each direction's curvature: one per leading
        direction, shape (r,), and one for all the others."""
        return 1.0 / np.sqrt(self.eigvals * CURVATURE + l2), 1.0 / math.sqrt(self.rest * CURVATURE + l2)


@dataclass(frozen=True)
class SoftmaxModel:
    """A fitted probe: ``probs = softmax(x @ coef.T + intercept)`` over ``classes``.

    Attributes
    ----------
    classes : np.ndarray of int, shape (k,)
        The labels it was fitted on, ascending.
    coef : np.ndarray, shape (k, D)
    intercept : np.ndarray, shape (k,)
    n_iter : int
        L-BFGS iterations the fit took.
    """

    classes: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray
    n_iter: int

    def decision_function(self, x: np.ndarray) -> np.ndarray:
        """Logits, shape (N, k); for two classes the binary margin, shape (N,)."""
        z = np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept
        return z[:, 1] - z[:, 0] if len(self.classes) == 2 else z

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities, shape (N, k), float64."""
        z = np.asarray(x, dtype=np.float64) @ self.coef.T + self.intercept
        z -= z.max(axis=1, keepdims=True)
        np.exp(z, out=z)
        return z / z.sum(axis=1, keepdims=True)


def fit_softmax(
    x: np.ndarray,
    y: np.ndarray,
    *,
    c: float,
    class_weight: str | None = "balanced",
    max_iter: int = 200,
    tol: float = 1e-4,
    preconditioner: Preconditioner | None = None,
    scale: np.ndarray | None = None,
    n_threads: int | None = 1,
    n_jobs: int | None = None,
) -> SoftmaxModel:
    """Fit the class-weighted softmax regression of ``y`` on ``x``.

    Parameters
    ----------
    x : np.ndarray, shape (N, D)
        Standardised features; float32 is used as is, anything else is converted.
    y : np.ndarray of int, shape (N,)
        Labels; at least two distinct values.
    c : float
        Inverse L2 strength, as scikit-learn's ``C``.
    class_weight : "balanced" or None
        "balanced" weighs each image by ``N / (k * its class's count)``.
    max_iter : int
        L-BFGS iteration budget.
    tol : float
        Stop when no entry of the gradient (of ``coef`` and ``intercept``) exceeds it, as
        scikit-learn's ``tol`` does.
    preconditioner : Preconditioner, optional
        Whitening of the features' covariance (default: estimated from ``x``).
    scale : np.ndarray, shape (D,), optional
        Fit the model of ``x / scale`` (the penalty is on its coefficients), reported on ``x``:
        the same model as standardising ``x`` once more, without a copy.
    n_threads : int or None
        BLAS thread cap while fitting (None: no cap). With both threads of a 2-core machine
        that was also running other work, spin-waiting BLAS threads made a fit 3x to 24x slower.
    n_jobs : int or None
        Threads that share the row chunks of each pass, one BLAS thread each (None: one per CPU
        core). The chunks' sums are added in order, so the fit does not depend on it.

    Returns
    -------
    SoftmaxModel
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    classes, y_idx = np.unique(np.asarray(y), return_inverse=True)
    n, d = x.shape
    k = len(classes)
    if k < 2:
        raise ValueError(f"probe.py: the probe needs at least two classes, got {k}")
    if c <= 0:
        raise ValueError(f"probe.py: c must be > 0, got {c}")
    if class_weight == "balanced":
        weight = (n / (k * np.bincount(y_idx, minlength=k)))[y_idx]
    elif class_weight is None:
        weight = np.ones(n)
    else:
        raise ValueError(f"probe.py: class_weight must be 'balanced' or None, got {class_weight!r}")
    weight_sum = float(weight.sum())
    weight32 = weight.astype(np.float32)
    # scikit-learn fits two classes as one binary model: the same logits as a softmax with
    # W_1 = -W_0 = w / 2, whose penalty is half the binary one's, hence the factor 2.
    l2 = (2.0 if k == 2 else 1.0) / (c * weight_sum)
    if preconditioner is None:
        sample = x if n <= COV_ROWS else x[np.sort(np.random.default_rng(0).choice(n, COV_ROWS, replace=False))]
        preconditioner = Preconditioner.from_features(sample)
    pre = preconditioner
    if pre.eigvecs.shape[0] != d:
        raise ValueError(f"probe.py: the preconditioner is for {pre.eigvecs.shape[0]} features, "
                         f"the data has {d}")
    top, other = pre.scales(l2)
    basis = pre.eigvecs.astype(np.float64)
    penalty_weight = np.ones(d) if scale is None else np.asarray(scale, dtype=np.float64) ** 2

    def whiten(v: np.ndarray, top: np.ndarray, other: float) -> np.ndarray:
        # v @ M with M = basis diag(top) basis^T + other (I - basis basis^T), symmetric; in
        # float64, so the penalty and its gradient agree to the last digit and the line search
        # never chases rounding.
        return other * v + ((v @ basis) * (top - other)) @ basis.T

    rows = np.arange(min(n, CHUNK_ROWS))
    starts = list(range(0, n, CHUNK_ROWS))

    def part(start: int, coef_t: np.ndarray, bias: np.ndarray):
        # Loss and gradient sums over one chunk of rows.
        stop = min(start + CHUNK_ROWS, n)
        chunk, local, target = x[start:stop], rows[: stop - start], y_idx[start:stop]
        z = chunk @ coef_t
        z += bias
        z -= z.max(axis=1, keepdims=True)
        ez = np.exp(z)
        total = ez.sum(axis=1)
        w = weight32[start:stop]
        loss = float(np.dot(w, np.log(total) - z[local, target]))
        ez /= total[:, None]
        ez[local, target] -= 1.0
        ez *= w[:, None]
        return loss, chunk.T @ ez, ez.sum(axis=0, dtype=np.float64)

    def loss_and_grad(u: np.ndarray, pool: ThreadPoolExecutor | None) -> tuple[float, np.ndarray]:
        u = u.reshape(k, d + 1)
        coef = whiten(u[:, :d], top, other)
        coef_t = np.ascontiguousarray(coef.T, dtype=np.float32)
        bias = u[:, d].astype(np.float32)
        parts = (pool.map(part, starts, [coef_t] * len(starts), [bias] * len(starts)) if pool
                 else (part(start, coef_t, bias) for start in starts))
        # Summed in chunk order whoever computed them: the result does not depend on n_jobs.
        loss, grad, grad_b = 0.0, np.zeros((d, k)), np.zeros(k)
        for part_loss, part_grad, part_b in parts:
            loss += part_loss
            grad += part_grad
            grad_b += part_b
        grad_w = grad.T / weight_sum + l2 * coef * penalty_weight
        grad_b /= weight_sum
        last["u"], last["gradient"] = u.copy(), max(np.abs(grad_w).max(), np.abs(grad_b).max())
        g = np.empty((k, d + 1))
        g[:, :d] = whiten(grad_w, top, other)
        g[:, d] = grad_b
        penalty = 0.5 * l2 * float(np.sum(coef * coef * penalty_weight))
        return loss / weight_sum + penalty, g.ravel()

    last = {"u": None, "gradient": math.inf}

    def converged(intermediate_result) -> None:
        # scikit-learn's test, on the gradient in the model's own coordinates: the whitened
        # gradient would pass sooner along the directions the whitening shrinks.
        if last["gradient"] <= tol and np.array_equal(intermediate_result.x.reshape(k, d + 1), last["u"]):
            raise StopIteration

    u0 = np.zeros((k, d + 1))
    jobs = min(_jobs(n_jobs), len(starts))
    with (threadpool_limits(limits=n_threads),
          ThreadPoolExecutor(max_workers=jobs) if jobs > 1 else contextlib.nullcontext() as pool):
        result = optimize.minimize(
            loss_and_grad, u0.ravel(), args=(pool,), method="L-BFGS-B", jac=True, callback=converged,
            options={"maxiter": max_iter, "maxls": 50, "gtol": 0.0, "ftol": 64 * np.finfo(float).eps},
        )
    u = result.x.reshape(k, d + 1)
    coef = whiten(u[:, :d], top, other)
    intercept = u[:, d].copy()
    if k == 2:
        # The binary model's form: one margin, split evenly.
        coef = coef - coef.mean(axis=0)
        intercept = intercept - intercept.mean()
    return SoftmaxModel(classes=classes, coef=coef, intercept=intercept, n_iter=int(result.nit))


@dataclass(frozen=True)
class Standardised:
    """Features standardised once for every fit of a step, with their preconditioner.

    Attributes
    ----------
    x : np.ndarray, shape (N, D), float32
        Each column centred and scaled by the mean and standard deviation of the rows the
        probes learn from (a constant column is left unscaled).
    preconditioner : Preconditioner
    """

    x: np.ndarray
    preconditioner: Preconditioner

    def take(self, rows: np.ndarray) -> Standardised:
        """The same standardisation, on a subset of rows."""
        return Standardised(x=self.x[rows], preconditioner=self.preconditioner)


def standardise(
    features: np.ndarray | Standardised,
    *,
    train_mask: np.ndarray | None = None,
    seed: int = 0,
    n_threads: int | None = 1,
) -> Standardised:
    """Standardise ``features`` on the ``train_mask`` rows and estimate the preconditioner.

    The statistics come from the features alone, never the labels, so fitting them on every
    training row rather than fold by fold leaks no label into the out-of-sample scores.

    Parameters
    ----------
    features : np.ndarray, shape (N, D), or Standardised (returned as it is)
    train_mask : np.ndarray of bool, shape (N,), optional
        Rows whose statistics are used (default: all).
    seed : int
        Seed of the preconditioner's row sample.
    n_threads : int or None
        BLAS/LAPACK thread cap (None: no cap).

    Returns
    -------
    Standardised
    """
    if isinstance(features, Standardised):
        return features
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"probe.py: features must be 2-D (N, D), got shape {features.shape}")
    n = features.shape[0]
    mask = np.ones(n, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if mask.shape != (n,):
        raise ValueError(f"probe.py: train_mask must have shape ({n},), got {mask.shape}")
    if not mask.any():
        raise ValueError("probe.py: no rows to learn from")
    rows = np.flatnonzero(mask)
    with threadpool_limits(limits=n_threads):
        scaler = ChunkedStandardScaler().fit(features if len(rows) == n else features[rows])
        x = np.ascontiguousarray(scaler.transform(features.astype(np.float32, copy=False)))
        if len(rows) > COV_ROWS:
            rows = np.sort(np.random.default_rng(seed).choice(rows, COV_ROWS, replace=False))
        pre = Preconditioner.from_features(x[rows], seed=seed)
    return Standardised(x=x, preconditioner=pre)


def _jobs(n_jobs: int | None) -> int:
    if n_jobs is None:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise ValueError(f"probe.py: n_jobs must be >= 1 or None, got {n_jobs}")
    return n_jobs


def assign_folds(y: np.ndarray, groups: np.ndarray | None, n_folds: int, seed: int) -> np.ndarray:
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


def check_labels(labels: np.ndarray, num_classes: int, n: int, name: str = "labels") -> np.ndarray:
    """``labels`` as int64 after checking their shape and range."""
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array of shape ({n},), got "
                         f"{labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"{name} must lie in 0..{num_classes - 1}")
    return labels.astype(np.int64)


def out_of_sample_probs(
    features: np.ndarray | Standardised,
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
    """Cross-validated class probabilities from the softmax-regression probe.

    Rows in ``train_mask`` are split into stratified folds; each fold's rows are scored by a
    model fitted on the other folds, so no row is scored by a model that saw it, nor its
    byte-identical twin when ``groups`` is given. Rows outside ``train_mask`` (e.g. OOD images)
    never train a model and get the mean of the fold models' probabilities.

    Parameters
    ----------
    features : np.ndarray, shape (N, D), or Standardised
        Image embeddings (standardised here on the ``train_mask`` rows unless they come as
        :class:`Standardised`).
    labels : np.ndarray, shape (N,)
        Given labels in ``0..num_classes-1`` (ignored outside ``train_mask``).
    num_classes : int
        K; the output always has K columns, with 0 for a class a fold's training rows lack.
    n_folds, seed : int
        Stratified fold count and shuffling seed.
    train_mask : np.ndarray of bool, shape (N,), optional
        Rows the probe learns from (default: all).
    groups : np.ndarray of int, shape (N,), optional
        Duplicate-group ids; a group's rows share a fold, so byte-identical copies never score
        each other (a model that saw the twin has memorised its label).
    c, max_iter, class_weight
        Probe settings (see :func:`fit_softmax`).
    n_threads, n_jobs : int or None
        BLAS thread cap and threads per fit (see :func:`fit_softmax`); the output does not
        depend on ``n_jobs``.

    Returns
    -------
    np.ndarray, shape (N, K), float64
        Row-stochastic out-of-sample probabilities.
    """
    n = len(features.x) if isinstance(features, Standardised) else np.shape(features)[0]
    train_mask = np.ones(n, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if train_mask.shape != (n,):
        raise ValueError(f"probe.py: train_mask must have shape ({n},), got {train_mask.shape}")
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"probe.py: labels must have shape ({n},), got {labels.shape}")
    train_idx = np.flatnonzero(train_mask)
    y = check_labels(labels[train_idx], num_classes, len(train_idx), "probe.py: labels")
    if len(np.unique(y)) < 2:
        found = f"all {len(y)} are of class {int(y[0])}" if len(y) else "there are none"
        raise ValueError("probe.py: the probe needs images of at least two classes to learn from "
                         f"(images not flagged out-of-distribution); {found}")
    std = standardise(features, train_mask=train_mask, seed=seed, n_threads=n_threads)
    x = std.x
    rest = np.flatnonzero(~train_mask)
    fold_of = assign_folds(y, None if groups is None else np.asarray(groups)[train_idx], n_folds, seed)

    # Each fold's model is the one fitted on its own training rows standardised (as scikit-learn's
    # pipeline would): their standard deviations, from sums over all rows less the held ones.
    train_x = x[train_idx]
    total, squares = np.zeros(x.shape[1]), np.zeros(x.shape[1])
    fold_sums = np.zeros((n_folds, x.shape[1]))
    fold_squares = np.zeros((n_folds, x.shape[1]))
    fold_counts = np.bincount(fold_of, minlength=n_folds)
    for start in range(0, len(train_idx), CHUNK_ROWS):
        block = train_x[start:start + CHUNK_ROWS].astype(np.float64)
        folds_here = fold_of[start:start + CHUNK_ROWS]
        for f in range(n_folds):
            rows = block[folds_here == f]
            fold_sums[f] += rows.sum(axis=0)
            fold_squares[f] += np.einsum("ij,ij->j", rows, rows)
    del train_x
    total, squares = fold_sums.sum(axis=0), fold_squares.sum(axis=0)

    def fold_scale(fold: int) -> np.ndarray:
        count = len(train_idx) - fold_counts[fold]
        mean = (total - fold_sums[fold]) / count
        var = np.maximum((squares - fold_squares[fold]) / count - mean**2, 0.0)
        std = np.sqrt(var)
        return np.where(std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0), 1.0, std)

    def fit(fold: int):
        held = fold_of == fold
        seen = np.unique(y[~held])
        if len(seen) == 1:
            # A class rarer than the folds can be held out whole, leaving one class to learn
            # from (e.g. 1 image against 10,000 with K=2). Any model of these rows could only
            # answer that class, so the fold answers it with certainty.
            return seen, np.ones((int(held.sum()), 1)), np.ones((len(rest), 1))
        model = fit_softmax(x[train_idx[~held]], y[~held], c=c, class_weight=class_weight,
                            max_iter=max_iter, preconditioner=std.preconditioner,
                            scale=fold_scale(fold), n_threads=n_threads, n_jobs=n_jobs)
        return model.classes, model.predict_proba(x[train_idx[held]]), model.predict_proba(x[rest])

    probs = np.zeros((n, num_classes), dtype=np.float64)
    for fold in range(n_folds):
        # One fold after another, each fit on every core: five folds on two cores would
        # leave one core idle for the last.
        cols, held_probs, rest_probs = fit(fold)
        probs[np.ix_(train_idx[fold_of == fold], cols)] = held_probs
        if len(rest):
            probs[np.ix_(rest, cols)] += rest_probs / n_folds
    return probs


def select_probe_c(
    features: np.ndarray | Standardised,
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
    stratified subsample of at most ``max_rows`` rows and stops once the loss has risen twice
    in a row along the ascending grid.

    Parameters
    ----------
    features : np.ndarray, shape (N, D), or Standardised
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
    std = standardise(features, train_mask=train_mask, seed=seed, n_threads=n_threads).take(rows)
    best_c, best_loss, rises, last = float(grid[0]), math.inf, 0, math.inf
    for c in grid:
        probs = out_of_sample_probs(std, labels[rows], num_classes=num_classes, n_folds=n_folds,
                                    seed=seed, c=c, class_weight=class_weight, n_threads=n_threads,
                                    n_jobs=n_jobs)
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

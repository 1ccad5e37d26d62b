"""Label cleaning: per-image posteriors of the true class, and keep / relabel / drop decisions.

A class-conditional noise model (:mod:`.noise_model`) gives every image
``P(true class | image, given label)``, with the true class prior estimated from the data; an
image whose posterior divided by that prior prefers another class is relabelled to it.
Out-of-distribution images and the extra copies of a byte-identical group are dropped.

Guards against the failure modes of naive cleaning on small, noisy classes:

* the probe is class-weighted, so it is not biased toward the large classes;
* byte-identical copies collapse to one image carrying the label the posterior prefers for the
  group;
* a per-class floor keeps at least a fixed fraction of each class's images, reinstating the
  least suspicious relabelled ones, so cleaning can never empty a small class.
"""
from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from threadpoolctl import threadpool_limits

from animal_assets.core.review import ACTIONS
from animal_assets.core.scaling import ChunkedStandardScaler

REASONS = ("", "ood", "label_issue", "duplicate_conflict", "duplicate")


@dataclass(frozen=True, kw_only=True)
class CleaningConfig:
    """Settings of the probe and of the keep / relabel / drop rules."""

    n_folds: int = 5  # folds: each probability comes from a model that never saw the image
    probe_c: float | None = None  # inverse L2 strength of the probe; None picks it from PROBE_C_GRID
    probe_max_iter: int = 200  # lbfgs budget per fold; stopping early only regularises the probe more
    class_weight: str | None = "balanced"  # "balanced" stops the probe from favouring large classes
    probe_threads: int | None = 1  # BLAS/OpenMP threads of the probe (None: all); 1 is immune to contention
    probe_jobs: int | None = None  # folds fitted at once, one thread each (None: one per CPU core)
    em_rounds: int = 2  # probe refits on the posterior's labels
    min_noise_rate: float = 0.08  # smaller confusion rates are read as even background noise
    noise_prior_images: float = 30.0  # pseudo-images per class labelled as themselves in the noise estimate
    min_class_keep: float = 0.5  # keep at least this fraction of each class's non-OOD given images
    seed: int = 0  # fold assignment and every tie-break

    def __post_init__(self) -> None:
        if self.noise_prior_images < 0:
            raise ValueError(f"cleaning.py: noise_prior_images must be >= 0, got {self.noise_prior_images}")
        if self.em_rounds < 0:
            raise ValueError(f"cleaning.py: em_rounds must be >= 0, got {self.em_rounds}")
        if not 0.0 <= self.min_noise_rate < 1.0:
            raise ValueError(f"cleaning.py: min_noise_rate must be in [0, 1), got {self.min_noise_rate}")
        if self.n_folds < 2:
            raise ValueError(f"cleaning.py: n_folds must be >= 2, got {self.n_folds}")
        if not 0.0 <= self.min_class_keep <= 1.0:
            raise ValueError(f"cleaning.py: min_class_keep must be in [0, 1], got {self.min_class_keep}")

    def probe_kwargs(self) -> dict:
        """Keyword arguments of :func:`out_of_sample_probs` taken from this config.

        ``c`` is None when ``probe_c`` is; resolve it with :func:`select_probe_c` first.
        """
        return {"n_folds": self.n_folds, "seed": self.seed, "c": self.probe_c,
                "max_iter": self.probe_max_iter, "class_weight": self.class_weight,
                "n_threads": self.probe_threads, "n_jobs": self.probe_jobs}


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


def _check_labels(labels: np.ndarray, num_classes: int, n: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"cleaning.py: {name} must be an integer array of shape ({n},), got "
                         f"{labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"cleaning.py: {name} must lie in 0..{num_classes - 1}")
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
        raise ValueError(f"cleaning.py: features must be 2-D (N, D), got shape {features.shape}")
    n = features.shape[0]
    train_mask = np.ones(n, dtype=bool) if train_mask is None else np.asarray(train_mask, dtype=bool)
    if train_mask.shape != (n,):
        raise ValueError(f"cleaning.py: train_mask must have shape ({n},), got {train_mask.shape}")
    labels = np.asarray(labels).astype(np.int64)
    if labels.shape != (n,):
        raise ValueError(f"cleaning.py: labels must have shape ({n},), got {labels.shape}")
    train_idx = np.flatnonzero(train_mask)
    y = _check_labels(labels[train_idx], num_classes, len(train_idx))
    if len(np.unique(y)) < 2:
        found = f"all {len(y)} are of class {int(y[0])}" if len(y) else "there are none"
        raise ValueError("cleaning.py: the probe needs images of at least two classes to learn from "
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
        Threads; None: one per CPU core. Never more than ``n_folds``.
    n_threads : int or None
        BLAS/OpenMP thread cap inside each fit (None: no cap). The OpenMP part of a cap holds
        for the thread that sets it only, so every fit sets it for itself.
    """
    if n_jobs is None:
        n_jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise ValueError(f"cleaning.py: n_jobs must be >= 1 or None, got {n_jobs}")

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
        raise ValueError(f"cleaning.py: groups must have shape {y.shape}, got {groups.shape}")
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    if len(first) < n_folds:
        raise ValueError(f"cleaning.py: {len(first)} independent images cannot fill {n_folds} folds")
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    rep_fold = np.empty(len(first), dtype=np.int64)
    with warnings.catch_warnings():
        # A rare class with fewer members than folds is expected and handled by the column map.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        for fold, (_, held) in enumerate(folds.split(np.zeros(len(first)), y[first])):
            rep_fold[held] = fold
    return rep_fold[inverse]


def duplicate_groups(sha256: Sequence[str]) -> np.ndarray:
    """Group ids of byte-identical files.

    Parameters
    ----------
    sha256 : sequence of str, length N
        Content hash of each file.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Dense ids numbered by first appearance; equal hashes share an id.
    """
    first: dict[str, int] = {}
    return np.array([first.setdefault(h, len(first)) for h in sha256], dtype=np.int64)


def decide(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    ood_flags: np.ndarray,
    dup_group: np.ndarray,
    num_classes: int,
    config: CleaningConfig = CleaningConfig(),
) -> pd.DataFrame:
    """Keep, relabel or drop every image.

    Rules, in order:

    1. OOD images are dropped (``reason="ood"``); a duplicate group with any OOD member is
       dropped whole, because its copies are the same picture.
    2. Label issues among the non-OOD images: an image whose ``pred_probs`` argmax is not its
       given label is relabelled to that argmax (``reason="label_issue"``).
    3. A byte-identical group keeps only its first copy; the others are dropped
       (``reason="duplicate"``). The group's mean probabilities decide the label: if the copies'
       given labels disagree, their argmax (``reason="duplicate_conflict"``); otherwise the
       agreed label is judged like a single image (step 2 with the group's mean, the group
       flagged when any copy is).
    4. Per-class floor: a class whose final count is below ``ceil(min_class_keep * base)``,
       base = its non-OOD given images that are not duplicate copies, gets images relabelled
       away from it back as ``keep``, least suspicious (highest self-confidence) first. Rows
       only ever return to their given label, so the loop ends; the floor holds for every
       class. Copies and conflict-group images are left out of the base: their label was never
       one image's alone.

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
        Given labels.
    pred_probs : np.ndarray, shape (N, K)
        Posteriors divided by the estimated prior (:meth:`.noise_model.NoisePosterior.balanced`).
    ood_flags : np.ndarray of bool, shape (N,)
        Out-of-distribution images.
    dup_group : np.ndarray of int, shape (N,)
        :func:`duplicate_groups` ids.
    num_classes : int
        K.
    config : CleaningConfig
        Its ``min_class_keep``.

    Returns
    -------
    pandas.DataFrame, N rows
        Columns ``given``, ``label`` (final, -1 when dropped), ``action``, ``reason``,
        ``confidence`` (prob of the final label, of the given label when dropped),
        ``label_issue`` (the argmax is not the given label) and ``self_confidence`` (prob of
        the given label).
    """
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    n = pred_probs.shape[0]
    if pred_probs.shape != (n, num_classes):
        raise ValueError(f"cleaning.py: pred_probs must have shape (N, {num_classes}), "
                         f"got {pred_probs.shape}")
    given = _check_labels(labels, num_classes, n)
    ood = np.asarray(ood_flags, dtype=bool)
    group = np.asarray(dup_group).astype(np.int64)
    if ood.shape != (n,) or group.shape != (n,):
        raise ValueError(f"cleaning.py: ood_flags and dup_group must have shape ({n},)")

    rows = np.arange(n)
    self_conf = pred_probs[rows, given]
    # A byte-identical group is one picture: OOD if any copy is.
    _, group_dense = np.unique(group, return_inverse=True)
    ood = np.bincount(group_dense, weights=ood.astype(float))[group_dense] > 0

    issue = np.zeros(n, dtype=bool)
    clean_rows = np.flatnonzero(~ood)
    top = pred_probs.argmax(axis=1)
    issue[clean_rows] = top[clean_rows] != given[clean_rows]

    final = np.where(issue, top, given)
    action = np.where(issue, "relabel", "keep").astype(object)
    reason = np.where(issue, "label_issue", "").astype(object)
    action[ood], reason[ood], final[ood] = "drop", "ood", -1

    def judge(i: int, flagged: bool, probs: np.ndarray) -> None:
        # The single-image rule above, for a group's kept copy.
        best = int(probs.argmax())
        if not flagged or best == given[i]:
            final[i], action[i], reason[i] = given[i], "keep", ""
        else:
            final[i], action[i], reason[i] = best, "relabel", "label_issue"

    order = np.argsort(group_dense, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(group_dense[order]) != 0])
    for members in np.split(order, starts[1:]):
        if len(members) < 2 or ood[members[0]]:
            continue
        first, copies = members[0], members[1:]  # stable sort keeps index order within a group
        final[copies], action[copies], reason[copies] = -1, "drop", "duplicate"
        mean = pred_probs[members].mean(axis=0)
        labels_here = np.unique(given[members])
        if len(labels_here) == 1:
            judge(first, bool(issue[members].any()), mean)
            continue
        best = int(mean.argmax())
        final[first] = best
        action[first] = "keep" if best == given[first] else "relabel"
        reason[first] = "duplicate_conflict"

    _apply_floor(final, action, reason, given, self_conf, ood, num_classes, config.min_class_keep)
    kept = final >= 0
    confidence = np.where(kept, pred_probs[rows, np.where(kept, final, given)], self_conf)
    return pd.DataFrame({
        "given": given, "label": final, "action": action.astype(str), "reason": reason.astype(str),
        "confidence": confidence, "label_issue": issue, "self_confidence": self_conf,
    })


def _apply_floor(final, action, reason, given, self_conf, ood, num_classes, fraction) -> None:
    """Reinstate relabelled images in place until every class meets its floor (see :func:`decide`)."""
    # Copies and contested labels are left out: a group is one image, a conflict is not "given k".
    settled = ~ood & (reason != "duplicate") & (reason != "duplicate_conflict")
    base = np.bincount(given[settled], minlength=num_classes)
    need = np.array([math.ceil(fraction * b - 1e-9) for b in base])
    while True:
        counts = np.bincount(final[final >= 0], minlength=num_classes)
        short = np.flatnonzero(counts < need)
        if not len(short):
            return
        k = int(short[0])
        pool = np.flatnonzero((given == k) & (reason == "label_issue") & (action == "relabel"))
        take = pool[np.argsort(-self_conf[pool], kind="stable")][: need[k] - counts[k]]
        if not len(take):
            raise RuntimeError(f"cleaning.py: class {k} cannot reach its floor of {need[k]} images")
        final[take], action[take], reason[take] = k, "keep", ""


def summarise(decisions: pd.DataFrame, *, num_classes: int) -> dict:
    """Counts of a :func:`decide` table, JSON-ready.

    Parameters
    ----------
    decisions : pandas.DataFrame, N rows
        Output of :func:`decide`.
    num_classes : int
        K.

    Returns
    -------
    dict
        ``n``, ``kept``, ``by_action``, ``by_reason`` (drops and conflicts), ``label_issues``,
        ``per_class`` (list of K dicts: ``given``, ``final``, ``kept_as_given``, ``relabelled_in``,
        ``relabelled_out``, ``dropped``) and ``relabel_matrix`` (K x K, given -> final).
    """
    given = decisions["given"].to_numpy()
    final = decisions["label"].to_numpy()
    action = decisions["action"].to_numpy()
    reason = decisions["reason"].to_numpy()
    moved = action == "relabel"
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (given[moved], final[moved]), 1)
    per_class = []
    for k in range(num_classes):
        per_class.append({
            "given": int((given == k).sum()),
            "final": int((final == k).sum()),
            "kept_as_given": int(((given == k) & (action == "keep")).sum()),
            "relabelled_in": int(matrix[:, k].sum()),
            "relabelled_out": int(matrix[k, :].sum()),
            "dropped": int(((given == k) & (action == "drop")).sum()),
        })
    return {
        "n": int(len(decisions)),
        "kept": int((final >= 0).sum()),
        "by_action": {a: int((action == a).sum()) for a in ACTIONS},
        "by_reason": {r: int((reason == r).sum()) for r in REASONS if r},
        "label_issues": int(decisions["label_issue"].sum()),
        "per_class": per_class,
        "relabel_matrix": matrix.tolist(),
    }

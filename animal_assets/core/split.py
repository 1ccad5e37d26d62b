"""Validation split and class balancing of the cleaned dataset.

The validation set is built from the images the cleaning trusts most (kept with their given
label, never flagged), class-balanced so that balanced accuracy on it is not dominated by any
class, and separated from training by whole duplicate groups. Training classes are balanced by
repeating minority images, the repeats getting augmented pixels, within a cap that stops a small
class from being memorised from a handful of images.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd


def _trust_order(idx: np.ndarray, trust: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``idx`` sorted by trust, highest first; a seeded draw breaks ties."""
    tie = rng.permutation(len(idx))
    return idx[np.lexsort((tie, -trust[idx]))]


def select_val(
    decisions: pd.DataFrame,
    trust: np.ndarray,
    *,
    dup_group: np.ndarray,
    num_classes: int,
    per_class: int = 100,
    max_fraction: float = 0.2,
    seed: int = 0,
    near_group: np.ndarray | None = None,
) -> np.ndarray:
    """Pick a clean, class-balanced validation set.

    Candidates are images kept with their given label (``action == "keep"``, empty ``reason``,
    no label-issue flag), so relabelled, reinstated, contested and dropped images never enter it,
    and whose duplicate group has no other kept image, so no validation image has a
    byte-identical twin in training. With ``near_group``, a candidate also has no near-copy
    anywhere in the input (its near-copy group holds it alone), so no validation image has a
    re-encoded, resized or cropped copy in training either, kept or not. Each class contributes
    the same number of images, ``n = min_k min(per_class, floor(max_fraction * candidates_k))``:
    equal counts make plain and balanced accuracy agree and keep the smallest class from being
    starved of training images (it never gives up more than ``max_fraction`` of its candidates).
    Within a class the ``n`` highest-``trust`` candidates are taken. Trusting the probe this way
    favours typical, easier images, which is the price of clean labels on a set with no ground
    truth.

    A class without any image (no row given or labelled ``k``) is skipped: it gets no
    validation images and does not lower ``n`` for the others; its recall is undefined
    downstream. A class that has images but too few candidates to give even one is refused.

    Parameters
    ----------
    decisions : pandas.DataFrame, N rows
        :func:`animal_assets.core.cleaning.decide` output (``label``, ``action``, ``reason``,
        ``label_issue``).
    trust : np.ndarray of float, shape (N,)
        Higher is more trustworthy, e.g. ``decisions["confidence"]``.
    dup_group : np.ndarray of int, shape (N,)
        Duplicate group ids.
    num_classes : int
        K.
    per_class : int
        Most validation images per class.
    max_fraction : float
        Largest share of a class's candidates that may go to validation.
    seed : int
        Breaks ties in ``trust``.
    near_group : np.ndarray of int, shape (N,), optional
        Near-copy group ids (:mod:`animal_assets.core.near_duplicates`).

    Returns
    -------
    np.ndarray of bool, shape (N,)
        True for validation rows; training rows are ``label >= 0`` and not validation.

    Raises
    ------
    ValueError
        When a class has images but fewer than ``ceil(1 / max_fraction)`` candidates; the
        message names each such class and its candidate count.
    """
    n = len(decisions)
    trust = np.asarray(trust, dtype=np.float64)
    group = np.asarray(dup_group)
    if trust.shape != (n,) or group.shape != (n,):
        raise ValueError(f"split.py: trust and dup_group must have shape ({n},)")
    if per_class < 1 or not 0.0 < max_fraction <= 1.0:
        raise ValueError("split.py: per_class must be >= 1 and max_fraction in (0, 1]")
    label = decisions["label"].to_numpy().astype(np.int64)
    kept = label >= 0
    _, dense = np.unique(group, return_inverse=True)
    kept_in_group = np.bincount(dense, weights=kept.astype(float))[dense]
    candidate = (
        (decisions["action"].to_numpy() == "keep")
        & (decisions["reason"].to_numpy() == "")
        & ~decisions["label_issue"].to_numpy().astype(bool)
        & kept
        & (label == decisions["given"].to_numpy())
        & (kept_in_group == 1)
    )
    if near_group is not None:
        near = np.asarray(near_group)
        if near.shape != (n,):
            raise ValueError(f"split.py: near_group must have shape ({n},)")
        _, near_dense = np.unique(near, return_inverse=True)
        candidate &= np.bincount(near_dense)[near_dense] == 1
    if not np.isfinite(trust[candidate]).all():
        raise ValueError("split.py: trust must be finite on every validation candidate")
    given = decisions["given"].to_numpy().astype(np.int64)
    # a class without any image, given or after cleaning, is skipped
    present = [k for k in range(num_classes) if ((given == k) | (label == k)).any()]
    pools = {k: np.flatnonzero(candidate & (label == k)) for k in present}
    caps = {k: min(per_class, int(max_fraction * len(pool))) for k, pool in pools.items()}
    starved = [k for k in present if caps[k] < 1]
    if starved:
        counts = "; ".join(
            f"class {k} has {len(pools[k])} trustworthy image{'' if len(pools[k]) == 1 else 's'} "
            f"({int((given == k).sum())} given, {int((label == k).sum())} after cleaning)"
            for k in starved
        )
        raise ValueError(
            f"split.py: classes {starved} have too few trustworthy images for a validation set: "
            f"{counts}; with max_fraction {max_fraction:g} a class needs at least "
            f"{math.ceil(1 / max_fraction - 1e-9)} (kept with its given label, not flagged as a "
            "label issue, no kept byte-identical twin"
            f"{', no near-copy' if near_group is not None else ''})"
        )
    take = min(caps.values(), default=0)
    rng = np.random.default_rng(seed)
    val = np.zeros(n, dtype=bool)
    for k in present:
        val[_trust_order(pools[k], trust, rng)[:take]] = True
    return val


def balance_plan(
    labels: np.ndarray,
    *,
    num_classes: int,
    target: int | None = None,
    max_factor: float = 3.0,
    exclude: np.ndarray | None = None,
    group: np.ndarray | None = None,
    keep_one: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Plan an oversampled training set where every class reaches ``target`` images.

    Each training row (``labels >= 0`` and not ``exclude``) appears once; a class below the
    target gets extra rows repeating its images as evenly as possible (a seeded permutation,
    cycled). A class never grows past ``max_factor`` times its own count: repeating a few
    hundred images ten times teaches the network those images, not the class. Classes above the
    target are not subsampled.

    With ``group`` (near-copy groups), a class's count is the number of its groups, not of its
    images: copies of one photograph count as one image, and the repeats are drawn from one
    image per group, so a photograph with copies is repeated no more often than one without.
    Without ``group`` every row is a group of its own.

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
        Final labels, -1 for dropped rows.
    num_classes : int
        K.
    target : int, optional
        Images per class to aim for (default: the largest training class).
    max_factor : float
        Cap on a class's size relative to its original count (>= 1).
    exclude : np.ndarray of bool, shape (N,), optional
        Rows kept out of training, e.g. the validation mask.
    group : np.ndarray of int, shape (N,), optional
        Near-copy group of every row.
    keep_one : bool
        Keep only the first row of each group and class (the others are left out).
    seed : int
        Order of the repeats.

    Returns
    -------
    source_idx : np.ndarray of int64, shape (M,)
        Row of ``labels`` each training image comes from: originals in row order, then the
        repeats class by class.
    generated : np.ndarray of bool, shape (M,)
        True for repeats, which should get augmented pixels (:func:`make_balanced_images`).
    """
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or (labels >= num_classes).any():
        raise ValueError(f"split.py: labels must be 1-D with values below {num_classes}")
    if max_factor < 1.0:
        raise ValueError(f"split.py: max_factor must be >= 1, got {max_factor}")
    train = labels >= 0
    if exclude is not None:
        exclude = np.asarray(exclude, dtype=bool)
        if exclude.shape != labels.shape:
            raise ValueError(f"split.py: exclude must have shape {labels.shape}, got {exclude.shape}")
        train &= ~exclude
    originals = np.flatnonzero(train)
    group = np.arange(len(labels)) if group is None else np.asarray(group).astype(np.int64)
    if group.shape != labels.shape:
        raise ValueError(f"split.py: group must have shape {labels.shape}, got {group.shape}")
    representatives = _representatives(originals, labels, group, num_classes)
    if keep_one:
        originals = representatives
    counts = np.bincount(labels[representatives], minlength=num_classes)
    goal = int(counts.max()) if target is None else int(target)
    rng = np.random.default_rng(seed)
    extra = []
    for k in range(num_classes):
        rows = representatives[labels[representatives] == k]
        want = max(len(rows), min(goal, int(max_factor * len(rows))))
        extra.append(np.resize(rng.permutation(rows), want - len(rows)))
    repeats = np.concatenate(extra).astype(np.int64)
    source = np.concatenate([originals, repeats])
    generated = np.r_[np.zeros(len(originals), dtype=bool), np.ones(len(repeats), dtype=bool)]
    return source, generated


def _representatives(rows: np.ndarray, labels: np.ndarray, group: np.ndarray, num_classes: int) -> np.ndarray:
    """The first of ``rows`` of each group within a class, in row order: one row stands for it."""
    _, first = np.unique(group[rows] * num_classes + labels[rows], return_index=True)
    return rows[np.sort(first)]


def distinct_counts(labels: np.ndarray, group: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Per class, the rows with ``labels >= 0`` counting each group once: (K,) int64."""
    labels = np.asarray(labels).astype(np.int64)
    rows = _representatives(np.flatnonzero(labels >= 0), labels, np.asarray(group).astype(np.int64),
                            num_classes)
    return np.bincount(labels[rows], minlength=num_classes)


def make_balanced_images(
    images: np.ndarray,
    source_idx: np.ndarray,
    generated: np.ndarray,
    *,
    seed: int,
    rotate_deg: float = 10,
    translate: int = 4,
) -> np.ndarray:
    """Pixels of a :func:`balance_plan`: originals copied, repeats augmented.

    Parameters
    ----------
    images : np.ndarray of uint8, shape (N, H, W, C)
        Images indexed like the ``labels`` given to :func:`balance_plan`.
    source_idx, generated : np.ndarray, shape (M,)
        :func:`balance_plan` output.
    seed : int
        Augmentation seed.
    rotate_deg, translate
        Largest rotation (degrees) and shift (pixels) of a repeat; repeats are also flipped
        left-right at random.

    Returns
    -------
    np.ndarray of uint8, shape (M, H, W, C)
    """
    from animal_assets.core.augment import augment_uint8_images

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"split.py: images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    source_idx = np.asarray(source_idx, dtype=np.int64)
    generated = np.asarray(generated, dtype=bool)
    if source_idx.shape != generated.shape:
        raise ValueError("split.py: source_idx and generated must have the same shape")
    out = images[source_idx]
    if generated.any():
        out[generated] = augment_uint8_images(out[generated], rotate_deg=rotate_deg, translate=translate,
                                              flip=True, seed=seed)
    return out

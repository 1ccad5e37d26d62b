"""Label cleaning: per-image posteriors of the true class, and keep / relabel / drop decisions.

A class-conditional noise model (:mod:`.noise_model`) gives every image
``P(true class | image, given label)``, with the true class prior estimated from the data; an
image whose posterior divided by that prior prefers another class is relabelled to it.
Out-of-distribution images and the extra copies of a byte-identical group are dropped; the
labels of a near-copy group (:mod:`.near_duplicates`) are decided together.

Guards against the failure modes of naive cleaning on small, noisy classes:

* the probe is class-weighted, so it is not biased toward the large classes;
* byte-identical copies collapse to one image carrying the label the posterior prefers for the
  group, and the members of a near-copy group all carry that group's label;
* a per-class floor keeps at least a fixed fraction of each class's images, reinstating the
  least suspicious relabelled ones, so cleaning can never empty a small class.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from animal_assets.core.probe import check_labels
from animal_assets.core.review import ACTIONS

REASONS = ("", "ood", "quality", "label_issue", "duplicate_conflict", "near_copy_conflict", "duplicate")
#: Reasons of a label decided for a group whose given labels disagree.
CONFLICT_REASONS = ("duplicate_conflict", "near_copy_conflict")


@dataclass(frozen=True, kw_only=True)
class CleaningConfig:
    """Settings of the probe and of the keep / relabel / drop rules."""

    n_folds: int = 5  # folds: each probability comes from a model that never saw the image
    probe_c: float | None = None  # inverse L2 strength of the probe; None picks it from probe.PROBE_C_GRID
    probe_max_iter: int = 200  # lbfgs budget per fold; stopping early only regularises the probe more
    class_weight: str | None = "balanced"  # "balanced" stops the probe from favouring large classes
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
        """Keyword arguments of :func:`animal_assets.core.probe.out_of_sample_probs` taken from
        this config.

        ``c`` is None when ``probe_c`` is; resolve it with
        :func:`animal_assets.core.probe.select_probe_c` first.
        """
        return {"n_folds": self.n_folds, "seed": self.seed, "c": self.probe_c,
                "max_iter": self.probe_max_iter, "class_weight": self.class_weight}


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


def copy_groups(dup_group: np.ndarray, near_group: np.ndarray | None = None) -> np.ndarray:
    """Groups of the same picture: byte-identical copies joined with near-copy groups.

    Parameters
    ----------
    dup_group : np.ndarray of int, shape (N,)
        :func:`duplicate_groups` ids.
    near_group : np.ndarray of int, shape (N,), optional
        Near-copy group ids (``near_duplicates``); None: the byte-identical groups alone.

    Returns
    -------
    np.ndarray of int64, shape (N,)
        Ids numbered by first appearance; two images share one when a chain of byte-identical or
        near-copy links joins them.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    dup = np.asarray(dup_group).astype(np.int64)
    if near_group is None:
        _, first, inverse = np.unique(dup, return_index=True, return_inverse=True)
    else:
        near = np.asarray(near_group).astype(np.int64)
        if near.shape != dup.shape:
            raise ValueError(f"cleaning.py: near_group must have shape {dup.shape}, got {near.shape}")
        n = len(dup)
        # each image linked to the first image of its byte group and of its near-copy group
        links = [np.unique(g, return_index=True, return_inverse=True) for g in (dup, near)]
        a = np.concatenate([np.arange(n)] * 2)
        b = np.concatenate([idx[inv] for _, idx, inv in links])
        graph = coo_matrix((np.ones(2 * n, dtype=np.int8), (a, b)), shape=(n, n))
        _, comp = connected_components(graph, directed=False)
        _, first, inverse = np.unique(comp, return_index=True, return_inverse=True)
    # renumber by first appearance
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[inverse]


def decide(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    ood_flags: np.ndarray,
    dup_group: np.ndarray,
    num_classes: int,
    config: CleaningConfig = CleaningConfig(),
    quality_flags: np.ndarray | None = None,
    near_group: np.ndarray | None = None,
) -> pd.DataFrame:
    """Keep, relabel or drop every image.

    Rules, in order:

    A group of copies is the byte-identical copies of ``dup_group`` joined with the near-copy
    groups of ``near_group`` (:func:`copy_groups`): the same picture, whose copies get one
    decision.

    1. OOD images are dropped (``reason="ood"``), then the images ``quality_flags`` marks
       (``reason="quality"``); a group of copies with any OOD (or flagged) member is
       dropped whole, because its copies are the same picture.
    2. Label issues among the non-OOD images: an image whose ``pred_probs`` argmax is not its
       given label is relabelled to that argmax (``reason="label_issue"``).
    3. A group of copies: of each byte-identical group only the first copy is kept, the others
       are dropped (``reason="duplicate"``); near-copies are all kept (``balanced_train`` counts
       them as one image). The group's mean probabilities decide the label of every kept copy:
       if the copies' given labels disagree, their argmax (``reason="duplicate_conflict"``, or
       ``"near_copy_conflict"`` when the group holds more than one distinct file); otherwise
       the agreed label is judged like a single image (step 2 with the group's mean, the group
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
    quality_flags : np.ndarray of bool, shape (N,), optional
        Images dropped for their quality (``image_quality``'s ``drop`` policy).
    near_group : np.ndarray of int, shape (N,), optional
        Near-copy group ids (``near_duplicates``); None: byte-identical groups only.

    Returns
    -------
    pandas.DataFrame, N rows
        Columns ``given``, ``label`` (final, -1 when dropped), ``action``, ``reason``,
        ``confidence`` (prob of the final label, of the given label when dropped),
        ``label_issue`` (the argmax is not the given label), ``self_confidence`` (prob of
        the given label) and ``copy_group`` (the group of copies decided together,
        :func:`copy_groups`).
    """
    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    n = pred_probs.shape[0]
    if pred_probs.shape != (n, num_classes):
        raise ValueError(f"cleaning.py: pred_probs must have shape (N, {num_classes}), "
                         f"got {pred_probs.shape}")
    given = check_labels(labels, num_classes, n)
    ood = np.asarray(ood_flags, dtype=bool)
    quality = np.zeros(n, dtype=bool) if quality_flags is None else np.asarray(quality_flags, dtype=bool)
    dup = np.asarray(dup_group).astype(np.int64)
    if ood.shape != (n,) or dup.shape != (n,) or quality.shape != (n,):
        raise ValueError(f"cleaning.py: ood_flags, quality_flags and dup_group must have shape ({n},)")
    group_dense = copy_groups(dup, near_group)

    rows = np.arange(n)
    self_conf = pred_probs[rows, given]
    # A group of copies is one picture: OOD if any copy is.
    ood = np.bincount(group_dense, weights=ood.astype(float))[group_dense] > 0
    quality = (np.bincount(group_dense, weights=quality.astype(float))[group_dense] > 0) & ~ood
    out = ood | quality  # left out of the labels: dropped whatever the probabilities say

    issue = np.zeros(n, dtype=bool)
    clean_rows = np.flatnonzero(~out)
    top = pred_probs.argmax(axis=1)
    issue[clean_rows] = top[clean_rows] != given[clean_rows]

    final = np.where(issue, top, given)
    action = np.where(issue, "relabel", "keep").astype(object)
    reason = np.where(issue, "label_issue", "").astype(object)
    action[out], final[out] = "drop", -1
    reason[ood], reason[quality] = "ood", "quality"

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
        if len(members) < 2 or out[members[0]]:
            continue
        # the first copy of each file stays (a stable sort keeps index order within a group)
        _, first_of_file = np.unique(dup[members], return_index=True)
        kept = members[np.sort(first_of_file)]
        copies = np.setdiff1d(members, kept)
        final[copies], action[copies], reason[copies] = -1, "drop", "duplicate"
        mean = pred_probs[members].mean(axis=0)
        labels_here = np.unique(given[members])
        if len(labels_here) == 1:
            flagged = bool(issue[members].any())
            for i in kept:
                judge(i, flagged, mean)
            continue
        best = int(mean.argmax())
        final[kept] = best
        action[kept] = np.where(given[kept] == best, "keep", "relabel")
        reason[kept] = "duplicate_conflict" if len(kept) == 1 else "near_copy_conflict"

    _apply_floor(final, action, reason, given, self_conf, out, num_classes, config.min_class_keep)
    kept = final >= 0
    confidence = np.where(kept, pred_probs[rows, np.where(kept, final, given)], self_conf)
    return pd.DataFrame({
        "given": given, "label": final, "action": action.astype(str), "reason": reason.astype(str),
        "confidence": confidence, "label_issue": issue, "self_confidence": self_conf,
        "copy_group": group_dense,
    })


def _apply_floor(final, action, reason, given, self_conf, ood, num_classes, fraction) -> None:
    """Reinstate relabelled images in place until every class meets its floor (see :func:`decide`)."""
    # Copies and contested labels are left out: a group is one image, a conflict is not "given k".
    settled = ~ood & (reason != "duplicate") & ~np.isin(reason, CONFLICT_REASONS)
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

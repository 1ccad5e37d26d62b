"""Label cleaning: per-image posteriors of the true class, and keep / relabel / drop decisions.

Two ways to judge a label, chosen by ``CleaningConfig.method``:

* ``"noise_model"`` (default): a class-conditional noise model (:mod:`.noise_model`) gives every
  image ``P(true class | image, given label)``, with the true class prior estimated from the
  data; an image whose posterior (divided by that prior, ``decision="balanced"``) prefers
  another class is relabelled to it, and one whose posterior is too flat to trust is dropped.
* ``"cleanlab"``: a class-weighted softmax-regression probe gives out-of-sample probabilities,
  cleanlab's confident learning flags the images whose given label disagrees with them, and a
  flagged image is relabelled to the probe's confident choice or dropped.

Both share the guards against the failure modes of naive pruning on small, noisy classes:

* the probe is class-weighted, so it is not biased toward the large classes;
* byte-identical copies collapse to one image carrying the label the probe prefers for the group;
* a per-class floor keeps at least a fixed fraction of each class's images, reinstating the
  least suspicious flagged ones, so pruning can never wipe out a small class.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from animal_assets.core.probe import check_labels

ACTIONS = ("keep", "relabel", "drop")
REASONS = ("", "ood", "label_issue", "duplicate_conflict", "duplicate")
METHODS = ("noise_model", "cleanlab")
DECISIONS = ("balanced", "bayes")
NOISE_ESTIMATORS = ("confident_rows", "confident_joint")  # see noise_model.estimate_transition
FILTER_METHODS = (
    "prune_by_noise_rate", "prune_by_class", "both", "confident_learning",
    "predicted_neq_given", "low_normalized_margin", "low_self_confidence",
)


@dataclass(frozen=True, kw_only=True)
class CleaningConfig:
    """Settings of the probe and of the keep / relabel / drop rules."""

    # "noise_model": posterior under an estimated noise transition matrix (see noise_model.py);
    # "cleanlab": cleanlab's find_label_issues on the probe's probabilities.
    method: str = "noise_model"
    n_folds: int = 5  # folds: each probability comes from a model that never saw the image
    # Inverse L2 strength; None picks it from probe.PROBE_C_GRID by cross-validated log-loss on the
    # given labels (on the CIFAR benchmark that chose 5e-4 with the 4,592 embedding values and
    # 0.001 with the 1,280 head values alone, 12 points of probe accuracy above 0.1;
    # on low-dimensional clusters it chooses about 0.1).
    probe_c: float | None = None
    probe_max_iter: int = 200  # L-BFGS budget per fit; the probe stops after a few dozen iterations
    class_weight: str | None = "balanced"  # "balanced" stops the probe from favouring large classes
    probe_threads: int | None = 1  # BLAS/OpenMP threads of the probe (None: all); 1 is immune to contention
    probe_jobs: int | None = None  # threads sharing each fit's rows, one BLAS thread each (None: one per core)
    em_rounds: int = 2  # noise_model: probe refits on the posterior's labels
    min_noise_rate: float = 0.08  # noise_model: smaller confusion rates are treated as 0
    # noise_model: pseudo-images per class labelled as themselves, added to the noise estimate;
    # keeps classes of a few dozen images from being moved on the probe's errors.
    noise_prior_images: float = 30.0
    # noise_model: estimate the true class prior from the data (the balanced probe's flat prior
    # undone, then pi = given shares @ T^-1); False assumes equally common true classes.
    estimate_prior: bool = True
    # noise_model: "balanced" picks the class maximising posterior / estimated prior (no class
    # gives its images away to a larger look-alike); "bayes" the posterior's argmax (best
    # overall accuracy, at the small classes' expense).
    decision: str = "balanced"
    # noise_model: how the noise matrix is estimated. "confident_rows": each class's row from the
    # given labels of the quarter of its images the probe is surest of (a class with fewer than
    # 400 keeps the confident joint's row); "confident_joint": cleanlab's confident joint, which
    # counts the probe's own look-alike confusions as noise in both directions (see
    # noise_model.estimate_transition). On the 36-run CIFAR family the accuracy bar held on 20
    # runs instead of 15 (label accuracy +0.007 on average), but a small class receiving a 0.35
    # flip can lose more: worst class -0.095 instead of -0.024.
    noise_estimator: str = "confident_rows"
    # noise_model: estimate the noise matrix again from the first refitted probe. With the
    # confident joint this helps (CIFAR benchmark, 0.35 / 0.10 pair flips: diagonal from
    # 0.55-0.82 to 0.67-0.88, true 0.65-0.90); with the confident rows it cost 0.6-0.8 points,
    # because a probe fitted on the posterior's labels is surest of the images it moved.
    reestimate_noise: bool = False
    # noise_model: read the confusion rates below min_noise_rate as noise spread evenly over
    # the other classes (symmetric noise), estimated from the images the probe is surest of,
    # instead of zero, so images can move off the look-alike pairs. On the CIFAR family's
    # cells with 10 % symmetric noise it added 0.8-1.7 points of label accuracy; without
    # symmetric noise it cost 0-0.4.
    background_noise: bool = True
    # noise_model: a moved image whose posterior is below this is dropped. 0 relabels every
    # moved image to its most likely class: on the CIFAR family the images 0.5 dropped were
    # right under their most likely class 48 % of the time and under their given label 29 %,
    # and dropping them cost 1.0-1.3 points of label accuracy on the noisiest cells.
    drop_below: float = 0.0
    relabel_threshold: float = 0.7  # cleanlab: a flagged image is relabelled when the probe's top prob reaches it
    min_class_keep: float = 0.5  # keep at least this fraction of each class's non-OOD given images
    filter_by: str = "prune_by_noise_rate"  # cleanlab find_label_issues method
    seed: int = 0  # fold assignment and every tie-break

    def __post_init__(self) -> None:
        if self.decision not in DECISIONS:
            raise ValueError(f"cleaning.py: decision must be one of {DECISIONS}, got {self.decision!r}")
        if self.noise_estimator not in NOISE_ESTIMATORS:
            raise ValueError(f"cleaning.py: noise_estimator must be one of {NOISE_ESTIMATORS}, "
                             f"got {self.noise_estimator!r}")
        if self.method not in METHODS:
            raise ValueError(f"cleaning.py: method must be one of {METHODS}, got {self.method!r}")
        if self.noise_prior_images < 0:
            raise ValueError(f"cleaning.py: noise_prior_images must be >= 0, got {self.noise_prior_images}")
        if self.em_rounds < 0:
            raise ValueError(f"cleaning.py: em_rounds must be >= 0, got {self.em_rounds}")
        if not 0.0 <= self.min_noise_rate < 1.0:
            raise ValueError(f"cleaning.py: min_noise_rate must be in [0, 1), got {self.min_noise_rate}")
        if not 0.0 <= self.drop_below <= 1.0:
            raise ValueError(f"cleaning.py: drop_below must be in [0, 1], got {self.drop_below}")
        if self.n_folds < 2:
            raise ValueError(f"cleaning.py: n_folds must be >= 2, got {self.n_folds}")
        if not 0.0 < self.relabel_threshold <= 1.0:
            raise ValueError(f"cleaning.py: relabel_threshold must be in (0, 1], "
                             f"got {self.relabel_threshold}")
        if not 0.0 <= self.min_class_keep <= 1.0:
            raise ValueError(f"cleaning.py: min_class_keep must be in [0, 1], got {self.min_class_keep}")
        if self.filter_by not in FILTER_METHODS:
            raise ValueError(f"cleaning.py: filter_by must be one of {FILTER_METHODS}, "
                             f"got {self.filter_by!r}")

    def probe_kwargs(self) -> dict:
        """Keyword arguments of :func:`.probe.out_of_sample_probs` taken from this config.

        ``c`` is None when ``probe_c`` is; resolve it with :func:`.probe.select_probe_c` first.
        """
        return {"n_folds": self.n_folds, "seed": self.seed, "c": self.probe_c,
                "max_iter": self.probe_max_iter, "class_weight": self.class_weight, "n_threads": self.probe_threads,
                "n_jobs": self.probe_jobs}


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
    2. Label issues among the non-OOD images. With ``method="noise_model"``, ``pred_probs`` are
       posteriors and an image is an issue when their argmax is not its given label; it is
       relabelled to that argmax when the posterior reaches ``drop_below``, else dropped. With
       ``method="cleanlab"``, cleanlab's ``find_label_issues`` flags; a flagged image is
       relabelled to the probe's argmax when that probability reaches ``relabel_threshold``,
       else dropped (``reason="label_issue"``); a flagged image whose argmax is its given label
       stays kept. Below, "threshold" is ``drop_below`` or ``relabel_threshold`` accordingly.
    3. A byte-identical group keeps only its first copy; the others are dropped
       (``reason="duplicate"``). The group's mean probabilities decide the label: their argmax
       when it reaches the threshold; otherwise, if the copies' given labels disagree,
       the given label the mean prefers (``reason="duplicate_conflict"``); otherwise the
       agreed label is judged like a single image (step 2 with the group's mean and any flag).
    4. Per-class floor: a class whose final count is below ``ceil(min_class_keep * base)``,
       base = its non-OOD given images that are not duplicate copies, gets flagged images of
       its own given label back as ``keep`` (label-issue drops first, then relabels away from
       it), least suspicious (highest self-confidence) first. Rows only ever return to their
       given label, so the loop ends; the floor holds for every class. Copies and
       conflict-group images are left out of the base: their label was never one image's alone.

    Parameters
    ----------
    labels : np.ndarray of int, shape (N,)
        Given labels.
    pred_probs : np.ndarray, shape (N, K)
        Posteriors (:func:`.noise_model.noise_posteriors`) or out-of-sample probabilities
        (:func:`.probe.out_of_sample_probs`), as ``config.method`` says.
    ood_flags : np.ndarray of bool, shape (N,)
        Out-of-distribution images.
    dup_group : np.ndarray of int, shape (N,)
        :func:`duplicate_groups` ids.
    num_classes : int
        K.
    config : CleaningConfig
        Thresholds and cleanlab method.

    Returns
    -------
    pandas.DataFrame, N rows
        Columns ``given``, ``label`` (final, -1 when dropped), ``action``, ``reason``,
        ``confidence`` (prob of the final label, of the given label when dropped),
        ``label_issue`` (cleanlab flag) and ``self_confidence`` (prob of the given label).
    """
    from cleanlab.filter import find_label_issues

    pred_probs = np.asarray(pred_probs, dtype=np.float64)
    n = pred_probs.shape[0]
    if pred_probs.shape != (n, num_classes):
        raise ValueError(f"cleaning.py: pred_probs must have shape (N, {num_classes}), "
                         f"got {pred_probs.shape}")
    given = check_labels(labels, num_classes, n, "cleaning.py: labels")
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
    if config.method == "noise_model":
        threshold = config.drop_below
        issue[clean_rows] = top[clean_rows] != given[clean_rows]
    else:
        threshold = config.relabel_threshold
        if len(clean_rows):
            # n_jobs=1: K is small, and forking worker pools inside Dagster or torch processes is fragile.
            issue[clean_rows] = find_label_issues(given[clean_rows], pred_probs[clean_rows],
                                                  filter_by=config.filter_by, n_jobs=1)

    confident = pred_probs[rows, top] >= threshold
    moved = issue & (top != given)
    final = np.where(moved, np.where(confident, top, -1), given)
    action = np.where(moved, np.where(confident, "relabel", "drop"), "keep").astype(object)
    reason = np.where(moved, "label_issue", "").astype(object)
    action[ood], reason[ood], final[ood] = "drop", "ood", -1

    def judge(i: int, flagged: bool, probs: np.ndarray) -> None:
        # The single-image rule above, for a group's kept copy.
        best = int(probs.argmax())
        if not flagged or best == given[i]:
            final[i], action[i], reason[i] = given[i], "keep", ""
        elif probs[best] >= threshold:
            final[i], action[i], reason[i] = best, "relabel", "label_issue"
        else:
            final[i], action[i], reason[i] = -1, "drop", "label_issue"

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
        if mean[best] < threshold:
            best = int(labels_here[np.argmax(mean[labels_here])])
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
    """Reinstate flagged images in place until every class meets its floor (see :func:`decide`)."""
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
        pools = [np.flatnonzero((given == k) & (reason == "label_issue") & (action == kind))
                 for kind in ("drop", "relabel")]
        ranked = np.concatenate([p[np.argsort(-self_conf[p], kind="stable")] for p in pools])
        take = ranked[: need[k] - counts[k]]
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

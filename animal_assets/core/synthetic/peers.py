"""What others would do with the same evidence: the cleanings the benchmark family compares
against, on the same features and the same out-of-fold probe probabilities as the label stage.

* ``raw``: the given labels.
* ``cleanlab-drop``: ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with its defaults (one process),
  every flagged image dropped (what a Datalab user does).
* ``anchor``: a simple pipeline: the 15 % of images with the largest mean cosine distance to
  their 10 nearest neighbours (head features) dropped as outliers; cleanlab's flags on the rest;
  a flagged image relabelled to the probe's class where its top probability is at least 0.7,
  else dropped.

They live here, beside the benchmark, and not in the product's config. Each returns the final
label per image, -1 for a dropped one; :func:`score_labels` scores any such labelling.
"""
from __future__ import annotations

import numpy as np

#: The peers, in the order the family's table shows them (then the label stage, "ours").
PEERS = ("raw", "cleanlab-drop", "anchor")
ANCHOR_OOD_SHARE = 0.15
ANCHOR_K = 10
ANCHOR_RELABEL_AT = 0.7


def _issues(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    from cleanlab.filter import find_label_issues

    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    # n_jobs=1: cleanlab's default forks a process pool, and a fork of a process whose torch
    # and BLAS threads hold a lock can hang for good; one process gives the same flags
    return np.asarray(find_label_issues(np.asarray(given, dtype=np.int64), probs, n_jobs=1),
                      dtype=bool)


def cleanlab_drop(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """The given labels with every image that cleanlab flags (its defaults) dropped."""
    final = np.asarray(given, dtype=np.int64).copy()
    final[_issues(final, probs)] = -1
    return final


def simple_anchor(given: np.ndarray, probs: np.ndarray, head_features: np.ndarray, *,
                  ood_share: float = ANCHOR_OOD_SHARE, k: int = ANCHOR_K,
                  relabel_at: float = ANCHOR_RELABEL_AT) -> np.ndarray:
    """The anchor's labels: kNN-distance outliers dropped, cleanlab's flags relabelled where
    the probe is sure, else dropped (see the module docstring)."""
    from animal_assets.core.ood import flag_outliers, knn_ood_scores

    given = np.asarray(given, dtype=np.int64)
    final = given.copy()
    outliers = flag_outliers(knn_ood_scores(head_features, k=k, device="cpu"), fraction=ood_share)
    final[outliers] = -1
    rest = np.flatnonzero(~outliers)
    flagged = rest[_issues(given[rest], probs[rest])]
    top = probs[flagged].argmax(axis=1)
    sure = probs[flagged, top] >= relabel_at
    final[flagged] = np.where(sure, top, -1)
    return final


def score_labels(final: np.ndarray, given: np.ndarray, true: np.ndarray, num_classes: int) -> dict:
    """A labelling scored against the truth (``true`` -1: out of distribution).

    Returns
    -------
    dict
        ``label_accuracy``: share of in-distribution images whose final label is the true one,
        a dropped image counted as an error; ``worst_class_change``: the lowest change of a true
        class's label accuracy against the given labels; ``kept``: images not dropped;
        ``kept_accuracy``: share of the kept images whose label is the true one (a kept
        out-of-distribution image is wrong).
    """
    final, given, true = (np.asarray(a, dtype=np.int64) for a in (final, given, true))
    ind = true >= 0
    changes = []
    for c in range(num_classes):
        members = ind & (true == c)
        if members.any():
            changes.append(float((final[members] == c).mean() - (given[members] == c).mean()))
    kept = final >= 0
    return {
        "label_accuracy": float((final[ind] == true[ind]).mean()) if ind.any() else float("nan"),
        "worst_class_change": min(changes) if changes else float("nan"),
        "kept": int(kept.sum()),
        "kept_accuracy": float((final[kept] == true[kept]).mean()) if kept.any() else float("nan"),
    }


def compare(given: np.ndarray, probs: np.ndarray, head_features: np.ndarray, ours: np.ndarray,
            true: np.ndarray, num_classes: int) -> dict[str, dict]:
    """:func:`score_labels` of each peer and of ``ours`` (the label stage's final labels)."""
    labellings = {
        "raw": np.asarray(given, dtype=np.int64),
        "cleanlab-drop": cleanlab_drop(given, probs),
        "anchor": simple_anchor(given, probs, head_features),
        "ours": np.asarray(ours, dtype=np.int64),
    }
    return {name: score_labels(final, given, true, num_classes) for name, final in labellings.items()}

"""How well the cleaning steps found what a ground-truth benchmark injected.

A truth file maps ``img_{uuid}`` to ``{"true": k or -1 (OOD), "given": k, "kind": ...}``. The
pipeline never reads it to clean; it is only used here, to score the decisions afterwards.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

LABEL_REASONS = ("label_issue", "duplicate_conflict")


def _prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average="binary", zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f),
            "n_true": int(y_true.sum()), "n_flagged": int(y_pred.sum())}


def cleaning_scores(decisions: pd.DataFrame, truth: dict[str, dict]) -> dict:
    """Score the cleaning decisions against a truth file.

    Parameters
    ----------
    decisions : DataFrame
        One row per usable image with columns ``id``, ``given``, ``label`` (-1 when dropped),
        ``action``, ``reason``, ``ood_score`` and ``flag_ood`` (bool) — as written by
        ``clean_labels`` joined with ``ood_scores``.
    truth : dict
        The truth file, keyed by image id.

    Returns
    -------
    dict
        ``ood``: AUROC of the OOD score and precision/recall/F1 of the OOD flag;
        ``label_issues``: precision/recall/F1 of finding images whose given label is wrong
        (among in-distribution images; an image counts as found when it was relabelled or
        dropped for a label reason); ``label_accuracy``: share of in-distribution images whose
        final label is the true one, every dropped image counted as an error (``raw`` gives the
        same figure for the given labels); ``n_scored`` and ``n_missing`` (truth ids that are not
        among the usable images, e.g. quarantined).
    """
    d = decisions[decisions["id"].isin(truth.keys())].copy()
    true = d["id"].map(lambda i: truth[i]["true"]).to_numpy(dtype=np.int64)
    is_ood = true == -1
    out: dict = {"n_scored": int(len(d)), "n_missing": int(len(truth) - len(d))}

    if is_ood.any() and (~is_ood).any():
        out["ood"] = {"auroc": float(roc_auc_score(is_ood, d["ood_score"].to_numpy()))}
        out["ood"].update(_prf(is_ood, d["flag_ood"].to_numpy(dtype=bool)))
        out["ood"]["dropped_as_ood"] = _prf(is_ood, (d["reason"] == "ood").to_numpy())

    ind = ~is_ood
    given = d["given"].to_numpy(dtype=np.int64)[ind]
    final = d["label"].to_numpy(dtype=np.int64)[ind]
    wrong = given != true[ind]
    action = d["action"].to_numpy()[ind]
    reason = d["reason"].to_numpy()[ind]
    found = (action == "relabel") | ((action == "drop") & np.isin(reason, LABEL_REASONS))
    out["label_issues"] = _prf(wrong, found)
    out["label_accuracy"] = {
        "cleaned": float(np.mean(final == true[ind])) if ind.any() else float("nan"),
        "raw": float(np.mean(~wrong)) if ind.any() else float("nan"),
        "kept_only": float(np.mean(final[final >= 0] == true[ind][final >= 0]))
        if (final >= 0).any() else float("nan"),
        "n_dropped": int((final < 0).sum()),
    }
    return out


def scores_markdown(scores: dict) -> str:
    """A short markdown table of :func:`cleaning_scores` for the Dagster UI."""
    rows = ["| what | figure |", "| --- | --- |"]
    if "ood" in scores:
        o = scores["ood"]
        rows.append(f"| OOD AUROC | {o['auroc']:.3f} |")
        rows.append(f"| OOD flag precision / recall | {o['precision']:.3f} / {o['recall']:.3f} |")
    li = scores["label_issues"]
    rows.append(
        f"| label issues precision / recall / F1 | "
        f"{li['precision']:.3f} / {li['recall']:.3f} / {li['f1']:.3f} |"
    )
    la = scores["label_accuracy"]
    rows.append(f"| label accuracy raw → cleaned (drops = errors) | {la['raw']:.3f} → "
                f"{la['cleaned']:.3f} |")
    return "\n".join(rows)

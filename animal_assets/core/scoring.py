"""How well the cleaning steps found what a ground-truth benchmark injected.

A truth file maps ``img_{uuid}`` to ``{"true": k or -1 (OOD), "given": k, "kind": ...}``. The
pipeline never reads it to clean; it is only used here, to score the decisions afterwards.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

LABEL_REASONS = ("label_issue", "duplicate_conflict", "near_copy_conflict")


def _prf(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    p, r, f, _ = precision_recall_fscore_support(
        y_true, y_pred, average="binary", zero_division=0
    )
    return {"precision": float(p), "recall": float(r), "f1": float(f),
            "n_true": int(y_true.sum()), "n_flagged": int(y_pred.sum())}


def per_class_accuracy(true: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Share of the images of each true class whose label is that class (-1, dropped, is wrong).

    A class with no image gets NaN.
    """
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        members = true == k
        if members.any():
            out[k] = float(np.mean(labels[members] == k))
    return out


def cleaning_scores(decisions: pd.DataFrame, truth: dict[str, dict], *,
                    num_classes: int | None = None) -> dict:
    """Score the cleaning decisions against a truth file.

    Parameters
    ----------
    decisions : DataFrame
        One row per usable image with columns ``id``, ``given``, ``label`` (-1 when dropped),
        ``action``, ``reason``, ``ood_score`` and ``flag_ood`` (bool) — as written by
        ``clean_labels`` joined with ``ood_scores``.
    truth : dict
        The truth file, keyed by image id.
    num_classes : int, optional
        K, the length of the per-class lists (default: one more than the largest label seen).

    Returns
    -------
    dict
        ``ood``: AUROC of the OOD score and precision/recall/F1 of the OOD flag;
        ``label_issues``: precision/recall/F1 of finding images whose given label is wrong
        (among in-distribution images; an image counts as found when it was relabelled or
        dropped for a label reason); ``label_accuracy``: share of in-distribution images whose
        final label is the true one, every dropped image counted as an error (``raw`` gives the
        same figure for the given labels); ``per_class``: the same per true class (``raw`` and
        ``cleaned`` lists); ``ood_share``: the share flagged against the true share;
        ``truth_prior`` and ``truth_transition``: the true class shares and noise matrix
        ``T[true, given]`` of the in-distribution images; ``n_scored`` and ``n_missing`` (truth
        ids that are not among the usable images, e.g. quarantined).
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
    k = num_classes or int(max(d["given"].to_numpy(dtype=np.int64).max(initial=0),
                               true.max(initial=0)) + 1)
    out["per_class"] = {
        "raw": per_class_accuracy(true[ind], given, k).tolist(),
        "cleaned": per_class_accuracy(true[ind], final, k).tolist(),
    }
    if "flag_ood" in d:
        out["ood_share"] = {"flagged": float(d["flag_ood"].mean()), "true": float(np.mean(is_ood))}
    matrix = np.zeros((k, k))
    np.add.at(matrix, (true[ind], given), 1.0)
    sizes = matrix.sum(axis=1)
    out["truth_prior"] = (sizes / max(sizes.sum(), 1.0)).tolist()
    out["truth_transition"] = (matrix / np.maximum(sizes[:, None], 1.0)).tolist()
    out["label_accuracy"] = {
        "cleaned": float(np.mean(final == true[ind])) if ind.any() else float("nan"),
        "raw": float(np.mean(~wrong)) if ind.any() else float("nan"),
        "kept_only": float(np.mean(final[final >= 0] == true[ind][final >= 0]))
        if (final >= 0).any() else float("nan"),
        "n_dropped": int((final < 0).sum()),
    }
    return out


def scores_markdown(scores: dict, *, class_names: list[str] | None = None,
                    estimated: dict | None = None) -> str:
    """Markdown tables of :func:`cleaning_scores` for the Dagster UI.

    ``estimated`` (the ``prior`` and ``transition`` of the clean_labels summary, when the noise
    model made them) puts the estimated class shares and noise rates beside the true ones; a
    class's noise is the share of its images given another label.
    """
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
    if "ood_share" in scores:
        share = scores["ood_share"]
        rows.append(f"| OOD share flagged / true | {share['flagged']:.3f} / {share['true']:.3f} |")
    if "per_class" not in scores:
        return "\n".join(rows)
    names = class_names or [str(k) for k in range(len(scores["per_class"]["raw"]))]
    prior = (estimated or {}).get("prior")
    transition = (estimated or {}).get("transition")
    rows += ["", "| class | label acc raw → cleaned | true share | estimated share | "
             "true noise | estimated noise |", "| --- | --- | --- | --- | --- | --- |"]
    for k, name in enumerate(names):
        raw, cleaned = scores["per_class"]["raw"][k], scores["per_class"]["cleaned"][k]
        true_noise = 1.0 - scores["truth_transition"][k][k]
        rows.append(
            f"| {name} | {raw:.3f} → {cleaned:.3f} | {scores['truth_prior'][k]:.3f} | "
            f"{'' if prior is None else f'{prior[k]:.3f}'} | {true_noise:.3f} | "
            f"{'' if transition is None else f'{1.0 - transition[k][k]:.3f}'} |")
    if transition is not None:
        rows += ["", noise_matrix_markdown(scores["truth_transition"], transition, names)]
    return "\n".join(rows)


def noise_matrix_markdown(true: list, estimated: list, names: list[str]) -> str:
    """The noise matrix ``T[true, given]`` as "true / estimated" per cell, in markdown.

    Rows are true classes, columns given labels; a cell where both rates round to 0.00 is left
    blank, so the look-alike pairs and their direction stand out.
    """
    true, estimated = np.asarray(true, dtype=float), np.asarray(estimated, dtype=float)
    lines = ["noise matrix, true / estimated (rows: true class, columns: given label)", "",
             "| true \\ given | " + " | ".join(names) + " |",
             "| --- |" + " --- |" * len(names)]
    for j, name in enumerate(names):
        cells = ["" if round(true[j, i], 2) == 0 and round(estimated[j, i], 2) == 0
                 else f"{true[j, i]:.2f} / {estimated[j, i]:.2f}" for i in range(len(names))]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

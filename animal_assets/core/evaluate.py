"""Classification metrics for the trained model: balanced accuracy, per-class recall, confusion.

:func:`classification_report` returns plain JSON-friendly values (lists, floats, ints, None), so
the report can be stored as JSON and attached as metadata; :func:`to_markdown` renders it as a
compact table.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, confusion_matrix


def _as_labels(values: Any, name: str, num_classes: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.size == 0:
        arr = arr.astype(np.int64)  # np.asarray([]) is float64; an empty list is still labels
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"evaluate.classification_report: {name} must be a 1-D integer array, "
                         f"got {arr.dtype} {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"evaluate.classification_report: {name} must lie in 0..{num_classes - 1}")
    return arr.astype(np.int64)


def classification_report(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, *,
                          num_classes: int, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Summarise predictions against true labels.

    Parameters
    ----------
    y_true, y_pred : array-like
        Integer labels (N,) in ``0..num_classes-1``.
    num_classes : int
        K; classes absent from both arrays still get a row and column.
    class_names : sequence of str, optional
        K names; defaults to ``"0"``, ``"1"``, ...

    Returns
    -------
    dict
        ``n``; ``accuracy``; ``balanced_accuracy`` (sklearn: mean recall over the classes present
        in ``y_true``); ``class_names`` (K,); ``support`` (K,) true counts; ``per_class_recall``
        (K,) with None for classes without true examples; ``per_class`` (K,) of
        ``{"name", "support", "recall"}``; ``confusion_matrix`` (K, K) with rows = true class and
        columns = predicted class.
    """
    if num_classes < 1:
        raise ValueError(f"evaluate.classification_report: num_classes must be >= 1, got {num_classes}")
    y_true = _as_labels(y_true, "y_true", num_classes)
    y_pred = _as_labels(y_pred, "y_pred", num_classes)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"evaluate.classification_report: y_true has {len(y_true)} labels, y_pred {len(y_pred)}")
    if y_true.size == 0:
        raise ValueError("evaluate.classification_report: no labels to score")
    names = [str(k) for k in range(num_classes)] if class_names is None else [str(c) for c in class_names]
    if len(names) != num_classes:
        raise ValueError(f"evaluate.classification_report: {len(names)} class_names for {num_classes} classes")

    cm = confusion_matrix(y_true, y_pred, labels=np.arange(num_classes))
    support = cm.sum(axis=1)
    recall = [float(cm[k, k] / support[k]) if support[k] else None for k in range(num_classes)]
    with warnings.catch_warnings():
        # Predicting a class that has no true examples is expected on small splits; sklearn
        # already leaves such classes out of the mean.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "n": int(y_true.size),
        "accuracy": float((y_true == y_pred).mean()),
        "balanced_accuracy": balanced,
        "class_names": names,
        "support": [int(s) for s in support],
        "per_class_recall": recall,
        "per_class": [{"name": names[k], "support": int(support[k]), "recall": recall[k]}
                      for k in range(num_classes)],
        "confusion_matrix": cm.astype(int).tolist(),
    }


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def to_markdown(report: dict[str, Any], *, confusion: bool = True) -> str:
    """Render a :func:`classification_report` as Markdown.

    Parameters
    ----------
    report : dict
        Output of :func:`classification_report`.
    confusion : bool
        Also render the confusion matrix (rows = true, columns = predicted).

    Returns
    -------
    str
        A summary line, a per-class table (recall "undefined" for a class without examples, with
        a sentence saying so) and optionally the confusion matrix.
    """
    lines = [
        f"**balanced accuracy {report['balanced_accuracy']:.4f}** · accuracy {report['accuracy']:.4f} "
        f"· n = {report['n']}",
        "",
        "| class | support | recall |",
        "|---|---:|---:|",
    ]
    lines += [f"| {row['name']} | {row['support']} | {_fmt(row['recall'])} |" for row in report["per_class"]]
    absent = [row["name"] for row in report["per_class"] if row["recall"] is None]
    if absent:
        lines += ["", f"Recall is undefined for {', '.join(absent)}: no example of "
                      f"{'that class' if len(absent) == 1 else 'those classes'} here; balanced "
                      "accuracy is the mean recall of the other classes."]
    if confusion:
        names = report["class_names"]
        lines += ["", "| true \\ predicted | " + " | ".join(names) + " |",
                  "|---|" + "---:|" * len(names)]
        lines += [f"| {names[k]} | " + " | ".join(str(v) for v in row) + " |"
                  for k, row in enumerate(report["confusion_matrix"])]
    return "\n".join(lines) + "\n"

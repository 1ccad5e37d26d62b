"""Small plots of what each stage did (matplotlib, Agg canvas): class counts, confusion
matrices, training curves, score histograms and comparisons of runs.

Each returns PNG bytes that the caller writes beside its outputs and embeds in markdown
(:func:`animal_assets.core.media.image_markdown`). Rendering is deterministic: the same inputs
give the same bytes (no timestamps in the files).
"""
from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np

def _figure(width: float, height: float):
    # The object API with the Agg canvas: no pyplot global state, safe beside other threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    # No "Software" entry: the bytes then depend on the picture only.
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    return buf.getvalue()


def class_counts_plot(
    counts: Mapping[str, Sequence[int]], class_names: Sequence[str], *, title: str,
) -> bytes:
    """Grouped bars of images per class, one bar per series (e.g. given / after cleaning).

    Parameters
    ----------
    counts : mapping of str to sequence of int, each of length K
        Series name -> count per class, drawn in the mapping's order.
    class_names : sequence of str, length K
        Tick labels.
    title : str
        Plot title.

    Returns
    -------
    bytes
        PNG bytes.
    """
    k = len(class_names)
    for name, values in counts.items():
        if len(values) != k:
            raise ValueError(f"media.py: series {name!r} has {len(values)} counts for {k} classes")
    fig = _figure(max(5.0, 0.55 * k + 2.0), 2.8)
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(counts))
    x = np.arange(k)
    for i, (name, values) in enumerate(counts.items()):
        ax.bar(x + (i - (len(counts) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(x, [str(c) for c in class_names], rotation=30 if k > 6 else 0, ha="right"
                  if k > 6 else "center")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def confusion_plot(matrix: np.ndarray | Sequence[Sequence[int]], class_names: Sequence[str], *,
                   title: str) -> bytes:
    """A confusion matrix as a heat map with the counts written in the cells.

    Parameters
    ----------
    matrix : array-like of int, shape (K, K)
        Rows = true class, columns = predicted class.
    class_names : sequence of str, length K
        Axis labels.
    title : str
        Plot title.

    Returns
    -------
    bytes
        PNG bytes.
    """
    cm = np.asarray(matrix, dtype=np.int64)
    k = len(class_names)
    if cm.shape != (k, k):
        raise ValueError(f"media.py: the confusion matrix must be ({k}, {k}), got {cm.shape}")
    side = max(3.2, 0.42 * k + 1.6)
    fig = _figure(side + 0.6, side)
    ax = fig.add_subplot()
    ax.imshow(cm, cmap="Blues", vmin=0)
    names = [str(c) for c in class_names]
    ax.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center",
                  fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    top = cm.max() if cm.size else 0
    for i in range(k):
        for j in range(k):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > top / 2 else "black")
    return _png(fig)


def loss_axis_top(losses: Sequence[float]) -> float | None:
    """Where the loss axis stops when one early spike (a validation loss of tens after the first
    epoch) would flatten the rest: twice the 75th percentile of the losses, or None (no cut)
    when nothing lies above it or there are fewer than 4 losses."""
    values = np.asarray(losses, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 4:
        return None
    top = 2.0 * float(np.percentile(values, 75))
    return top if values.max() > top else None


def training_curves(history: Sequence[Mapping[str, float | None]]) -> bytes:
    """Loss (train and validation) and validation balanced accuracy per epoch.

    Parameters
    ----------
    history : sequence of mappings, one per epoch
        Rows with ``epoch``, ``train_loss`` and optionally ``val_loss`` and ``val_balanced_acc``
        (None when there was no validation set).

    Returns
    -------
    bytes
        PNG bytes.
    """
    if not history:
        raise ValueError("media.py: training curves need at least one epoch")
    epochs = [int(r["epoch"]) for r in history]

    def series(key: str) -> list[float]:
        return [float("nan") if r.get(key) is None else float(r[key]) for r in history]

    fig = _figure(7.0, 2.6)
    loss_ax, acc_ax = fig.subplots(1, 2)
    marker = "o" if len(epochs) <= 30 else None
    loss_ax.plot(epochs, series("train_loss"), marker=marker, label="train")
    loss_ax.plot(epochs, series("val_loss"), marker=marker, label="validation")
    loss_ax.set_title("loss", fontsize=10)
    loss_ax.legend(fontsize=8, frameon=False)
    top = loss_axis_top(series("train_loss") + series("val_loss"))
    if top is not None:
        loss_ax.set_ylim(0.0, top)
        loss_ax.set_title("loss (axis cut at twice its 75th percentile)", fontsize=10)
    acc_ax.plot(epochs, series("val_balanced_acc"), marker=marker, color="tab:green")
    acc_ax.set_ylim(0.0, 1.0)
    acc_ax.set_title("validation balanced accuracy", fontsize=10)
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.spines[["top", "right"]].set_visible(False)
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
    return _png(fig)


def score_histogram(scores: np.ndarray, threshold: float, *, title: str) -> bytes:
    """Histogram of outlier scores with the flagging threshold as a vertical line.

    Parameters
    ----------
    scores : np.ndarray of float, shape (N,)
        One score per image.
    threshold : float
        Lowest flagged score (``inf`` when nothing is flagged: no line).
    title : str
        Plot title.

    Returns
    -------
    bytes
        PNG bytes.
    """
    values = np.asarray(scores, dtype=np.float64)
    fig = _figure(5.0, 2.4)
    ax = fig.add_subplot()
    ax.hist(values[np.isfinite(values)], bins=min(60, max(10, len(values) // 10)), color="tab:gray")
    if math.isfinite(threshold):
        ax.axvline(threshold, color="tab:red", linestyle="--", label="flagged from here")
        ax.legend(fontsize=8, frameon=False)
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def comparison_plot(
    names: Sequence[str], means: Sequence[float], stds: Sequence[float] | None = None, *,
    metric: str, title: str,
) -> bytes:
    """Horizontal bars comparing variants of a run (an ablation), with error bars.

    Parameters
    ----------
    names : sequence of str, length V
        Variant names, top to bottom.
    means : sequence of float, length V
        The metric per variant (e.g. mean balanced accuracy over seeds).
    stds : sequence of float, length V, optional
        Spread per variant (e.g. standard deviation over seeds).
    metric : str
        Axis label.
    title : str
        Plot title.

    Returns
    -------
    bytes
        PNG bytes.
    """
    if len(names) != len(means) or (stds is not None and len(stds) != len(means)):
        raise ValueError("media.py: names, means and stds must have the same length")
    if not names:
        raise ValueError("media.py: nothing to compare")
    fig = _figure(6.0, 0.4 * len(names) + 1.2)
    ax = fig.add_subplot()
    y = np.arange(len(names))[::-1]
    ax.barh(y, means, xerr=stds, color="tab:blue", capsize=3)
    ax.set_yticks(y, [str(n) for n in names], fontsize=8)
    for yi, m in zip(y, means):
        ax.text(m, yi, f" {m:.3f}", va="center", fontsize=8)
    ax.set_xlabel(metric)
    ax.set_title(title, fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    return _png(fig)


def embedding_map(
    xy: np.ndarray, given: Sequence[int], marks: Sequence[str], class_names: Sequence[str], *,
    title: str,
) -> bytes:
    """Scatter of a 2-D map of the images, coloured by given label, with each image the
    cleaning acted on marked by what it did.

    Parameters
    ----------
    xy : np.ndarray, shape (n, 2)
        Map coordinates.
    given : sequence of int, length n
        Given label per point (the colour).
    marks : sequence of str, length n
        ``""`` (kept as given), ``"relabelled"``, ``"out of distribution"`` or ``"dropped"``.
    class_names : sequence of str, length K
        Legend names of the colours.
    title : str
        Plot title.

    Returns
    -------
    bytes
        PNG bytes.
    """
    from matplotlib import colormaps

    xy = np.asarray(xy, dtype=np.float64)
    given = np.asarray(given, dtype=np.int64)
    marks = np.asarray(marks, dtype=object)
    if xy.shape != (len(given), 2) or len(marks) != len(given):
        raise ValueError("plots.py: xy must be (n, 2) with one label and one mark per point")
    k = len(class_names)
    colours = colormaps["tab10" if k <= 10 else "tab20"]
    fig = _figure(7.5, 6.0)
    ax = fig.add_subplot()
    for c in range(k):
        at = given == c
        if at.any():
            ax.scatter(xy[at, 0], xy[at, 1], s=7, color=colours(c % colours.N), alpha=0.55,
                       linewidths=0, label=str(class_names[c]))
    styles = {"relabelled": dict(marker="^", s=26, facecolors="none", edgecolors="black"),
              "out of distribution": dict(marker="x", s=22, color="black"),
              "dropped": dict(marker="s", s=22, facecolors="none", edgecolors="tab:red")}
    for mark, style in styles.items():
        at = marks == mark
        if at.any():
            ax.scatter(xy[at, 0], xy[at, 1], linewidths=0.8, label=f"{mark} ({int(at.sum())})",
                       **style)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5),
              markerscale=1.5)
    return _png(fig)


# --------------------------------------------------------------------------------------------
# what each step shows

"""Stage ``ood_scores``: an out-of-distribution score and flag per image (kNN distance or
neighbour-label entropy, sharpened by self-training; :mod:`animal_assets.core.ood` and
:mod:`animal_assets.core.ood_refine`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from animal_assets.core.atomic import atomic_path
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.stages.base import FileRef, Pictures, RunContext, Table
from animal_assets.core.stages.embeddings import Embeddings
from animal_assets.core.stages.neighbours import Neighbours
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "ood_scores"

#: Share flagged when it is not set and too few images are there to estimate it.
DEFAULT_OOD_FRACTION = 0.10


@dataclass(frozen=True)
class OodScoresConfig:
    k: int = 10  # neighbours in the mean cosine kNN distance (at most neighbours.k)
    # Share of images flagged as out of distribution; None estimates it from the refined
    # scores (a 3- or 4-component mixture, its upper components flagged). A fixed share drops
    # clean images when there is less junk and keeps junk when there is more.
    fraction: float | None = None
    # The seed score. "knn_distance": mean cosine distance to the k nearest neighbours;
    # "label_entropy": entropy of the given labels of the label_k nearest neighbours (catches
    # dense clusters of junk that carry random labels, which are near each other and so look
    # ordinary to the distance).
    # "auto": label_entropy when every class has at least 2 * label_k given images (enough for
    # a neighbourhood's labels to mean something), else knn_distance (with fewer, a neighbourhood
    # mixes classes and label entropy ranks the OOD images worse than the distance).
    method: Literal["auto", "knn_distance", "label_entropy"] = "auto"
    label_k: int = 50  # neighbours whose given labels the label entropy reads (at most neighbours.k)
    # Self-training rounds that sharpen the score: a linear model learns to tell the top
    # refine_share of the ranking from its bottom refine_in_share. 0 keeps the seed score.
    refine_rounds: int = 3
    # Share of the ranking's top taken as out of distribution in each round. Small: a larger
    # set than the true OOD share is partly clean images, and where there is more junk a small
    # share loses nothing.
    refine_share: float = 0.025
    refine_in_share: float = 0.7  # share of the ranking's bottom taken as in distribution; wide, as most of a set is


@dataclass(frozen=True)
class OodScores:
    """Out-of-distribution score and flag per usable image."""

    path: str  # CSV: id, score, flag, rank
    raw_version: str
    k: int
    n_flagged: int
    threshold: float
    method: str = "knn_distance"  # the seed score actually used ("auto" resolved)
    fraction: float = 0.10  # the share flagged
    estimated: bool = False  # whether that share was estimated from the scores


def run(config: OodScoresConfig, ctx: RunContext, *, raw_images: RawImages,
        embeddings: Embeddings, neighbours: Neighbours) -> OodScores:
    return score_outliers(raw_images, embeddings, neighbours, ctx.folder(NAME), config)


def score_outliers(
    raw: RawImages, embeddings: Embeddings, neighbours: Neighbours, out_dir: str | Path,
    params: OodScoresConfig,
) -> OodScores:
    """Score each image (kNN distance or neighbour-label entropy, then self-training); flag the top."""
    from animal_assets.core import ood
    from animal_assets.core.stages.neighbours import read

    check_aligned(raw, embeddings, neighbours)
    _, manifest = load_raw_images(raw, mmap=True)  # the manifest only; pixels stay on disk
    features = np.load(embeddings.path)
    given = manifest["given"].to_numpy(dtype=np.int64)
    method = params.method
    if method == "auto":
        sizes = np.bincount(given, minlength=raw.num_classes)
        method = "label_entropy" if sizes.min() >= 2 * params.label_k else "knn_distance"
    if method == "label_entropy":
        _, indices = read(neighbours, params.label_k, reader="ood_scores (label_k)")
        scores = ood.neighbour_label_entropy(indices, given, num_classes=raw.num_classes)
    else:
        distances, _ = read(neighbours, params.k, reader="ood_scores (k)")
        scores = ood.mean_distance(distances)
    if params.refine_rounds:
        from animal_assets.core import ood_refine

        scores = ood_refine.self_train(features, scores, rounds=params.refine_rounds,
                                       out_share=params.refine_share,
                                       in_share=params.refine_in_share)
    fraction = params.fraction
    if fraction is None:
        fraction = (ood.estimate_outlier_share(scores) if len(scores) >= ood.MIN_IMAGES_TO_ESTIMATE
                    else DEFAULT_OOD_FRACTION)
    flags = ood.flag_outliers(scores, fraction=fraction)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    table = pd.DataFrame(
        {"id": manifest["id"].to_numpy(), "score": scores, "flag": flags, "rank": rank}
    )
    path = Path(out_dir) / "ood_scores.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    threshold = float(scores[flags].min()) if flags.any() else float("inf")
    return OodScores(
        path=str(path), raw_version=raw_version(raw), k=params.k, n_flagged=int(flags.sum()),
        threshold=threshold, method=method, fraction=float(fraction),
        estimated=params.fraction is None,
    )


def read_flags(scores: OodScores) -> np.ndarray:
    """(N,) bool: the images flagged as out of distribution."""
    return pd.read_csv(scores.path)["flag"].to_numpy(dtype=bool)


def describe(scores: OodScores, ctx: RunContext, *, raw_images: RawImages, **_) -> dict:
    from animal_assets.core import media, plots

    table = pd.read_csv(scores.path)
    images, manifest = load_raw_images(raw_images, mmap=True)
    names = ctx.names(raw_images.num_classes)
    pictures = Pictures(Path(scores.path).parent)
    pictures.add("gallery_most_outlying", "most_outlying.jpg", media.outlier_gallery(
        images, table, manifest["given"].to_numpy(), names,
    ), alt="most outlying images", caption="rank and score, given label, id")
    pictures.add("plot_scores", "scores.png", plots.score_histogram(
        table["score"].to_numpy(), scores.threshold, title="outlier scores",
    ), alt="histogram of outlier scores")
    return {
        "method": scores.method, "k": scores.k, "n_flagged": scores.n_flagged,
        "share_flagged": float(round(scores.fraction, 4)),
        "share": "estimated from the scores" if scores.estimated else "fixed by the config",
        "threshold": float(round(scores.threshold, 5)),
        "most_outlying": Table(table.sort_values("rank")[["id", "score"]], 15),
        **pictures.entries(),
        "scores_file": FileRef(scores.path),
    }

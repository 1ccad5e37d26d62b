"""Stage ``neighbours``: each image's nearest neighbours by the cosine similarity of the encoder's
head features, searched once for the stages that read them: ``ood_scores`` (the neighbours'
distances or given labels) and ``near_duplicates`` (the closest few as candidate near-copies).
The search is exact (:mod:`animal_assets.core.knn`) up to ``approximate_above`` images and
approximate above (:mod:`animal_assets.core.ann`, faiss's inverted-file index of product-quantised
codes, re-ranked exactly)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from animal_assets.core.atomic import save_npy
from animal_assets.core.ingest import RawImages
from animal_assets.core.stages.base import FileRef, RunContext, Table
from animal_assets.core.stages.embeddings import Embeddings, head_features
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "neighbours"


@dataclass(frozen=True)
class NeighboursConfig:
    # Nearest neighbours kept per image (fewer where the input has fewer other images). The
    # stages that read them use the first ones: ood_scores its k or label_k, near_duplicates
    # its k; each must be at most this.
    k: int = 50
    # "exact" compares every pair of images (N x N products); "approximate" searches faiss's
    # inverted-file index of 4-bit codes, nprobe of its cells per image (a neighbour in another
    # cell is missed), and re-ranks the codes' short list exactly; "auto" is exact up to
    # approximate_above images and approximate above.
    method: Literal["auto", "exact", "approximate"] = "auto"
    approximate_above: int = 100_000  # images; the exact search's time grows with N squared
    nprobe: int = 96  # cells each image's approximate search reads; more is slower and closer to exact
    seed: int = 0  # the approximate index's k-means


@dataclass(frozen=True)
class Neighbours:
    """The k nearest neighbours of every usable image of :class:`RawImages` (same order)."""

    indices_path: str  # (N, k) int64 .npy: row indices, nearest first, ties to the lower index
    distances_path: str  # (N, k) float32 .npy: cosine distances 1 - cos, ascending along a row
    raw_version: str
    k: int  # neighbours per image as stored (the config's k, or N - 1 where that is smaller)
    seconds: float
    method: str = "exact"  # the search that ran ("auto" resolved)


def run(config: NeighboursConfig, ctx: RunContext, *, raw_images: RawImages,
        embeddings: Embeddings) -> Neighbours:
    return find_neighbours(raw_images, embeddings, ctx.folder(NAME), config, device=ctx.device)


def find_neighbours(raw: RawImages, embeddings: Embeddings, out_dir: str | Path,
                    config: NeighboursConfig, *, device: str = "cpu") -> Neighbours:
    """Search the head features' nearest neighbours of every image and store them."""
    from animal_assets.core.knn import knn

    if config.k < 1:
        raise ValueError(f"neighbours: k must be at least 1, got {config.k}")
    if config.method not in ("auto", "exact", "approximate"):
        raise ValueError(f"neighbours: method must be auto, exact or approximate, got {config.method!r}")
    if config.nprobe < 1:
        raise ValueError(f"neighbours: nprobe must be at least 1, got {config.nprobe}")
    check_aligned(raw, embeddings)
    # a copy of the head columns only: the rest of the matrix stays on disk
    head = np.array(head_features(np.load(embeddings.path, mmap_mode="r"), embeddings), dtype=np.float32)
    n = len(head)
    k = min(config.k, n - 1)
    method = config.method
    if method == "auto":
        method = "approximate" if n > config.approximate_above else "exact"
    start = time.perf_counter()
    if k >= 1 and method == "approximate":
        from animal_assets.core.ann import approximate_knn

        distances, indices = approximate_knn(head, k=k, nprobe=config.nprobe, seed=config.seed,
                                             overwrite=True)  # head is this stage's own copy
    elif k >= 1:
        distances, indices = knn(head, k=k, device=device)
    else:  # a single image has no neighbour
        distances, indices = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int64)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.npy" for name in ("indices", "distances")}
    save_npy(paths["indices"], indices.astype(np.int64, copy=False))
    save_npy(paths["distances"], distances.astype(np.float32, copy=False))
    return Neighbours(indices_path=str(paths["indices"]), distances_path=str(paths["distances"]),
                      raw_version=raw_version(raw), k=max(k, 0), seconds=seconds, method=method)


def read(neighbours: Neighbours, k: int, *, reader: str) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` neighbours of every image: ``(distances, indices)``, each (N, k).

    ``reader`` names the stage that asks, for the message when fewer were stored.
    """
    distances = np.load(neighbours.distances_path, mmap_mode="r")
    indices = np.load(neighbours.indices_path, mmap_mode="r")
    if k > neighbours.k:
        n = len(indices)
        if neighbours.k == n - 1:
            raise ValueError(f"{reader}: needs {k} neighbours per image, more than the other "
                             f"{n - 1} images of the input")
        raise ValueError(f"{reader}: needs {k} neighbours per image but the neighbours asset "
                         f"holds {neighbours.k}; set neighbours.k to at least {k}")
    distances, indices = distances[:, :k], indices[:, :k]
    return np.ascontiguousarray(distances), np.ascontiguousarray(indices)


def describe(neighbours: Neighbours, ctx: RunContext, **_) -> dict:
    distances = np.load(neighbours.distances_path, mmap_mode="r")
    rows = []
    for rank in sorted({1, min(5, neighbours.k), min(10, neighbours.k), neighbours.k} - {0}):
        sim = 1.0 - np.asarray(distances[:, rank - 1], dtype=np.float64)
        q = np.quantile(sim, [0.01, 0.5, 0.99]) if len(sim) else [np.nan] * 3
        rows.append({"neighbour": rank, "similarity_p1": round(float(q[0]), 4),
                     "similarity_median": round(float(q[1]), 4),
                     "similarity_p99": round(float(q[2]), 4)})
    return {
        "k": neighbours.k,
        "n": int(distances.shape[0]),
        "method": neighbours.method,
        "search_seconds": round(neighbours.seconds, 2),
        "cosine_similarity_by_rank": Table(pd.DataFrame(rows), len(rows)),
        "indices_file": FileRef(neighbours.indices_path),
    }

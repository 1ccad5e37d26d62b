"""Approximate cosine k-nearest neighbours, for inputs where the exact search's N x N products
dominate the graph.

faiss's inverted-file index with product-quantised codes, searched with its fast-scan kernels,
on the unit-normalised rows, inner product as the similarity; then an exact re-ranking. K-means
(spherical, seeded) cuts the rows into ``nlist`` cells; each row is stored in its cell as a
code of 4 bits per 4 feature values (``d / 2`` bytes: 160 for 1,280 values), and each query
reads the codes of the ``nprobe`` cells whose centres are most similar to it. The codes give
the approximate similarities of a short list of candidates (``SHORT_LIST``, at least twice k),
whose exact inner products (a flat copy of the rows) then pick and order the k. A neighbour is
missed when it lies in a cell that was not probed, or when the codes rank it below that short
list. Reading 160-byte codes instead of 5 KiB rows is what makes a million rows a search of
minutes on two cores rather than hours (benchmarks/RESULTS.md). Rows whose probed cells hold
fewer than k other rows get their neighbours from an exact pass over all rows, so every row
has k.

The result has the exact search's layout (:func:`animal_assets.core.knn.knn`): distances
``1 - cos`` ascending along each row, a row never its own neighbour, equal distances ordered by
index. For a given seed and features it is the same on every run and every thread count. What
it measures against the exact search (recall, time, memory) is in benchmarks/RESULTS.md.
"""
from __future__ import annotations

import math

import numpy as np

#: Cells each query searches, unless the caller says otherwise.
DEFAULT_NPROBE = 96
#: Rows per k-means cell the index is trained on (a sample drawn with the seed); the k-means
#: costs this x nlist^2 x D products per iteration, the search itself far more.
TRAIN_ROWS_PER_CELL = 64
#: Candidates per query that the codes pass on to the exact re-ranking (at least 2 x (k + 1)).
SHORT_LIST = 256
#: Feature values per 4-bit code (faiss's fast-scan product quantiser).
VALUES_PER_CODE = 4
#: Rows per batch of queries (bounds the memory of one batch's results).
_QUERY_BATCH = 65_536


def cells_for(n: int) -> int:
    """The number of k-means cells for ``n`` rows: about 4 x sqrt(n), at least 39 rows per cell
    (faiss's floor for a reliable k-means), at least 1."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39))


def approximate_knn(
    features: np.ndarray,
    *,
    k: int = 10,
    nprobe: int = DEFAULT_NPROBE,
    nlist: int | None = None,
    seed: int = 0,
    overwrite: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Approximate cosine k-nearest neighbours of every row among the other rows.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        One embedding per row; N must exceed k. All-zero rows have similarity 0 to everything.
    k : int
        Neighbours per row.
    nprobe : int
        Cells searched per query (at most ``nlist``); more is slower and closer to exact.
    nlist : int, optional
        K-means cells (default :func:`cells_for`).
    seed : int
        Seed of the k-means (its initial centres and its training sample).
    overwrite : bool
        Normalise ``features`` in place when it is a C-contiguous float32 array, instead of a
        copy (one N x D array less in memory; the re-ranking holds another, the codes an
        eighth of one).

    Returns
    -------
    distances, indices : np.ndarray, shape (N, k)
        In the layout of :func:`animal_assets.core.knn.knn`.
    """
    import faiss

    x = np.asarray(features)
    if not (overwrite and x.dtype == np.float32 and x.flags.c_contiguous and x.flags.writeable):
        x = np.array(x, dtype=np.float32, order="C")  # normalised in place below
    if x.ndim != 2:
        raise ValueError(f"ann.py: features must be 2-D (N, D), got shape {x.shape}")
    n, d = x.shape
    if not 1 <= k < n:
        raise ValueError(f"ann.py: k must lie in 1..N-1 = {n - 1}, got {k}")
    if nprobe < 1:
        raise ValueError(f"ann.py: nprobe must be at least 1, got {nprobe}")
    if not np.isfinite(x).all():
        raise ValueError("ann.py: features contain NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    nlist = cells_for(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"ann.py: nlist must lie in 1..N = {n}, got {nlist}")

    # the codes take 4 values each: zero columns pad the rows to a multiple of 4 (no product moves)
    width = -(-d // VALUES_PER_CODE) * VALUES_PER_CODE
    if width != d:
        x = np.pad(x, ((0, 0), (0, width - d)))
    quantizer = faiss.IndexFlatIP(width)
    coded = faiss.IndexIVFPQFastScan(quantizer, width, nlist, width // VALUES_PER_CODE, 4,
                                     faiss.METRIC_INNER_PRODUCT)
    coded.cp.seed = seed
    coded.cp.spherical = True  # centres on the unit sphere, as the rows are
    coded.cp.max_points_per_centroid = TRAIN_ROWS_PER_CELL
    coded.nprobe = min(nprobe, nlist)
    index = faiss.IndexRefineFlat(coded)  # exact inner products of the codes' short list
    index.k_factor = max(SHORT_LIST / (k + 1), 2.0)
    index.train(x)
    index.add(x)

    sims = np.empty((n, k + 1), dtype=np.float32)
    found = np.empty((n, k + 1), dtype=np.int64)
    for start in range(0, n, _QUERY_BATCH):
        stop = min(start + _QUERY_BATCH, n)
        sims[start:stop], found[start:stop] = index.search(x[start:stop], k + 1)
    del index, coded, quantizer

    # Rows whose probed cells held too few rows (faiss pads with -1): an exact pass for them.
    short = np.flatnonzero((found < 0).any(axis=1))
    for start in range(0, len(short), 1024):
        rows = short[start:start + 1024]
        block = x[rows] @ x.T
        top = np.argsort(-block, axis=1, kind="stable")[:, :k + 1]
        found[rows] = top
        sims[rows] = np.take_along_axis(block, top, axis=1)

    # Leave each row out of its own list: where it was found, drop it; where a copy at the same
    # similarity pushed it past the list's end, drop the last entry instead.
    is_self = found == np.arange(n)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.ones((n, k + 1), dtype=bool)
    keep[np.arange(n), drop] = False
    sims, found = sims[keep].reshape(n, k), found[keep].reshape(n, k)
    distances = np.clip(1.0 - sims, 0.0, 2.0).astype(np.float32)
    order = np.lexsort((found, distances), axis=-1)
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(found, order, axis=1)

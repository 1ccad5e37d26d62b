"""A 2-D map of the image features for a person to look at: t-SNE of a seeded sample.

The sample keeps every image the cleaning acted on (relabelled or dropped) up to half of its
size and fills the rest with a seeded sample of the kept ones, so the map shows where the
changes sit among the classes. The features are reduced to 50 principal components first, and
t-SNE runs on one thread so that the same input gives the same map.
"""
from __future__ import annotations

import numpy as np

#: Points on the map: t-SNE takes about 2 s for 1,000 on one core.
MAX_POINTS = 1000
PCA_DIMS = 50
#: t-SNE iterations: the first 250 are its early exaggeration; the map is settled by 500.
MAX_ITER = 500


def sample_rows(acted: np.ndarray, *, max_points: int = MAX_POINTS, seed: int = 0) -> np.ndarray:
    """Sorted row indices: the rows with ``acted`` true first (at most half of ``max_points``,
    a seeded sample beyond that), filled up with a seeded sample of the others."""
    acted = np.asarray(acted, dtype=bool)
    rng = np.random.default_rng(seed)
    marked, others = np.flatnonzero(acted), np.flatnonzero(~acted)
    if len(acted) <= max_points:
        return np.arange(len(acted))
    take_marked = min(len(marked), max_points // 2)
    take_others = min(len(others), max_points - take_marked)
    take_marked = min(len(marked), max_points - take_others)
    picked = [rng.choice(marked, take_marked, replace=False),
              rng.choice(others, take_others, replace=False)]
    return np.sort(np.concatenate(picked))


def tsne_map(features: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """(n, 2) t-SNE coordinates of ``features`` (n, D), after PCA to at most 50 dimensions."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    x = np.asarray(features, dtype=np.float32)
    n = len(x)
    if n < 5:
        raise ValueError(f"projection.py: a map needs at least 5 images, got {n}")
    with threadpool_limits(1):
        x = x - x.mean(axis=0)
        dims = min(PCA_DIMS, n - 1, x.shape[1])
        x = PCA(dims, svd_solver="full").fit_transform(x)
        perplexity = float(min(30.0, (n - 1) / 3))
        return TSNE(2, init="pca", random_state=seed, perplexity=perplexity,
                    max_iter=MAX_ITER).fit_transform(x)

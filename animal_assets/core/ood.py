"""Out-of-distribution scores from image embeddings: exact cosine k-nearest neighbours.

An image whose nearest neighbours in feature space are far away is unlike the rest of the
dataset (a person, a car, text in an animal dataset), so the mean cosine distance to its ``k``
nearest neighbours serves as its outlier score.

The neighbour search is exact and blocked: the unit-normalised feature matrix is cut into
row blocks, each pair of blocks (i <= j) is multiplied once and the product serves the queries
of both blocks (cosine similarity is symmetric), so memory stays at ``block_size ** 2`` floats
instead of N x N. Neighbours are ordered by distance, then by index, so equal distances
(e.g. byte-identical images) always resolve the same way.

On the CPU the product dominates the cost at D = 1,280, so ``dims`` can first project the
unit-normalised features onto their top principal axes (:func:`project_features`); the search is
then exact on the projected features, which only approximate the original cosine distances.
Directions that only outliers use are the first to go, so the OOD AUROC drops with ``dims``
(``benchmarks/bench_ood_dims.py`` measures by how much); the default keeps all D.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from animal_assets.core.embed import resolve_device


def _check_features(features: np.ndarray, k: int, block_size: int) -> None:
    if not isinstance(features, np.ndarray):
        raise TypeError(f"ood.py: features must be a numpy array, got {type(features).__name__}")
    if features.ndim != 2:
        raise ValueError(f"ood.py: features must be 2-D (N, D), got shape {features.shape}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"ood.py: k must be a positive int, got {k!r}")
    if features.shape[0] < k + 1:
        raise ValueError(
            f"ood.py: need more than k={k} rows to find k neighbours besides each point itself, "
            f"got N={features.shape[0]}"
        )
    if not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"ood.py: block_size must be a positive int, got {block_size!r}")
    if not np.isfinite(features).all():
        raise ValueError("ood.py: features contain NaN or infinity")


def _lex_best(vals: torch.Tensor, idx: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row, the k entries with the highest similarity, ties going to the lower index.

    (similarity, index) pairs are packed into one int64 key that orders like the pair, so a
    single ``topk`` on distinct keys gives the order without any tie ambiguity.
    """
    # Adding +0.0 turns -0.0 into +0.0 so both zeros share one bit pattern.
    bits = (vals + 0.0).view(torch.int32).to(torch.int64)
    # Float bit patterns order like sign-magnitude integers; flipping the magnitude bits of
    # negative values makes them order like two's-complement integers.
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    key = bits * (1 << 32) + ((1 << 31) - 1 - idx)
    pos = torch.topk(key, k, dim=1).indices
    return vals.gather(1, pos), idx.gather(1, pos)


def _block_best(sims: torch.Tensor, offset: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of a (b, c) similarity block, the best min(k, c) columns as global indices.

    ``topk`` picks arbitrarily among equal values, which only matters when the k-th and
    (k+1)-th values are equal; those rows are redone with a stable full sort.
    """
    c = sims.shape[1]
    kk = min(k, c)
    vals, cols = torch.topk(sims, min(kk + 1, c), dim=1)
    if kk < c:
        tied = torch.nonzero(vals[:, kk - 1] == vals[:, kk]).flatten()
        vals, cols = vals[:, :kk].clone(), cols[:, :kk].clone()
        if tied.numel():
            exact = torch.sort(sims[tied], dim=1, descending=True, stable=True)
            vals[tied], cols[tied] = exact.values[:, :kk], exact.indices[:, :kk]
    return vals, cols + offset


def _check_dims(dims: int | None, n_features: int) -> None:
    if dims is None:
        return
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= n_features:
        raise ValueError(
            f"ood.py: dims must be None or an int in 1..D={n_features}, got {dims!r}"
        )


def project_features(
    features: np.ndarray,
    dims: int,
    *,
    device: str | torch.device = "auto",
) -> np.ndarray:
    """Unit-normalised rows projected onto their top ``dims`` principal axes, re-normalised.

    The axes are the leading eigenvectors (``torch.linalg.eigh``, float64) of the D x D
    second-moment matrix ``X.T @ X / N`` of the unit rows ``X``: the uncentred covariance. Cosine
    similarity is an uncentred inner product, and these axes give the best rank-``dims``
    approximation of the cosine matrix ``X @ X.T``; centring would instead compare directions
    around the mean, which on EfficientNet features turned the demo's OOD AUROC from 0.98 to 0.39.
    Each axis's sign is fixed so that its largest-magnitude entry is positive, which makes the
    output independent of the eigen-solver's sign choice. All-zero rows stay all-zero.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        One embedding per row.
    dims : int
        Number of axes kept, 1..D.
    device : str or torch.device
        ``"auto"`` picks CUDA when available.

    Returns
    -------
    np.ndarray, float32, shape (N, dims)
        Rows of unit length (or zero).
    """
    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise ValueError(
            f"ood.py: features must be a 2-D numpy array (N, D), got {getattr(features, 'shape', type(features))}"
        )
    if not np.isfinite(features).all():
        raise ValueError("ood.py: features contain NaN or infinity")
    _check_dims(dims, features.shape[1])
    dev = resolve_device(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=dev)
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
            second_moment = (x.T @ x).double() / max(len(x), 1)
            _, vectors = torch.linalg.eigh(second_moment)
            axes = vectors[:, -dims:].flip(1)
            peak = axes.abs().argmax(dim=0)
            axes = axes * torch.sign(axes[peak, torch.arange(dims, device=dev)])
            y = x @ axes.float()
            y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min(1e-12)
            return y.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def knn(
    features: np.ndarray,
    *,
    k: int = 10,
    block_size: int = 4096,
    device: str | torch.device = "auto",
    dims: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact cosine k-nearest neighbours of every row among the other rows.

    A row is never its own neighbour; an identical copy of it elsewhere is (at distance 0).
    All-zero rows have similarity 0 (distance 1) to everything.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        One embedding per row; N must exceed k.
    k : int
        Neighbours per row.
    block_size : int
        Rows per block; peak extra memory is about ``block_size ** 2`` float32 values.
    device : str or torch.device
        ``"auto"`` picks CUDA when available. Computation is float32 on every device.
    dims : int, optional
        When given, the search runs on :func:`project_features` ``(features, dims)`` instead of
        the features themselves: exact on those, approximate for the original distances.

    Returns
    -------
    distances : np.ndarray, float32, shape (N, k)
        Cosine distances ``1 - cos`` (between projected rows when ``dims`` is given),
        ascending along each row.
    indices : np.ndarray, int64, shape (N, k)
        Row indices of the neighbours; among equal distances the lower index comes first.
    """
    _check_features(features, k, block_size)
    _check_dims(dims, features.shape[1])
    dev = resolve_device(device)
    if dims is not None:
        features = project_features(features, dims, device=dev)
    # TF32 matmuls (10-bit mantissa), if some other code enabled them process-wide, would
    # reorder near neighbours; keep the product in full float32 for this call.
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        return _blocked_knn(features, k, block_size, dev)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _blocked_knn(
    features: np.ndarray, k: int, block_size: int, dev: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    n = features.shape[0]
    with torch.inference_mode():
        x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=dev)
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
        best_vals = torch.full((n, k), -math.inf, device=dev)
        best_idx = torch.full((n, k), -1, dtype=torch.int64, device=dev)
        starts = list(range(0, n, block_size))
        for i, si in enumerate(starts):
            ei = min(si + block_size, n)
            for sj in starts[i:]:
                ej = min(sj + block_size, n)
                sims = x[si:ei] @ x[sj:ej].T
                if si == sj:
                    sims.fill_diagonal_(-math.inf)
                updates = [(si, ei, sims, sj)]
                if si != sj:
                    updates.append((sj, ej, sims.T.contiguous(), si))
                for qs, qe, block, key_offset in updates:
                    vals, idx = _block_best(block, key_offset, k)
                    best_vals[qs:qe], best_idx[qs:qe] = _lex_best(
                        torch.cat([best_vals[qs:qe], vals], dim=1),
                        torch.cat([best_idx[qs:qe], idx], dim=1),
                        k,
                    )
        distances = (1.0 - best_vals).clamp_min(0.0)
        return distances.cpu().numpy(), best_idx.cpu().numpy()


def knn_ood_scores(
    features: np.ndarray,
    *,
    k: int = 10,
    block_size: int = 4096,
    device: str | torch.device = "auto",
    dims: int | None = None,
) -> np.ndarray:
    """Outlier score per row: mean cosine distance to its k nearest neighbours.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
    k, block_size, device
        As in :func:`knn`.
    dims : int, optional
        Search on the top ``dims`` principal axes (see :func:`knn`); None keeps all D.

    Returns
    -------
    np.ndarray, float32, shape (N,)
        Higher means more outlying; values lie in [0, 2].
    """
    distances, _ = knn(features, k=k, block_size=block_size, device=device, dims=dims)
    return distances.mean(axis=1, dtype=np.float64).astype(np.float32)


def neighbour_label_entropy(
    indices: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
) -> np.ndarray:
    """Outlier score per row: entropy of the given labels of its nearest neighbours.

    Out-of-distribution images that form dense clusters of their own (e.g. vehicles in an animal
    set) sit close to each other, so their kNN distance is small; but they carry labels drawn at
    random, so their neighbours disagree on the label, while an in-distribution image's
    neighbours agree up to the label noise between look-alike classes.

    Parameters
    ----------
    indices : np.ndarray, int, shape (N, k)
        Neighbour indices, e.g. from :func:`knn`.
    labels : np.ndarray, int, shape (N,)
        Given label of every row, in 0..num_classes-1.
    num_classes : int
        K.

    Returns
    -------
    np.ndarray, float32, shape (N,)
        Entropy in nats, in [0, log(min(k, K))]; higher means more outlying.
    """
    indices = np.asarray(indices)
    labels = np.asarray(labels)
    if indices.ndim != 2 or labels.shape != (indices.shape[0],):
        raise ValueError(f"ood.neighbour_label_entropy: expected indices (N, k) and labels (N,), got "
                         f"{indices.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"ood.neighbour_label_entropy: labels must lie in 0..{num_classes - 1}")
    votes = np.zeros((indices.shape[0], num_classes), dtype=np.float64)
    np.add.at(votes, (np.repeat(np.arange(indices.shape[0]), indices.shape[1]), labels[indices].ravel()), 1.0)
    p = votes / max(indices.shape[1], 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    return entropy.astype(np.float32)


def flag_outliers(
    scores: np.ndarray,
    *,
    fraction: float | None = None,
    threshold: float | None = None,
) -> np.ndarray:
    """Mark the most outlying rows, by share or by score threshold (give exactly one).

    Parameters
    ----------
    scores : np.ndarray, shape (N,)
        Outlier scores, higher = more outlying.
    fraction : float in [0, 1], optional
        Flag the ``floor(fraction * N)`` highest scores; among equal scores the lower
        index is flagged first.
    threshold : float, optional
        Flag every score strictly above it.

    Returns
    -------
    np.ndarray, bool, shape (N,)
    """
    scores = np.asarray(scores)
    if scores.ndim != 1:
        raise ValueError(f"ood.py: scores must be 1-D (N,), got shape {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("ood.py: scores contain NaN")
    if (fraction is None) == (threshold is None):
        raise ValueError("ood.py: give exactly one of fraction and threshold")
    if threshold is not None:
        return scores > threshold
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"ood.py: fraction must lie in [0, 1], got {fraction!r}")
    # The small tolerance keeps e.g. 0.29 * 100 = 28.999999999999996 from flooring to 28.
    count = min(len(scores), math.floor(fraction * len(scores) + 1e-9))
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    flags = np.zeros(len(scores), dtype=bool)
    flags[order[:count]] = True
    return flags

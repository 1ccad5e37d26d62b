"""Tests for the exact blocked cosine kNN and the kNN outlier score."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from animal_assets.core.ood import flag_outliers, knn, knn_ood_scores, neighbour_label_entropy, project_features


def brute_force_knn(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: float64 cosine distances, self excluded, ties to the lower index."""
    x = features.astype(np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    dist = 1.0 - x @ x.T
    np.fill_diagonal(dist, np.inf)
    cols = np.arange(len(x))
    idx = np.stack([np.lexsort((cols, row))[:k] for row in dist])
    return np.take_along_axis(dist, idx, axis=1), idx


def assert_same_neighbours(got_d, got_i, ref_d, ref_i, tol=1e-5):
    """Distances agree to float32 precision; indices agree except where float32 rounding
    can legitimately swap two neighbours whose reference distances differ by < tol."""
    np.testing.assert_allclose(got_d, ref_d, atol=tol)
    assert np.all(np.diff(got_d, axis=1) >= 0)
    mismatch = got_i != ref_i
    if mismatch.any():
        # A swapped index must still be a neighbour at (nearly) the same distance.
        assert np.all(np.abs(got_d[mismatch] - ref_d[mismatch]) < tol)
        assert mismatch.mean() < 0.01


@pytest.mark.parametrize(
    "n, dim, k, block_size",
    [
        (40, 8, 1, 4096),  # one block
        (97, 16, 5, 10),  # block_size does not divide N
        (256, 32, 10, 64),  # block_size divides N
        (300, 64, 10, 299),  # last block has one row
        (50, 8, 49, 7),  # k = N - 1: every other row is a neighbour
        (123, 24, 7, 1),  # one row per block
    ],
)
def test_knn_matches_brute_force(n, dim, k, block_size):
    rng = np.random.default_rng(n * 1000 + k)
    features = rng.standard_normal((n, dim)).astype(np.float32)
    dist, idx = knn(features, k=k, block_size=block_size, device="cpu")
    assert dist.shape == idx.shape == (n, k)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    assert not np.any(idx == np.arange(n)[:, None]), "a row is its own neighbour"
    assert_same_neighbours(dist, idx, *brute_force_knn(features, k))


def exactly_tied_features(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """Rows with four entries of +-1: unit norm 2 and dot products that are multiples of
    1/4, all exact in float32, so many neighbours tie exactly."""
    features = np.zeros((n, dim), dtype=np.float32)
    for row in features:
        row[rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    return features


@pytest.mark.parametrize("block_size", [1, 7, 64, 150, 4096])
def test_knn_ties_and_duplicates_resolve_by_index(block_size):
    rng = np.random.default_rng(7)
    features = exactly_tied_features(rng, 150, 16)
    features[120:] = features[:30]  # exact duplicates
    dist, idx = knn(features, k=10, block_size=block_size, device="cpu")
    ref_d, ref_i = brute_force_knn(features, 10)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_allclose(dist, ref_d, atol=1e-6)
    # Each duplicate pair finds its twin first, at distance 0; self is never listed.
    twins = np.arange(30)
    assert np.all(idx[twins, 0] == twins + 120) and np.all(idx[twins + 120, 0] == twins)
    assert np.all(dist[twins, 0] == 0.0)
    assert not np.any(idx == np.arange(150)[:, None])


def test_knn_is_independent_of_block_size_and_deterministic():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((200, 32)).astype(np.float32)
    runs = [knn(features, k=8, block_size=b, device="cpu") for b in (13, 13, 64, 4096)]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for dist, idx in runs[2:]:
        np.testing.assert_array_equal(idx, runs[0][1])
        np.testing.assert_allclose(dist, runs[0][0], atol=1e-6)


@pytest.mark.parametrize("allow_tf32", [True, False])
def test_knn_leaves_the_tf32_setting_as_it_found_it(allow_tf32):
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = allow_tf32
    try:
        knn(np.eye(4, dtype=np.float32), k=1, device="cpu")
        assert matmul.allow_tf32 is allow_tf32
    finally:
        matmul.allow_tf32 = before


def test_knn_zero_row_is_at_distance_one():
    features = np.eye(6, dtype=np.float32)
    features[0] = 0.0
    dist, idx = knn(features, k=2, block_size=4, device="cpu")
    np.testing.assert_allclose(dist, 1.0)
    np.testing.assert_array_equal(idx[0], [1, 2])


@pytest.mark.parametrize(
    "kwargs, features, message",
    [
        ({"k": 5}, np.zeros((5, 3), np.float32), "more than k=5 rows"),
        ({"k": 0}, np.ones((5, 3), np.float32), "k must be a positive int"),
        ({"k": 2, "block_size": 0}, np.ones((5, 3), np.float32), "block_size"),
        ({}, np.ones(5, np.float32), "2-D"),
        ({"k": 1}, np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), "NaN"),
    ],
)
def test_knn_rejects_bad_input(kwargs, features, message):
    with pytest.raises(ValueError, match=message):
        knn(features, device="cpu", **kwargs)


def planted_outlier_set(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Five tight clusters of inliers on the unit sphere plus scattered random outliers."""
    rng = np.random.default_rng(seed)
    dim, per_cluster, n_out = 64, 80, 20
    centres = rng.standard_normal((5, dim))
    inliers = np.concatenate(
        [c + 0.25 * rng.standard_normal((per_cluster, dim)) for c in centres]
    )
    outliers = rng.standard_normal((n_out, dim))
    features = np.concatenate([inliers, outliers]).astype(np.float32)
    is_outlier = np.r_[np.zeros(len(inliers), bool), np.ones(n_out, bool)]
    order = rng.permutation(len(features))
    return features[order], is_outlier[order]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [5, 10])
def test_knn_ood_score_ranks_planted_outliers_first(seed, k):
    features, is_outlier = planted_outlier_set(seed)
    scores = knn_ood_scores(features, k=k, block_size=128, device="cpu")
    assert scores.shape == (len(features),) and scores.dtype == np.float32
    assert roc_auc_score(is_outlier, scores) >= 0.95
    flags = flag_outliers(scores, fraction=is_outlier.mean())
    assert (flags & is_outlier).sum() >= 0.9 * is_outlier.sum()


@pytest.mark.parametrize(
    "fraction, expected",
    [
        (0.0, []),
        (0.2, [1, 3]),  # three scores tie at 0.9: the lower indices win
        (0.3, [1, 3, 5]),
        (0.4, [1, 2, 3, 5]),  # 2 and 6 tie at 0.5: 2 wins
        (0.55, [1, 2, 3, 5, 6]),  # floor(5.5) = 5
        (1.0, list(range(10))),
    ],
)
def test_flag_outliers_fraction_breaks_ties_by_index(fraction, expected):
    scores = np.array([0.1, 0.9, 0.5, 0.9, 0.2, 0.9, 0.5, 0.3, 0.0, 0.05])
    np.testing.assert_array_equal(np.flatnonzero(flag_outliers(scores, fraction=fraction)), expected)


@pytest.mark.parametrize("fraction, n, count", [(0.29, 100, 29), (0.7, 10, 7), (0.15, 30707, 4606)])
def test_flag_outliers_fraction_count_survives_float_rounding(fraction, n, count):
    scores = np.linspace(0.0, 1.0, n)
    flags = flag_outliers(scores, fraction=fraction)
    assert flags.sum() == count
    assert flags[-count:].all()


def test_flag_outliers_threshold_is_strict():
    scores = np.array([0.1, 0.5, 0.6, 0.5])
    np.testing.assert_array_equal(flag_outliers(scores, threshold=0.5), [False, False, True, False])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"fraction": 0.1, "threshold": 0.5}, "exactly one"),
        ({"fraction": 1.5}, r"\[0, 1\]"),
    ],
)
def test_flag_outliers_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        flag_outliers(np.zeros(4), **kwargs)


@pytest.mark.parametrize(
    "n, dim, dims, k, block_size",
    [
        (120, 32, 8, 5, 4096),
        (97, 16, 16, 3, 10),  # dims = D: a rotation of the unit rows
        (300, 64, 12, 10, 64),
        (60, 24, 1, 4, 7),  # one axis: neighbours lie on a line
    ],
)
def test_knn_with_dims_is_exact_on_the_projected_features(n, dim, dims, k, block_size):
    rng = np.random.default_rng(dim * 100 + dims)
    features = (rng.standard_normal((n, dim)) + rng.standard_normal(dim)).astype(np.float32)
    projected = project_features(features, dims, device="cpu")
    dist, idx = knn(features, k=k, block_size=block_size, device="cpu", dims=dims)
    assert dist.shape == idx.shape == (n, k)
    assert_same_neighbours(dist, idx, *brute_force_knn(projected, k))
    scores = knn_ood_scores(features, k=k, block_size=block_size, device="cpu", dims=dims)
    np.testing.assert_allclose(scores, dist.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("dims", [1, 5, 20])
def test_project_features_gives_unit_rows_and_keeps_a_subspace_exactly(dims):
    rng = np.random.default_rng(dims)
    # Rows spanning only `dims` directions of a 20-d space: the top `dims` axes span them, so
    # the projection keeps every cosine similarity.
    basis = np.linalg.qr(rng.standard_normal((20, dims)))[0]
    features = (rng.standard_normal((400, dims)) @ basis.T).astype(np.float32)
    features[7] = 0.0
    projected = project_features(features, dims, device="cpu")
    assert projected.shape == (400, dims) and projected.dtype == np.float32
    np.testing.assert_allclose(np.delete(np.linalg.norm(projected, axis=1), 7), 1.0, atol=1e-5)
    assert not projected[7].any(), "an all-zero row stays all-zero"
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(projected @ projected.T, unit @ unit.T, atol=1e-4)
    np.testing.assert_array_equal(projected, project_features(features, dims, device="cpu"))


def test_project_features_at_full_dims_keeps_cosine_distances():
    rng = np.random.default_rng(11)
    features = rng.standard_normal((150, 12)).astype(np.float32)
    full = knn(features, k=6, device="cpu")
    rotated = knn(features, k=6, device="cpu", dims=12)
    np.testing.assert_allclose(rotated[0], full[0], atol=1e-5)
    assert (rotated[1] != full[1]).mean() < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_ood_score_with_dims_still_ranks_planted_outliers_first(seed):
    features, is_outlier = planted_outlier_set(seed)
    scores = knn_ood_scores(features, k=10, block_size=128, device="cpu", dims=32)
    assert roc_auc_score(is_outlier, scores) >= 0.95


@pytest.mark.parametrize("dims", [0, 9, -1, True, 2.5, "4"])
def test_dims_rejects_bad_values(dims):
    features = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="dims must be None or an int"):
        knn(features, k=2, device="cpu", dims=dims)
    with pytest.raises(ValueError, match="dims must be None or an int"):
        project_features(features, dims, device="cpu")


def test_neighbour_label_entropy_finds_a_dense_junk_cluster_with_random_labels():
    rng = np.random.default_rng(7)
    k_classes, per_class, n_junk = 4, 150, 60
    centres = rng.standard_normal((k_classes, 32)) * 4
    inlier = np.concatenate([c + rng.standard_normal((per_class, 32)) for c in centres])
    labels = np.repeat(np.arange(k_classes), per_class)
    junk = 6 + 0.3 * rng.standard_normal((n_junk, 32))  # tighter than any class
    features = np.concatenate([inlier, junk]).astype(np.float32)
    given = np.concatenate([labels, rng.integers(0, k_classes, n_junk)])
    is_junk = np.r_[np.zeros(len(inlier), bool), np.ones(n_junk, bool)]
    _, idx = knn(features, k=20)
    entropy = neighbour_label_entropy(idx, given, num_classes=k_classes)
    assert roc_auc_score(is_junk, entropy) >= 0.95
    assert roc_auc_score(is_junk, knn_ood_scores(features, k=10)) < 0.5  # the distance misses it


def test_neighbour_label_entropy_values():
    idx = np.array([[1, 2], [0, 2], [0, 1]])
    assert np.allclose(neighbour_label_entropy(idx, np.array([0, 0, 0]), num_classes=2), 0.0)
    assert np.allclose(neighbour_label_entropy(idx, np.array([0, 1, 1]), num_classes=2)[0], 0.0)
    assert np.allclose(neighbour_label_entropy(idx, np.array([0, 1, 0]), num_classes=2)[2], np.log(2))
    with pytest.raises(ValueError, match="labels must lie"):
        neighbour_label_entropy(idx, np.array([0, 1, 2]), num_classes=2)

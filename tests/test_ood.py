"""Tests for the exact blocked cosine kNN and the kNN outlier score."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from animal_assets.core import knn as knn_module
from animal_assets.core.knn import knn
from animal_assets.core.ood import estimate_outlier_share, flag_outliers, knn_ood_scores, neighbour_label_entropy


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


# The kNN's code paths, all run on the CPU: (screen, onednn, workers). Screening with oneDNN
# products on two threads is the CPU's path, screening with torch.mm its path where oneDNN is
# missing, and the dense merge with torch.mm on one thread the path CUDA takes.
KNN_PATHS = [
    pytest.param(True, True, 2, id="screened-onednn-2-threads"),
    pytest.param(True, False, 1, id="screened-torch-mm"),
    pytest.param(False, False, 1, id="dense-torch-mm"),
]


def run_path(features, k, block_size, screen, onednn, workers=1):
    if onednn and not knn_module._onednn_available():
        pytest.skip("this PyTorch build has no oneDNN linear op")
    with knn_module._full_float32():
        return knn_module._blocked_knn(features, k, block_size, torch.device("cpu"), screen=screen,
                                onednn=onednn, workers=workers)


def lattice_features(rng: np.random.Generator, n: int, dim: int = 64) -> np.ndarray:
    """Rows with 16 entries of +-1 (unit rows of +-1/4): every cosine is a multiple of 1/16,
    exact in float32 whatever the summation order, so any exact kNN must match the reference
    bit for bit. Some rows are exact copies of others and one row is all zero."""
    features = np.zeros((n, dim), dtype=np.float32)
    for row in features:
        row[rng.choice(dim, 16, replace=False)] = rng.choice([-1.0, 1.0], 16)
    copies = rng.choice(n, n // 5, replace=False)
    features[copies] = features[rng.choice(n, n // 5)]
    features[rng.integers(n)] = 0.0
    return features


@pytest.mark.parametrize("screen, onednn, workers", KNN_PATHS)
@pytest.mark.parametrize(
    "n, k, block_size",
    [
        (37, 5, 4096),  # N smaller than one block
        (300, 10, 128),  # block_size does not divide N
        (256, 10, 64),  # block_size divides N
        (130, 3, 129),  # last block has one row
        (90, 12, 8),  # k above the rows of a block: floors stay -inf after the diagonal
        (61, 59, 16),  # k = N - 2
        (40, 39, 7),  # k = N - 1: every other row is a neighbour
    ],
)
def test_every_knn_path_equals_brute_force_exactly(n, k, block_size, screen, onednn, workers):
    rng = np.random.default_rng(n * 100 + k)
    features = lattice_features(rng, n)
    dist, idx = run_path(features, k, block_size, screen, onednn, workers)
    ref_d, ref_i = brute_force_knn(features, k)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d.astype(np.float32))
    assert not np.any(idx == np.arange(n)[:, None]), "a row is its own neighbour"
    if k == n - 1:
        np.testing.assert_array_equal(np.sort(idx, axis=1),
                                      [np.delete(np.arange(n), i) for i in range(n)])


@pytest.mark.parametrize("screen, onednn, workers", KNN_PATHS)
@pytest.mark.parametrize("n, dim, k, block_size", [(333, 200, 10, 64), (200, 1280, 7, 4096), (150, 48, 20, 37)])
def test_every_knn_path_matches_brute_force_on_float_data(n, dim, k, block_size, screen, onednn, workers):
    rng = np.random.default_rng(dim + k)
    centres = rng.standard_normal((6, dim))
    features = np.abs(centres[rng.integers(0, 6, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    dist, idx = run_path(features, k, block_size, screen, onednn, workers)
    assert dist.dtype == np.float32 and idx.dtype == np.int64
    assert_same_neighbours(dist, idx, *brute_force_knn(features, k), tol=2e-6)


def test_screened_path_merges_few_entries_and_falls_back_on_mass_ties(monkeypatch):
    calls = {"sparse": 0, "entries": 0}
    merge_sparse = knn_module._merge_sparse

    def counting(best_vals, best_idx, rows, vals, idx, k):
        calls["sparse"] += 1
        calls["entries"] += rows.numel()
        merge_sparse(best_vals, best_idx, rows, vals, idx, k)

    monkeypatch.setattr(knn_module, "_merge_sparse", counting)
    rng = np.random.default_rng(5)
    features = (rng.standard_normal((8, 32))[rng.integers(0, 8, 1024)]
                + 0.5 * rng.standard_normal((1024, 32))).astype(np.float32)
    dist, idx = knn(features, k=3, block_size=256, device="cpu")
    assert_same_neighbours(dist, idx, *brute_force_knn(features, 3), tol=2e-6)
    # Six off-diagonal products, seen from both sides: 786,432 similarities, of which the
    # screen lets through a few per query.
    assert calls["sparse"] > 0 and calls["entries"] < 0.05 * 6 * 256 * 256 * 2
    # Three distinct rows: every row ties with a third of the others, so the screen passes
    # whole blocks and the dense merge takes over; ties still go to the lower index.
    calls["sparse"] = 0
    features = np.tile(np.eye(3, 8, dtype=np.float32), (70, 1))
    dist, idx = knn(features, k=5, block_size=32, device="cpu")
    twins = [np.flatnonzero(np.arange(210) % 3 == i % 3) for i in range(210)]
    np.testing.assert_array_equal(idx, [t[t != i][:5] for i, t in enumerate(twins)])
    np.testing.assert_array_equal(dist, 0.0)
    assert calls["sparse"] == 0


@pytest.mark.parametrize("shape", [(150, 190), (130, 203), (5, 300), (300, 5)])
@pytest.mark.parametrize("transposed", [False, True])
def test_screen_returns_every_entry_at_or_above_the_floor(shape, transposed):
    rng = np.random.default_rng(shape[0] * shape[1])
    # Multiples of 1/8, so entries tie with each other and with their row's floor.
    block = torch.from_numpy(np.round(rng.standard_normal(shape) * 4).astype(np.float32) / 8)
    sims = block.T if transposed else block
    floor = sims.amax(dim=1) - 0.125 * (torch.arange(sims.shape[0]) % 3 == 0)
    rows, cols, vals = knn_module._screen(sims, floor) or pytest.fail("screen fell back on a sparse block")
    expected = np.argwhere(sims.numpy() >= floor.numpy()[:, None])
    got = np.stack([rows.numpy(), cols.numpy()], axis=1)
    np.testing.assert_array_equal(got[np.lexsort(got.T[::-1])], expected)
    np.testing.assert_array_equal(vals.numpy(), sims.numpy()[rows.numpy(), cols.numpy()])
    # With no floor yet every entry passes: whole groups pass and the dense merge takes over.
    no_floor = torch.full_like(floor, -math.inf)
    if sims.shape[1] >= knn_module._FOLD:
        assert knn_module._screen(sims, no_floor) is None
    else:
        assert len(knn_module._screen(sims, no_floor)[0]) == sims.numel()


def test_knn_keeps_full_float32_and_restores_matmul_settings():
    onednn = getattr(torch.backends.mkldnn, "matmul", None)
    if onednn is None:
        pytest.skip("this PyTorch has no per-backend float32 precision setting")
    features = lattice_features(np.random.default_rng(2), 120)
    before = onednn.fp32_precision
    onednn.fp32_precision = "bf16"
    try:
        dist, idx = knn(features, k=6, block_size=50, device="cpu")
        assert onednn.fp32_precision == "bf16"
    finally:
        onednn.fp32_precision = before
    ref_d, ref_i = brute_force_knn(features, 6)
    np.testing.assert_array_equal(idx, ref_i)
    np.testing.assert_array_equal(dist, ref_d.astype(np.float32))


def test_knn_threads_give_the_same_result_and_leave_the_thread_count_alone():
    rng = np.random.default_rng(9)
    features = np.abs(rng.standard_normal((700, 96))).astype(np.float32)
    threads = torch.get_num_threads()
    one = run_path(features, 8, 128, True, True, workers=1)
    three = run_path(features, 8, 128, True, True, workers=3)
    assert torch.get_num_threads() == threads
    np.testing.assert_array_equal(three[1], one[1])
    np.testing.assert_array_equal(three[0], one[0])
    assert_same_neighbours(*one, *brute_force_knn(features, 8), tol=2e-6)


def skewed_bulk_and_spread_junk(seed: int, n: int = 8000):
    """Refined-score-like values: a skewed in-distribution bulk (two Gaussians, 85 %) and junk
    whose scores spread over two Gaussians (7 % and 8 %), as seen on a CIFAR benchmark."""
    rng = np.random.default_rng(seed)
    sizes = [int(0.55 * n), int(0.30 * n), int(0.07 * n), int(0.08 * n)]
    parts = [rng.normal(-0.64, 0.30, sizes[0]), rng.normal(0.0, 0.36, sizes[1]),
             rng.normal(1.3, 0.45, sizes[2]), rng.normal(2.6, 0.6, sizes[3])]
    return np.concatenate(parts), (sizes[2] + sizes[3]) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_share_counts_junk_spread_over_two_components(seed):
    # Counting only the top component gave 0.06-0.08 here against a true 0.15.
    scores, share = skewed_bulk_and_spread_junk(seed)
    assert abs(estimate_outlier_share(scores) - share) <= 0.02


def test_outlier_share_rejects_a_one_component_mixture():
    with pytest.raises(ValueError, match="components"):
        estimate_outlier_share(np.arange(100.0), components=(1, 3))

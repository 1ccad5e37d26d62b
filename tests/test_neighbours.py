"""The neighbours stage: one search whose first columns are what a smaller search gives, read by
ood_scores and near_duplicates; exact, or faiss's inverted-file index past a size."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from animal_assets.core.ann import approximate_knn, cells_for
from animal_assets.core.knn import knn
from animal_assets.core.ood import knn_ood_scores
from animal_assets.core.stages.embeddings import Embeddings
from animal_assets.core.stages.neighbours import NeighboursConfig, find_neighbours, read
from animal_assets.core.stages.ood_scores import OodScoresConfig, score_outliers
from animal_assets.core.stages.raw_images import raw_version
from animal_assets.core.synthetic.demo import make_demo_dataset


def _features(seed: int, n: int = 300, d: int = 48) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(6, d))
    x = centres[rng.integers(0, 6, n)] + 0.6 * rng.normal(size=(n, d))
    x[7] = x[3]  # an exact copy: distance 0, tied with nothing else
    x[20:24] = x[19]  # four copies of one row: equal distances, ordered by index
    return x.astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_first_columns_of_a_larger_search_are_the_smaller_search(seed):
    x = _features(seed)
    d50, i50 = knn(x, k=50, device="cpu")
    for k in (1, 5, 10):
        dk, ik = knn(x, k=k, device="cpu")
        np.testing.assert_array_equal(i50[:, :k], ik)
        np.testing.assert_array_equal(d50[:, :k], dk)
    assert list(i50[19, :4]) == [20, 21, 22, 23] and i50[3, 0] == 7


@pytest.fixture(scope="module")
def raw_and_features(tmp_path_factory):
    from animal_assets.core.ingest import read_dataset

    tmp = tmp_path_factory.mktemp("nn")
    demo = make_demo_dataset(tmp / "demo", seed=5, size="tiny")
    raw = read_dataset(demo.dataset_dir, tmp / "raw")
    x = np.concatenate([_features(3, n=raw.n_usable), np.zeros((raw.n_usable, 16), np.float32)], axis=1)
    np.save(tmp / "features.npy", x)
    emb = Embeddings(path=str(tmp / "features.npy"), raw_version=raw_version(raw), n=len(x), dim=x.shape[1],
                     image_size=0, device="cpu", seconds=0.0, head_dim=48)
    return tmp, raw, emb, x


def test_the_stage_stores_the_head_features_neighbours(raw_and_features):
    tmp, raw, emb, x = raw_and_features
    near = find_neighbours(raw, emb, tmp / "out", NeighboursConfig(k=12))
    distances, indices = knn(np.ascontiguousarray(x[:, :48]), k=12, device="cpu")
    assert near.k == 12 and near.raw_version == emb.raw_version
    np.testing.assert_array_equal(np.load(near.indices_path), indices)
    np.testing.assert_array_equal(np.load(near.distances_path), distances)
    d5, i5 = read(near, 5, reader="test")
    np.testing.assert_array_equal(i5, indices[:, :5])
    # the outlier score from the stored neighbours is the one searched for directly
    scores = score_outliers(raw, emb, near, tmp / "ood", OodScoresConfig(
        method="knn_distance", k=10, fraction=0.1, refine_rounds=0))
    np.testing.assert_array_equal(pd.read_csv(scores.path)["score"].to_numpy(np.float32),
                                  knn_ood_scores(np.ascontiguousarray(x[:, :48]), k=10, device="cpu"))


def test_a_reader_asking_for_more_neighbours_than_stored_is_told_how(raw_and_features):
    tmp, raw, emb, _ = raw_and_features
    near = find_neighbours(raw, emb, tmp / "few", NeighboursConfig(k=8))
    with pytest.raises(ValueError, match=r"ood_scores \(k\): needs 10 neighbours per image but the "
                                         r"neighbours asset holds 8; set neighbours.k to at least 10"):
        score_outliers(raw, emb, near, tmp / "ood_few", OodScoresConfig(method="knn_distance", k=10))


def test_a_small_input_keeps_every_other_image_and_says_so(raw_and_features):
    tmp, raw, emb, _ = raw_and_features
    near = find_neighbours(raw, emb, tmp / "all", NeighboursConfig(k=10_000))
    assert near.k == raw.n_usable - 1
    with pytest.raises(ValueError, match=rf"needs {raw.n_usable} neighbours per image, more than the "
                                         rf"other {raw.n_usable - 1} images of the input"):
        read(near, raw.n_usable, reader="test")


def _clusters(seed: int, n: int = 6000, d: int = 64, centres: int = 40) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(centres, d))
    x = c[rng.integers(0, centres, n)] + 0.7 * rng.normal(size=(n, d))
    x[7] = x[3]
    x[20:24] = x[19]
    return x.astype(np.float32)


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


@pytest.mark.parametrize("seed", [0, 1])
def test_the_approximate_search_finds_nearly_every_exact_neighbour_in_the_exact_layout(seed):
    x = _clusters(seed)
    distances, indices = approximate_knn(x, k=10)
    exact_d, exact_i = knn(x, k=10, device="cpu")
    assert cells_for(len(x)) == 153 and _recall(indices, exact_i) >= 0.99
    assert indices.shape == (6000, 10) and indices.dtype == np.int64 and distances.dtype == np.float32
    assert not (indices == np.arange(len(x))[:, None]).any()  # never its own neighbour
    assert (np.diff(distances, axis=1) >= 0).all() and distances.min() >= 0.0
    # copies are found at distance 0, equal distances ordered by index, as in the exact search
    assert list(indices[19, :4]) == [20, 21, 22, 23] and indices[3, 0] == 7 and distances[3, 0] < 1e-6
    both = indices == exact_i
    np.testing.assert_allclose(distances[both], exact_d[both], atol=1e-5)


def test_the_approximate_search_is_the_same_on_every_run_and_thread_count():
    import faiss

    x = _clusters(2, n=3000)
    before = faiss.omp_get_max_threads()
    try:
        faiss.omp_set_num_threads(2)
        first = approximate_knn(x, k=8, seed=3)
        faiss.omp_set_num_threads(1)
        one_thread = approximate_knn(x, k=8, seed=3)
    finally:
        faiss.omp_set_num_threads(before)
    for a, b in zip(first, one_thread):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(first[1], approximate_knn(x, k=8, seed=3)[1])


def test_rows_whose_probed_cells_are_too_small_get_the_exact_neighbours():
    # five cells, one probed: a cell of fewer than k + 1 rows cannot fill a list of 60
    x = _clusters(4, n=200, d=16, centres=5)
    distances, indices = approximate_knn(x, k=60, nlist=5, nprobe=1)
    exact_d, exact_i = knn(x, k=60, device="cpu")
    assert (indices >= 0).all() and not (indices == np.arange(200)[:, None]).any()
    # every cell holds about 40 rows, so every row fell back to the exact pass
    np.testing.assert_array_equal(indices, exact_i)
    np.testing.assert_allclose(distances, exact_d, atol=1e-5)


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, r"k must lie in 1..N-1"), ({"k": 5, "nprobe": 0}, "nprobe must be at least 1"),
    ({"k": 5, "nlist": 0}, r"nlist must lie in 1..N"),
])
def test_the_approximate_search_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        approximate_knn(_clusters(0, n=100), **kwargs)


def test_the_stage_searches_approximately_past_its_threshold_and_says_so(raw_and_features):
    tmp, raw, emb, x = raw_and_features
    head = np.ascontiguousarray(x[:, :48])
    exact = find_neighbours(raw, emb, tmp / "exact", NeighboursConfig(k=12))
    assert exact.method == "exact"
    auto = find_neighbours(raw, emb, tmp / "auto", NeighboursConfig(k=12, approximate_above=raw.n_usable - 1))
    forced = find_neighbours(raw, emb, tmp / "forced", NeighboursConfig(k=12, method="approximate"))
    expected = approximate_knn(head, k=12)
    for near in (auto, forced):
        assert near.method == "approximate" and near.k == 12
        np.testing.assert_array_equal(np.load(near.indices_path), expected[1])
        np.testing.assert_array_equal(np.load(near.distances_path), expected[0])
    assert _recall(np.load(forced.indices_path), np.load(exact.indices_path)) >= 0.95
    with pytest.raises(ValueError, match="neighbours: method must be auto, exact or approximate, got 'fast'"):
        find_neighbours(raw, emb, tmp / "bad", NeighboursConfig(k=12, method="fast"))

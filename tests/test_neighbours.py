"""The neighbours stage: one exact search whose first columns are what a smaller search gives, read
by ood_scores and near_duplicates."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

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

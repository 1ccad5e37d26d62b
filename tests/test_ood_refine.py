"""Tests for the self-trained outlier score (core/ood_refine.py)."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from animal_assets.core.ood_refine import self_train


def junk_among_clusters(seed: int = 0):
    """Three in-distribution clusters and a junk cluster that differs along a few directions,
    with a seed score that only weakly ranks the junk first (AUROC about 0.75)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((3, 40)) * 3
    inliers = np.concatenate([c + rng.standard_normal((300, 40)) for c in centres])
    junk = rng.standard_normal((100, 40))
    junk[:, :5] += 2.5
    features = np.concatenate([inliers, junk]).astype(np.float32)
    is_junk = np.r_[np.zeros(len(inliers), bool), np.ones(len(junk), bool)]
    seed_score = is_junk * 1.0 + rng.standard_normal(len(features)) * 1.2
    return features, seed_score, is_junk


def test_self_training_sharpens_a_weak_seed_score():
    features, seed_score, is_junk = junk_among_clusters()
    before = roc_auc_score(is_junk, seed_score)
    after = roc_auc_score(is_junk, self_train(features, seed_score, rounds=3, out_share=0.05,
                                              in_share=0.7))
    assert 0.65 < before < 0.85
    assert after > 0.97 and after > before + 0.1


def test_result_does_not_depend_on_the_number_of_fold_threads():
    features, seed_score, _ = junk_among_clusters(1)
    one = self_train(features, seed_score, rounds=2, n_jobs=1)
    three = self_train(features, seed_score, rounds=2, n_jobs=3)
    np.testing.assert_array_equal(one, three)
    np.testing.assert_array_equal(one, self_train(features, seed_score, rounds=2, n_jobs=1))


def test_no_rounds_or_too_few_images_keep_the_seed_score():
    features, seed_score, _ = junk_among_clusters()
    np.testing.assert_array_equal(self_train(features, seed_score, rounds=0), seed_score)
    small = self_train(features[:40], seed_score[:40], rounds=3, out_share=0.05)
    np.testing.assert_array_equal(small, seed_score[:40])


@pytest.mark.parametrize("kwargs, message", [
    ({"rounds": -1}, "rounds must be >= 0"),
    ({"out_share": 0.5, "in_share": 0.6}, "sum to at most 1"),
    ({"n_jobs": 0}, "n_jobs must be >= 1"),
])
def test_rejects_bad_settings(kwargs, message):
    features, seed_score, _ = junk_among_clusters()
    with pytest.raises(ValueError, match=message):
        self_train(features, seed_score, **kwargs)


def clusters_with_junk(seed: int, share: float, n_in: int = 2400, k: int = 4, d: int = 32):
    """``k`` labelled Gaussian clusters (20 % of labels flipped at random) and a wider junk
    cluster of its own under uniform random labels, ``share`` of the whole set."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d)) * 2.0
    true = rng.integers(0, k, n_in)
    inliers = centres[true] + rng.standard_normal((n_in, d))
    labels = np.where(rng.random(n_in) < 0.2, rng.integers(0, k, n_in), true)
    n_junk = round(share * n_in / (1 - share))
    junk = rng.standard_normal(d) * 2.0 + rng.standard_normal((n_junk, d)) * 1.5
    features = np.concatenate([inliers, junk]).astype(np.float32)
    given = np.concatenate([labels, rng.integers(0, k, n_junk)])
    return features, given, np.r_[np.zeros(n_in, bool), np.ones(n_junk, bool)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("share", [0.05, 0.15])
def test_the_outlier_share_is_estimated_within_three_points(seed, share):
    from animal_assets.core import ood
    from animal_assets.core.knn import knn
    from animal_assets.core.stages.ood_scores import OodScoresConfig

    features, given, is_junk = clusters_with_junk(seed, share)
    params = OodScoresConfig()
    _, neighbours = knn(features, k=20)
    seed_score = ood.neighbour_label_entropy(neighbours, given, num_classes=4)
    refined = self_train(features, seed_score, rounds=params.refine_rounds,
                         out_share=params.refine_share, in_share=params.refine_in_share)
    estimate = ood.estimate_outlier_share(refined)
    assert abs(estimate - is_junk.mean()) <= 0.03, (estimate, is_junk.mean())
    # and the images flagged at that share are mostly the junk
    flags = ood.flag_outliers(refined, fraction=estimate)
    assert (flags & is_junk).sum() >= 0.8 * min(flags.sum(), is_junk.sum())

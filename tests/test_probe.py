"""Tests of the label probe: softmax regression as scikit-learn fits it, cross-fitting, the
strength search."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from animal_assets.core.probe import (
    Preconditioner,
    fit_softmax,
    out_of_sample_probs,
    select_probe_c,
    standardise,
)


def _clusters(seed: int, n: int = 400, d: int = 24, k: int = 4, noise: float = 0.15):
    """Gaussian clusters with a share of labels flipped at random."""
    rng = np.random.default_rng(seed)
    true = rng.integers(0, k, n)
    x = rng.normal(size=(n, d)) + rng.normal(size=(k, d))[true] * 1.5
    given = np.where(rng.random(n) < noise, rng.integers(0, k, n), true)
    return x.astype(np.float32), given


# --- fit_softmax -----------------------------------------------------------------------------


@pytest.mark.parametrize("k, class_weight, c", [(4, "balanced", 0.05), (4, None, 1.0), (2, "balanced", 0.05),
                                                (2, None, 10.0), (3, "balanced", 1e-3)])
def test_the_fit_is_scikit_learns_model(k, class_weight, c):
    """Same objective as LogisticRegression(lbfgs), including its binary form for two classes."""
    x, y = _clusters(1, n=600, d=40, k=k)
    y[:5] = np.arange(5) % k  # every class present
    keep = y < k
    x = standardise(x).x
    ours = fit_softmax(x[keep], y[keep], c=c, class_weight=class_weight)
    theirs = LogisticRegression(C=c, class_weight=class_weight, tol=1e-8, max_iter=5000).fit(x[keep], y[keep])
    np.testing.assert_allclose(ours.predict_proba(x), theirs.predict_proba(x), atol=2e-3)
    if k == 2:
        np.testing.assert_allclose(ours.decision_function(x), theirs.decision_function(x), atol=2e-2)
    assert ours.n_iter < 100


def test_a_wide_fit_converges_in_few_iterations_with_a_low_rank_preconditioner():
    """More features than the preconditioner's rank: the leading directions are scaled one by
    one, the others together; the fit lands where scikit-learn's does."""
    rng = np.random.default_rng(2)
    n, d, k = 1500, 300, 5
    y = rng.integers(0, k, n)
    mix = rng.normal(size=(d, d)) * np.linspace(3.0, 0.1, d)[:, None]  # strongly correlated columns
    x = (rng.normal(size=(n, d)) + rng.normal(size=(k, d))[y]) @ mix
    x = standardise(x.astype(np.float32)).x
    pre = Preconditioner.from_features(x, rank=32)
    assert pre.eigvecs.shape == (d, 32) and pre.rest <= pre.eigvals.min()
    ours = fit_softmax(x, y, c=0.01, preconditioner=pre)
    theirs = LogisticRegression(C=0.01, class_weight="balanced", tol=1e-8, max_iter=5000).fit(x, y)
    np.testing.assert_allclose(ours.predict_proba(x), theirs.predict_proba(x), atol=3e-3)


@pytest.mark.parametrize("bad, match", [({"c": 0.0}, "c must be > 0"),
                                        ({"class_weight": "auto"}, "class_weight must be")])
def test_fit_softmax_rejects_bad_settings(bad, match):
    x, y = _clusters(4, n=60, d=4)
    with pytest.raises(ValueError, match=match):
        fit_softmax(x, y, **{"c": 1.0, **bad})


def test_fit_softmax_needs_two_classes():
    with pytest.raises(ValueError, match="at least two classes"):
        fit_softmax(np.ones((5, 3), np.float32), np.zeros(5, dtype=np.int64), c=1.0)


def test_the_strength_search_picks_a_strength_that_fits_the_noise():
    x, y = _clusters(5, n=900, d=24, noise=0.3)
    c = select_probe_c(x, y, num_classes=4)
    probs = out_of_sample_probs(x, y, num_classes=4, c=c)
    assert 1e-4 <= c <= 1.0
    assert np.mean(probs.argmax(1) == y) > 0.6


# --- out_of_sample_probs --------------------------------------------------------------------


@pytest.mark.parametrize("twins", [False, True])
def test_probs_are_out_of_sample(twins):
    """Random labels on random points: a memorising model is perfect in-sample, chance out of it."""
    rng = np.random.default_rng(1)
    n, d, k = 120, 128, 4
    x = rng.normal(size=(n // 2 if twins else n, d)).astype(np.float32)
    y = rng.integers(0, k, len(x))
    groups = None
    if twins:  # every point twice, same label: a twin in the training folds leaks the answer
        x, y, groups = np.repeat(x, 2, axis=0), np.repeat(y, 2), np.repeat(np.arange(len(x)), 2)
        leaky = out_of_sample_probs(x, y, num_classes=k, c=1e4, seed=0)
        assert np.mean(leaky.argmax(1) == y) > 0.7  # ~80 % of twins sit in another fold
    probs = out_of_sample_probs(x, y, num_classes=k, c=1e4, seed=0, groups=groups)
    assert np.mean(probs.argmax(1) == y) < 0.45
    memorised = LogisticRegression(C=1e4, max_iter=2000).fit(x, y)
    assert memorised.score(x, y) > 0.95  # the same model class does memorise when it sees the row


@pytest.mark.parametrize("rare_count", [0, 1, 2])
def test_every_class_is_a_column(rare_count):
    rng = np.random.default_rng(2)
    y = np.r_[np.repeat([0, 1, 2], 40), np.full(rare_count, 3)]
    x = rng.normal(size=(len(y), 8)) + y[:, None]
    probs = out_of_sample_probs(x, y, num_classes=5, seed=0, n_folds=5)
    assert probs.shape == (len(y), 5)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert np.all(probs[:, 4] == 0.0)  # a class nobody has gets a zero column, not a missing one


@pytest.mark.parametrize("with_rest", [False, True])
def test_a_fold_left_with_one_class_answers_that_class(with_rest):
    # K=2 with a single image of class 1: the fold holding it out trains on class 0 alone
    rng = np.random.default_rng(3)
    y = np.r_[np.zeros(60, dtype=np.int64), 1]
    x = rng.normal(size=(61, 8))
    mask = np.ones(61, dtype=bool)
    if with_rest:
        mask[:6] = False
    probs = out_of_sample_probs(x, y, num_classes=2, train_mask=mask, seed=0, n_folds=3)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert probs[60].tolist() == [1.0, 0.0]  # scored by the fold that never saw class 1


@pytest.mark.parametrize("labels, found", [(np.zeros(30, dtype=np.int64), "all 30 are of class 0"),
                                           (np.full(30, 2), "all 30 are of class 2")])
def test_the_probe_names_the_only_class_it_could_learn(labels, found):
    x = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match=f"at least two classes to learn from .*; {found}$"):
        out_of_sample_probs(x, labels, num_classes=3, seed=0)


def test_rows_outside_train_mask_get_fold_average():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 30)
    x = rng.normal(size=(90, 8)) + 3 * y[:, None]
    mask = np.ones(90, dtype=bool)
    mask[::9] = False
    labels = np.where(mask, y, -1)  # labels outside the mask are never read
    probs = out_of_sample_probs(x, labels, num_classes=3, train_mask=mask, seed=0)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    assert np.mean(probs[~mask].argmax(1) == y[~mask]) > 0.9


def test_probs_deterministic_and_seeded():
    x, given = _clusters(7)
    probs = out_of_sample_probs(x, given, num_classes=4, seed=0)
    again = out_of_sample_probs(x, given, num_classes=4, seed=0)
    assert probs.tobytes() == again.tobytes()
    other = out_of_sample_probs(x, given, num_classes=4, seed=1)
    assert not np.array_equal(probs, other)


def test_out_of_sample_probs_do_not_depend_on_the_number_of_threads():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 240)
    features = (rng.standard_normal((240, 12)) + labels[:, None] * 0.8).astype(np.float32)
    mask = rng.random(240) > 0.1  # the rest get the mean of the fold models
    groups = np.arange(240)
    groups[1::7] = groups[0::7][: len(groups[1::7])]  # some byte-identical pairs
    kwargs = dict(num_classes=3, n_folds=5, train_mask=mask, groups=groups, c=0.1)
    one = out_of_sample_probs(features, labels, n_jobs=1, **kwargs)
    four = out_of_sample_probs(features, labels, n_jobs=4, **kwargs)
    np.testing.assert_array_equal(one, four)
    np.testing.assert_allclose(one.sum(axis=1), 1.0)
    assert (one[~mask] > 0).all()


def test_a_fit_does_not_depend_on_how_many_threads_share_its_rows():
    rng = np.random.default_rng(6)
    y = rng.integers(0, 3, 5000)  # three chunks of rows
    x = (rng.standard_normal((5000, 16)) + y[:, None] * 0.3).astype(np.float32)
    one = fit_softmax(x, y, c=0.1, n_jobs=1)
    three = fit_softmax(x, y, c=0.1, n_jobs=3)
    assert one.coef.tobytes() == three.coef.tobytes() and one.n_iter == three.n_iter

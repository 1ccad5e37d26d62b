"""Tests of the class-conditional noise model: transition estimate, deconvolution, posteriors."""
from __future__ import annotations

import numpy as np
import pytest

from animal_assets.core.probe import out_of_sample_probs, select_probe_c
from animal_assets.core.noise_model import (
    BACKGROUND_TOP_SHARE,
    MIN_ROW_IMAGES,
    PRIOR_IMAGES,
    bayes_posterior,
    confident_rows,
    deconvolve,
    estimate_transition,
    noise_posteriors,
    sparsify,
    unweight,
)

K = 4
PARTNER = np.array([1, 0, 3, 2])


def pair_noise(seed: int, flip: float = 0.3, n_per_class: int = 250, d: int = 24):
    """Pairs of nearby Gaussian clusters; each label flips to its partner with probability ``flip``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(K // 2, d)) * 5.0
    centres = np.repeat(base, 2, axis=0) + rng.normal(size=(K, d)) * 1.5
    true = np.repeat(np.arange(K), n_per_class)
    x = (centres[true] + rng.normal(size=(len(true), d))).astype(np.float32)
    given = np.where(rng.random(len(true)) < flip, PARTNER[true], true)
    return x, given, true


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("flip", [0.2, 0.35])
def test_posterior_recovers_true_labels_and_the_noise_rates(seed, flip):
    x, given, true = pair_noise(seed, flip)
    res = noise_posteriors(x, given, num_classes=K, probe_kwargs={"c": 0.1, "seed": seed})
    raw_acc = np.mean(given == true)
    acc = np.mean(res.posterior.argmax(axis=1) == true)
    assert acc > raw_acc + 0.6 * (1 - raw_acc)  # most of the flips are undone
    # T is estimated from the data: pairs get about the injected rate, shrunk by the prior of
    # PRIOR_IMAGES clean pseudo-images per class; other cells exactly 0.
    sizes = np.bincount(true, minlength=K)
    for j in range(K):
        assert abs(res.transition[j, PARTNER[j]] - flip * sizes[j] / (sizes[j] + PRIOR_IMAGES)) < 0.08
        others = np.setdiff1d(np.arange(K), [j, PARTNER[j]])
        assert (res.transition[j, others] == 0).all()
    np.testing.assert_allclose(res.posterior.sum(axis=1), 1.0, atol=1e-9)
    assert len(res.moved_per_round) == 3


def test_posterior_is_deterministic_and_rounds_help():
    x, given, true = pair_noise(3, 0.3)
    a = noise_posteriors(x, given, num_classes=K, rounds=0, probe_kwargs={"c": 0.1})
    b = noise_posteriors(x, given, num_classes=K, rounds=2, probe_kwargs={"c": 0.1})
    again = noise_posteriors(x, given, num_classes=K, rounds=2, probe_kwargs={"c": 0.1})
    np.testing.assert_array_equal(b.posterior, again.posterior)
    assert np.mean(b.posterior.argmax(1) == true) >= np.mean(a.posterior.argmax(1) == true)


def test_no_noise_moves_almost_nothing():
    x, given, true = pair_noise(4, 0.0)
    res = noise_posteriors(x, given, num_classes=K, probe_kwargs={"c": 0.1})
    assert np.mean(res.posterior.argmax(1) != given) < 0.02


def test_masked_rows_do_not_train():
    x, given, _ = pair_noise(5, 0.2)
    mask = np.ones(len(given), bool)
    mask[:50] = False
    scrambled = given.copy()
    scrambled[:50] = (given[:50] + 2) % K  # garbage labels outside the mask
    a = noise_posteriors(x, given, num_classes=K, train_mask=mask, probe_kwargs={"c": 0.1})
    b = noise_posteriors(x, scrambled, num_classes=K, train_mask=mask, probe_kwargs={"c": 0.1})
    np.testing.assert_allclose(a.transition, b.transition)
    np.testing.assert_allclose(a.posterior[50:], b.posterior[50:])


def test_sparsify_zeroes_small_rates_and_keeps_rows_stochastic():
    t = np.array([[0.9, 0.05, 0.05], [0.3, 0.65, 0.05], [0.0, 0.0, 0.0]])
    out = sparsify(t, min_rate=0.08, background=np.zeros_like(t))  # no background noise
    np.testing.assert_allclose(out[0], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[1], [0.3 / 0.95, 0.65 / 0.95, 0.0])
    np.testing.assert_allclose(out[2], [0.0, 0.0, 1.0])  # an empty row becomes identity


def test_deconvolve_inverts_the_noise_and_bayes_uses_the_given_label():
    t = np.array([[0.7, 0.3], [0.2, 0.8]])
    clean = np.array([[0.9, 0.1], [0.25, 0.75]])
    np.testing.assert_allclose(deconvolve(clean @ t, t), clean, atol=1e-9)
    post = bayes_posterior(clean, np.array([1, 0]), t)
    # image 0: 0.9 * 0.3 vs 0.1 * 0.8; image 1: 0.25 * 0.7 vs 0.75 * 0.2
    np.testing.assert_allclose(post[0], [0.27 / 0.35, 0.08 / 0.35])
    np.testing.assert_allclose(post[1], [0.175 / 0.325, 0.15 / 0.325])


def test_transition_without_every_class_falls_back_to_counts():
    labels = np.array([0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.8, 0], [0.1, 0.9, 0], [0.1, 0.9, 0], [0.6, 0.4, 0]])
    t = estimate_transition(labels, probs, num_classes=3, min_rate=0.0)
    assert t.shape == (3, 3)
    np.testing.assert_allclose(t.sum(axis=1), 1.0)
    np.testing.assert_allclose(t[2], [0, 0, 1])  # no image of class 2: identity row


@pytest.mark.parametrize("scale, expected", [(1.0, (0.03, 1.0)), (30.0, (1e-4, 0.01))])
def test_probe_c_follows_the_data(scale, expected):
    """Separable low-dimensional clusters want a weak penalty; 512 noisy dims want a strong one."""
    rng = np.random.default_rng(0)
    if scale == 1.0:
        x, given, _ = pair_noise(6, 0.2)
    else:
        given = rng.integers(0, K, 1200)
        x = rng.normal(size=(1200, 512)).astype(np.float32)
        x[:, :4] += np.eye(K)[given] * 1.5  # a weak signal in a few of many noisy dims
    c = select_probe_c(x, given, num_classes=K)
    assert expected[0] <= c <= expected[1]


def test_sparsify_caps_the_noise_of_a_row():
    t = np.array([[0.3, 0.7], [0.1, 0.9]])
    out = sparsify(t, min_rate=0.08, background=np.zeros_like(t))
    np.testing.assert_allclose(out[0], [0.55, 0.45])
    np.testing.assert_allclose(out[1], [0.1, 0.9])


def test_small_classes_are_shrunk_toward_their_given_labels():
    """With a dozen images per class the estimated rates are mostly probe error: move little."""
    x, given, true = pair_noise(7, 0.3, n_per_class=12)
    free = noise_posteriors(x, given, num_classes=K, prior_images=0.0, probe_kwargs={"c": 0.1})
    shrunk = noise_posteriors(x, given, num_classes=K, probe_kwargs={"c": 0.1})
    assert shrunk.moved_per_round[-1] < free.moved_per_round[-1]
    assert (np.diag(shrunk.transition) > 0.75).all()


def unequal_pairs(seed: int, *, sizes, rates, d: int = 24, gap: float = 1.5):
    """Two pairs of nearby Gaussian clusters of the given true sizes; true class j is flipped to
    its partner with probability ``rates[j]``; ``gap`` scales the distance within a pair."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(K // 2, d)) * 5.0
    centres = np.repeat(base, 2, axis=0) + rng.normal(size=(K, d)) * gap
    true = np.repeat(np.arange(K), sizes)
    x = (centres[true] + rng.normal(size=(len(true), d))).astype(np.float32)
    given = np.where(rng.random(len(true)) < np.asarray(rates)[true], PARTNER[true], true)
    return x, given, true


def clean_with_defaults(x, given, **config_fields):
    from animal_assets.core.cleaning import CleaningConfig, decide

    config = CleaningConfig(probe_c=0.1, **config_fields)
    res = noise_posteriors(x, given, num_classes=K, probe_kwargs=config.probe_kwargs())
    decisions = decide(given, res.balanced(), ood_flags=np.zeros(len(given), bool),
                       dup_group=np.arange(len(given)), num_classes=K, config=config)
    return decisions["label"].to_numpy(), res


def came_back_and_moved(final, given, true, cls):
    flipped = (true == cls) & (given != cls)
    clean = (true == cls) & (given == cls)
    return np.mean(final[flipped] == cls), np.mean(final[clean] != cls)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_large_class_flipped_into_a_small_one_comes_back(seed):
    """Class 0 (800 images) flipped at 0.3 into class 1 (200): the flat prior of a balanced
    probe kept most of them in the small class and moved clean large-class images into it."""
    x, given, true = unequal_pairs(seed, sizes=(800, 200, 500, 500), rates=(0.3, 0.3, 0.3, 0.3))
    final, res = clean_with_defaults(x, given)
    back, moved = came_back_and_moved(final, given, true, 0)
    assert back >= 0.80 and moved <= 0.05, (back, moved)
    # The estimated prior follows the true sizes, not the given-label counts. The confident
    # rows read class 0's row from about 155 images (sampling error about 0.04 per rate), which
    # the prior amplifies: class 1 came out at 0.039 against 0.100 at seed 1.
    np.testing.assert_allclose(res.prior, np.bincount(true) / len(true), atol=0.07)
    raw = [np.mean(given[true == k] == k) for k in range(K)]
    cleaned = [np.mean(final[true == k] == k) for k in range(K)]
    assert all(c >= r - 0.01 for c, r in zip(cleaned, raw)), (raw, cleaned)


@pytest.mark.parametrize("seed", [0, 1])
def test_an_asymmetric_pair_like_wolf_and_coyote_is_undone(seed):
    """Near-equal true sizes; 0.45 of class 0 labelled as class 1, 0.10 the other way (as DS801's
    wolves under "coyote"). Class 1's clean images must stay, class 0's flipped ones come back."""
    x, given, true = unequal_pairs(seed, sizes=(500, 550, 500, 500), rates=(0.45, 0.10, 0.2, 0.2))
    final, _ = clean_with_defaults(x, given)
    back, moved = came_back_and_moved(final, given, true, 0)
    assert back >= 0.80, back
    _, moved_receiving = came_back_and_moved(final, given, true, 1)
    assert moved_receiving <= 0.05, moved_receiving


def pairs_plus_symmetric(seed: int, *, pair: float = 0.2, symmetric: float = 0.1, n: int = 300,
                         d: int = 24):
    """Pair flips as in :func:`pair_noise`, plus ``symmetric`` of every class relabelled as one
    of the other classes chosen uniformly (including the partner)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(K // 2, d)) * 5.0
    centres = np.repeat(base, 2, axis=0) + rng.normal(size=(K, d)) * 1.5
    true = np.repeat(np.arange(K), n)
    x = (centres[true] + rng.normal(size=(len(true), d))).astype(np.float32)
    u = rng.random(len(true))
    given = np.where(u < pair, PARTNER[true], true)
    anywhere = (u >= pair) & (u < pair + symmetric)
    given[anywhere] = (true[anywhere] + rng.integers(1, K, anywhere.sum())) % K
    return x, given, true


@pytest.mark.parametrize("seed", [0, 1])
def test_symmetric_noise_off_the_pairs_is_undone_with_background_rates(seed):
    """Flips to a class that is no look-alike: with the small rates zeroed they could never move
    (the Bayes factor of a zero rate is zero); read as background noise most come back."""
    x, given, true = pairs_plus_symmetric(seed)
    off_pair = (given != true) & (given != PARTNER[true])
    res = noise_posteriors(x, given, num_classes=K, probe_kwargs={"c": 0.1, "seed": seed})
    final = res.balanced().argmax(axis=1)
    assert np.mean(final[off_pair] == true[off_pair]) >= 0.80  # off-pair flips come back
    flipped = given != true  # pair flips and symmetric ones together (0.976 and 0.983 come back)
    assert np.mean(final[flipped] == true[flipped]) >= 0.90
    assert np.mean(final[given == true] != true[given == true]) <= 0.03  # while clean images stay
    # every off-pair rate is estimated near the injected 0.1 / 3
    off = np.ones((K, K), bool)
    off[np.arange(K), np.arange(K)] = False
    off[np.arange(K), PARTNER] = False
    assert np.all(np.abs(res.transition[off] - 0.1 / 3) < 0.03), res.transition


@pytest.mark.parametrize("seed", [0, 1])
def test_confident_rows_read_an_asymmetric_pair_of_close_look_alikes(seed):
    """1,000 images per class, 0.35 one way and 0.10 back in each pair of close look-alikes:
    the top quarter of each class reads the rates themselves, not the probe's own confusions."""
    rates = np.array([0.35, 0.10, 0.35, 0.10])
    x, given, true = unequal_pairs(seed, sizes=(1000,) * K, rates=rates, gap=1.0)
    probs = unweight(out_of_sample_probs(x, given, num_classes=K, c=0.1, seed=0), given, K)
    t = estimate_transition(given, probs, num_classes=K, min_rate=0.0)
    error = np.abs(t[np.arange(K), PARTNER] - rates)
    assert error.max() <= 0.04, error


def test_a_class_too_small_for_its_own_row_keeps_the_confident_joint_row():
    """A class whose top quarter holds fewer than MIN_ROW_IMAGES images keeps the row of
    cleanlab's confident joint (shrunk by PRIOR_IMAGES); the others take their confident rows."""
    from cleanlab.count import compute_confident_joint, estimate_latent

    x, given, _ = unequal_pairs(0, sizes=(800, 200, 500, 500), rates=(0.3, 0.3, 0.3, 0.3))
    probs = unweight(out_of_sample_probs(x, given, num_classes=K, c=0.1, seed=0), given, K)
    sizes = np.bincount(given, minlength=K)
    small = np.round(BACKGROUND_TOP_SHARE * sizes) < MIN_ROW_IMAGES
    assert small.tolist() == [False, True, False, False], sizes  # class 1: 380 given images
    _, noise_matrix, _ = estimate_latent(compute_confident_joint(given, probs), given)
    joint = np.asarray(noise_matrix).T * sizes[:, None] + PRIOR_IMAGES * np.eye(K)
    joint /= joint.sum(axis=1, keepdims=True)
    rows = confident_rows(given, probs, num_classes=K, prior_images=PRIOR_IMAGES * BACKGROUND_TOP_SHARE)
    assert not np.allclose(joint[small], rows[small])  # the two estimates differ on this class
    t = estimate_transition(given, probs, num_classes=K, min_rate=0.0)
    np.testing.assert_allclose(t[small], joint[small])
    np.testing.assert_allclose(t[~small], rows[~small])

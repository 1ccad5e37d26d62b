"""Tests of label cleaning: duplicate groups, keep/relabel/drop decisions, summaries."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from animal_assets.core.cleaning import (
    CleaningConfig,
    decide,
    duplicate_groups,
    summarise,
)
from animal_assets.core.noise_model import noise_posteriors
from animal_assets.core.probe import out_of_sample_probs

K = 6
PAIRS = np.array([1, 0, 3, 2, 5, 4])  # look-alike partner of each class
COUNTS = (300, 90, 240, 110, 200, 140)  # imbalanced on purpose


def noisy_clusters(seed: int, flip_rate: float = 0.2, ood_rate: float = 0.05):
    """Gaussian clusters in 32-d; pair partners lie close; flips go to the partner; OOD far out."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(K // 2, 32)) * 4.0
    centers = np.repeat(base, 2, axis=0) + rng.normal(size=(K, 32)) * 1.6
    true = np.repeat(np.arange(K), COUNTS)
    x = centers[true] + rng.normal(size=(len(true), 32))
    given = true.copy()
    flipped = rng.random(len(true)) < flip_rate
    given[flipped] = PAIRS[true[flipped]]
    ood = rng.random(len(true)) < ood_rate
    x[ood] = rng.normal(size=(ood.sum(), 32)) * 3.0 + 25.0 * rng.choice([-1, 1], size=(ood.sum(), 32))
    given[ood] = rng.integers(0, K, ood.sum())
    flipped &= ~ood
    return x.astype(np.float32), given, true, flipped, ood


@pytest.fixture(scope="module")
def noisy():
    x, given, true, flipped, ood = noisy_clusters(seed=3)
    probs = out_of_sample_probs(x, given, num_classes=K, train_mask=~ood, seed=0)
    return x, given, true, flipped, ood, probs


# --- duplicate_groups, config ---------------------------------------------------------------


@pytest.mark.parametrize("hashes, expected", [
    (["a", "b", "a", "c", "b"], [0, 1, 0, 2, 1]),
    (["x", "y", "z"], [0, 1, 2]),
    ([], []),
])
def test_duplicate_groups(hashes, expected):
    assert duplicate_groups(hashes).tolist() == expected


@pytest.mark.parametrize("bad", [
    {"n_folds": 1}, {"relabel_threshold": 0.0}, {"min_class_keep": 1.5}, {"filter_by": "nope"},
    {"method": "vote"}, {"em_rounds": -1}, {"min_noise_rate": 1.0}, {"drop_below": 1.5},
    {"noise_estimator": "em"},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="cleaning.py"):
        CleaningConfig(**bad)


# --- decide ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def posteriors(noisy):
    x, given, _, _, ood, _ = noisy
    # No shrinkage: this tests decide() on the model's posterior, not the small-class prior.
    return noise_posteriors(x, given, num_classes=K, train_mask=~ood, prior_images=0.0,
                            probe_kwargs={"seed": 0})


@pytest.mark.parametrize("method", ["cleanlab", "noise_model"])
def test_decide_relabels_flips_and_drops_ood(noisy, posteriors, method):
    _, given, true, flipped, ood, probs = noisy
    cfg = CleaningConfig(method=method)
    if method == "noise_model":
        probs = posteriors.posterior
    threshold = cfg.relabel_threshold if method == "cleanlab" else cfg.drop_below
    d = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K, config=cfg)
    assert (d["action"][ood] == "drop").all() and (d["reason"][ood] == "ood").all()
    assert (d["label"][ood] == -1).all()
    final = d["label"].to_numpy()
    # The posterior moves an image only when the probe outweighs the given label's prior.
    assert d["label_issue"][flipped].mean() > (0.75 if method == "cleanlab" else 0.6)
    assert np.mean(final[flipped] == true[flipped]) > 0.6  # most flips come back to their class
    moved = flipped & (d["action"] == "relabel").to_numpy()
    assert np.mean(final[moved] == true[moved]) > 0.95  # and relabels are nearly always right
    found = 0.75 if method == "cleanlab" else 0.6
    assert np.mean((final[flipped] == true[flipped]) | (final[flipped] == -1)) > found
    clean = ~flipped & ~ood
    assert np.mean(d["label"].to_numpy()[clean] == true[clean]) > 0.9
    relabelled = d["action"] == "relabel"
    assert (d["label_issue"][relabelled]).all() and (d["confidence"][relabelled] >= threshold).all()
    np.testing.assert_allclose(d["self_confidence"], probs[np.arange(len(given)), given])
    assert set(d["reason"]) <= {"", "ood", "label_issue", "duplicate_conflict", "duplicate"}
    again = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K,
                   config=cfg)
    pd.testing.assert_frame_equal(d, again)


def floor_case(regime: str, seed: int = 0):
    """Class 0 mostly looks like class 1 to the probe: cleanlab flags most of class 0."""
    rng = np.random.default_rng(seed)
    given = np.repeat([0, 1, 2], [100, 300, 200])
    probs = np.zeros((len(given), 3))
    p1 = rng.uniform(0.45, 0.7, 300)
    probs[100:400] = np.c_[(1 - p1) * 0.6, p1, (1 - p1) * 0.4]
    probs[400:] = [0.05, 0.05, 0.9]
    low, high = (0.55, 0.68) if regime == "drop" else (0.75, 0.95)
    bad = rng.uniform(low, high, 90)
    probs[:90] = np.c_[(1 - bad) * 0.7, bad, (1 - bad) * 0.3]
    good = rng.uniform(0.7, 0.95, 10)
    probs[90:100] = np.c_[good, (1 - good) / 2, (1 - good) / 2]
    return given, probs


@pytest.mark.parametrize("regime", ["drop", "relabel"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.8])
@pytest.mark.parametrize("method", ["prune_by_noise_rate", "confident_learning", "predicted_neq_given"])
def test_per_class_floor(regime, keep, method):
    given, probs = floor_case(regime)
    cfg = CleaningConfig(method="cleanlab", min_class_keep=keep, filter_by=method)
    d = decide(given, probs, ood_flags=np.zeros(len(given), bool), dup_group=np.arange(len(given)),
               num_classes=3, config=cfg)
    assert d["label_issue"][:100].mean() > 0.6  # the setup does flag most of class 0
    kept0 = int((d["label"] == 0).sum())
    assert kept0 >= math.ceil(keep * 100)
    flagged = np.flatnonzero(d["label_issue"].to_numpy()[:100])
    back = flagged[d["action"].to_numpy()[flagged] == "keep"]
    out = flagged[d["action"].to_numpy()[flagged] != "keep"]
    if keep == 0.0:
        assert len(back) == 0
    else:
        assert len(back) > 0 and (d["label"][back] == 0).all() and (d["reason"][back] == "").all()
        # the least suspicious come back first
        assert d["self_confidence"][back].min() >= d["self_confidence"][out].max()


def dup_case(group_given, group_probs, first_at):
    """Confident singletons of 3 classes plus one byte-identical group at the given rows."""
    rng = np.random.default_rng(5)
    given = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), given] = 0.9
    rows = [first_at, 160, 200, 250][: len(group_given)]
    given[rows] = group_given
    probs[rows] = group_probs
    group = np.arange(300)
    group[rows] = 1000
    return given, probs, group, rows


@pytest.mark.parametrize("group_given, group_probs, expected", [
    ([2, 2], [0.05, 0.05, 0.9], 2),  # agreeing copies: keep one
    ([0, 1], [0.3, 0.6, 0.1], 1),  # conflict: the probable given label
    ([1, 0, 0], [0.55, 0.4, 0.05], 0),  # majority and probability agree
    ([0, 1], [0.1, 0.15, 0.75], 2),  # conflict, third class confident: take it
    ([0, 1], [0.35, 0.25, 0.4], 0),  # conflict, third class below drop_below: best given label
])
@pytest.mark.parametrize("first_at", [0, 150])
def test_duplicate_groups_keep_one_probable_copy(group_given, group_probs, expected, first_at):
    given, probs, group, rows = dup_case(group_given, group_probs, first_at)
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=group, num_classes=3,
               config=CleaningConfig(drop_below=0.5))
    first, copies = rows[0], rows[1:]
    assert d.at[first, "label"] == expected
    assert d.at[first, "action"] == ("keep" if expected == group_given[0] else "relabel")
    conflict = len(set(group_given)) > 1
    assert d.at[first, "reason"] == ("duplicate_conflict" if conflict else "")
    assert (d["action"][copies] == "drop").all() and (d["reason"][copies] == "duplicate").all()
    assert (d["label"][rows] >= 0).sum() == 1


def test_by_default_a_conflicting_group_takes_its_most_likely_class():
    """drop_below 0 (the default): the mean posterior's argmax, even when below 0.5."""
    given, probs, group, rows = dup_case([0, 1], [0.35, 0.25, 0.4], 0)
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=group, num_classes=3)
    assert d.at[rows[0], "label"] == 2 and d.at[rows[0], "reason"] == "duplicate_conflict"


def test_ood_copy_drops_whole_group():
    given, probs, group, rows = dup_case([1, 1], [0.05, 0.9, 0.05], 0)
    ood = np.zeros(300, bool)
    ood[rows[1]] = True
    d = decide(given, probs, ood_flags=ood, dup_group=group, num_classes=3)
    assert (d["reason"][rows] == "ood").all() and (d["label"][rows] == -1).all()


def test_summarise_counts(noisy):
    _, given, _, _, ood, probs = noisy
    d = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K)
    s = summarise(d, num_classes=K)
    assert s["n"] == len(given) and sum(s["by_action"].values()) == len(given)
    assert s["by_reason"]["ood"] == int(ood.sum())
    assert sum(c["final"] for c in s["per_class"]) == s["kept"] == int((d["label"] >= 0).sum())
    assert [c["given"] for c in s["per_class"]] == np.bincount(given, minlength=K).tolist()
    assert np.asarray(s["relabel_matrix"]).sum() == s["by_action"]["relabel"]

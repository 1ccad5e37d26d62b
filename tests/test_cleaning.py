"""Tests of label cleaning: out-of-sample probe, duplicate groups, keep/relabel/drop decisions."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from animal_assets.core.cleaning import (
    CleaningConfig,
    copy_groups,
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


def test_probs_deterministic_and_seeded(noisy):
    x, given, _, _, ood, probs = noisy
    again = out_of_sample_probs(x, given, num_classes=K, train_mask=~ood, seed=0)
    assert probs.tobytes() == again.tobytes()
    other = out_of_sample_probs(x, given, num_classes=K, train_mask=~ood, seed=1)
    assert not np.array_equal(probs, other)


# --- duplicate_groups, config ---------------------------------------------------------------


@pytest.mark.parametrize("hashes, expected", [
    (["a", "b", "a", "c", "b"], [0, 1, 0, 2, 1]),
    (["x", "y", "z"], [0, 1, 2]),
    ([], []),
])
def test_duplicate_groups(hashes, expected):
    assert duplicate_groups(hashes).tolist() == expected


@pytest.mark.parametrize("bad", [
    {"n_folds": 1}, {"min_class_keep": 1.5}, {"em_rounds": -1}, {"min_noise_rate": 1.0},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="cleaning.py"):
        CleaningConfig(**bad)


def test_the_config_holds_the_settings_of_the_probe_the_noise_model_and_the_floor():
    assert [f.name for f in dataclasses.fields(CleaningConfig)] == [
        "n_folds", "probe_c", "probe_max_iter", "class_weight",
        "em_rounds", "min_noise_rate", "noise_prior_images", "min_class_keep", "seed",
    ]


def test_a_run_config_naming_an_unknown_clean_labels_field_is_refused_in_one_line():
    from animal_assets.core.config import params_from_run_config

    run_config = {"ops": {"clean_labels": {"config": {"min_class_keep": 0.4, "relabel_at": 0.7}}}}
    with pytest.raises(ValueError) as err:
        params_from_run_config(run_config)
    assert str(err.value) == "run config ops.clean_labels: unknown field(s) ['relabel_at']"


def test_the_dagster_run_config_refuses_an_unknown_clean_labels_field():
    dg = pytest.importorskip("dagster")
    from animal_assets.configs import CleanLabelsConfig

    def stand_in(config) -> None:
        return None

    stand_in.__annotations__["config"] = CleanLabelsConfig  # a class, not this module's string
    stand_in = dg.asset(name="clean_labels")(stand_in)
    job = dg.Definitions(assets=[stand_in], jobs=[dg.define_asset_job("j", selection=[stand_in])])
    job = job.resolve_job_def("j")
    assert dg.validate_run_config(job, {"ops": {"clean_labels": {"config": {"min_class_keep": 0.4}}}})
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"ops": {"clean_labels": {"config": {"relabel_at": 0.7}}}})
    assert 'unexpected config entry "relabel_at" at path root:ops:clean_labels:config' in str(err.value)


# --- decide ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def posteriors(noisy):
    x, given, _, _, ood, _ = noisy
    # No shrinkage: this tests decide() on the model's posterior, not the small-class prior.
    return noise_posteriors(x, given, num_classes=K, train_mask=~ood, prior_images=0.0,
                            probe_kwargs={"seed": 0})


def test_decide_relabels_flips_and_drops_ood(noisy, posteriors):
    _, given, true, flipped, ood, _ = noisy
    cfg = CleaningConfig()
    probs = posteriors.posterior
    d = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K, config=cfg)
    assert (d["action"][ood] == "drop").all() and (d["reason"][ood] == "ood").all()
    assert (d["label"][ood] == -1).all()
    final = d["label"].to_numpy()
    # The posterior moves an image only when the probe outweighs the given label's prior.
    assert d["label_issue"][flipped].mean() > 0.6
    assert np.mean(final[flipped] == true[flipped]) > 0.6  # most flips come back to their class
    moved = flipped & (d["action"] == "relabel").to_numpy()
    assert np.mean(final[moved] == true[moved]) > 0.95  # and relabels are nearly always right
    assert np.mean((final[flipped] == true[flipped]) | (final[flipped] == -1)) > 0.6
    clean = ~flipped & ~ood
    assert np.mean(d["label"].to_numpy()[clean] == true[clean]) > 0.9
    relabelled = np.flatnonzero(d["action"] == "relabel")
    assert d["label_issue"][relabelled].all()
    # a relabelled image goes to its most likely class, and its confidence is that probability
    np.testing.assert_array_equal(final[relabelled], probs[relabelled].argmax(axis=1))
    np.testing.assert_array_equal(d["confidence"][relabelled], probs[relabelled, final[relabelled]])
    assert (d["action"][~ood & ~d["label_issue"]] == "keep").all()  # no drop for a low posterior
    np.testing.assert_allclose(d["self_confidence"], probs[np.arange(len(given)), given])
    assert set(d["reason"]) <= {"", "ood", "label_issue", "duplicate_conflict", "duplicate"}
    again = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K,
                   config=cfg)
    pd.testing.assert_frame_equal(d, again)


def floor_case(strength: str, seed: int = 0):
    """Class 0 mostly looks like class 1: the posteriors of 90 of its 100 images prefer class 1
    (``strength`` says how strongly), so the default rule relabels them all."""
    rng = np.random.default_rng(seed)
    given = np.repeat([0, 1, 2], [100, 300, 200])
    probs = np.zeros((len(given), 3))
    p1 = rng.uniform(0.45, 0.7, 300)
    probs[100:400] = np.c_[(1 - p1) * 0.6, p1, (1 - p1) * 0.4]
    probs[400:] = [0.05, 0.05, 0.9]
    low, high = (0.55, 0.68) if strength == "weak" else (0.75, 0.95)
    bad = rng.uniform(low, high, 90)
    probs[:90] = np.c_[(1 - bad) * 0.7, bad, (1 - bad) * 0.3]
    good = rng.uniform(0.7, 0.95, 10)
    probs[90:100] = np.c_[good, (1 - good) / 2, (1 - good) / 2]
    return given, probs


@pytest.mark.parametrize("strength", ["weak", "strong"])
@pytest.mark.parametrize("keep", [0.0, 0.5, 0.8])
def test_per_class_floor(strength, keep):
    given, probs = floor_case(strength)
    d = decide(given, probs, ood_flags=np.zeros(len(given), bool), dup_group=np.arange(len(given)),
               num_classes=3, config=CleaningConfig(min_class_keep=keep))
    issue = d["label_issue"].to_numpy()
    assert issue[:90].all() and not issue[90:].any()  # the setup does flag most of class 0
    # the floor brings class 0 back to exactly ceil(keep * 100), never below its 10 clean images
    assert int((d["label"] == 0).sum()) == max(10, math.ceil(keep * 100))
    flagged = np.flatnonzero(issue)
    back = flagged[d["action"].to_numpy()[flagged] == "keep"]
    out = flagged[d["action"].to_numpy()[flagged] != "keep"]
    assert (d["action"][out] == "relabel").all() and (d["label"][out] == 1).all()
    assert (d["reason"][out] == "label_issue").all()
    if keep == 0.0:
        assert len(back) == 0
    else:
        assert len(back) == math.ceil(keep * 100) - 10
        assert (d["label"][back] == 0).all() and (d["reason"][back] == "").all()
        # the least suspicious come back first
        assert d["self_confidence"][back].min() >= d["self_confidence"][out].max()
    # the other classes are untouched
    assert (d["label"][100:].to_numpy() == given[100:]).all()


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
    ([0, 1], [0.35, 0.25, 0.4], 2),  # conflict, third class most likely though below 0.5: take it
])
@pytest.mark.parametrize("first_at", [0, 150])
def test_duplicate_groups_keep_one_probable_copy(group_given, group_probs, expected, first_at):
    given, probs, group, rows = dup_case(group_given, group_probs, first_at)
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=group, num_classes=3)
    first, copies = rows[0], rows[1:]
    assert d.at[first, "label"] == expected
    assert d.at[first, "action"] == ("keep" if expected == group_given[0] else "relabel")
    conflict = len(set(group_given)) > 1
    assert d.at[first, "reason"] == ("duplicate_conflict" if conflict else "")
    assert (d["action"][copies] == "drop").all() and (d["reason"][copies] == "duplicate").all()
    assert (d["label"][rows] >= 0).sum() == 1


def test_by_default_a_conflicting_group_takes_its_most_likely_class():
    """The mean posterior's argmax, even when below 0.5: a moved image is never dropped."""
    given, probs, group, rows = dup_case([0, 1], [0.35, 0.25, 0.4], 0)
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=group, num_classes=3)
    assert d.at[rows[0], "label"] == 2 and d.at[rows[0], "reason"] == "duplicate_conflict"


def test_ood_copy_drops_whole_group():
    given, probs, group, rows = dup_case([1, 1], [0.05, 0.9, 0.05], 0)
    ood = np.zeros(300, bool)
    ood[rows[1]] = True
    d = decide(given, probs, ood_flags=ood, dup_group=group, num_classes=3)
    assert (d["reason"][rows] == "ood").all() and (d["label"][rows] == -1).all()


def near_case(group_given, group_probs):
    """``dup_case``'s rows as near-copies: distinct files in one near-copy group."""
    given, probs, _, rows = dup_case(group_given, group_probs, 0)
    near = np.arange(300)
    near[rows] = 1000
    return given, probs, np.arange(300), near, rows


@pytest.mark.parametrize("group_given, group_probs, expected", [
    ([0, 1], [0.3, 0.6, 0.1], 1),  # conflict: the probable given label, for both copies
    ([1, 0, 0], [0.55, 0.4, 0.05], 0),  # majority and probability agree
    ([0, 1], [0.1, 0.15, 0.75], 2),  # conflict, third class confident: every copy takes it
])
def test_a_near_copy_group_with_conflicting_labels_gets_one_label_and_keeps_every_copy(
        group_given, group_probs, expected):
    given, probs, dup, near, rows = near_case(group_given, group_probs)
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=dup, num_classes=3,
               near_group=near)
    assert (d["label"][rows] == expected).all()
    assert list(d["action"][rows]) == ["keep" if g == expected else "relabel" for g in group_given]
    assert (d["reason"][rows] == "near_copy_conflict").all()
    alone = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=dup, num_classes=3)
    assert not alone["reason"].isin(["near_copy_conflict", "duplicate_conflict"]).any()


def test_an_agreeing_near_copy_group_is_judged_on_its_mean():
    """Two copies given 0: one looks like a 0, the other clearly like a 1; their mean says 1, so
    both move, where alone only the second would."""
    given, probs, dup, near, rows = near_case([0, 0], [0.45, 0.5, 0.05])
    probs[rows[0]] = [0.5, 0.45, 0.05]
    probs[rows[1]] = [0.1, 0.85, 0.05]
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=dup, num_classes=3,
               near_group=near)
    assert (d["label"][rows] == 1).all() and (d["reason"][rows] == "label_issue").all()
    alone = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=dup, num_classes=3)
    assert list(alone["label"][rows]) == [0, 1]


def test_an_ood_near_copy_drops_its_whole_group():
    given, probs, dup, near, rows = near_case([1, 1], [0.05, 0.9, 0.05])
    ood = np.zeros(300, bool)
    ood[rows[1]] = True
    d = decide(given, probs, ood_flags=ood, dup_group=dup, num_classes=3, near_group=near)
    assert (d["reason"][rows] == "ood").all() and (d["label"][rows] == -1).all()


def test_byte_copies_inside_a_near_copy_group_keep_one_file_each():
    """Rows 0 and 160 are one file, 200 a near-copy of it: 160 is dropped as a copy, 0 and 200
    share the group's label."""
    given, probs, dup, near, rows = near_case([0, 0, 1], [0.2, 0.7, 0.1])
    dup[rows[1]] = dup[rows[0]]
    d = decide(given, probs, ood_flags=np.zeros(300, bool), dup_group=dup, num_classes=3,
               near_group=near)
    assert d.at[rows[1], "reason"] == "duplicate" and d.at[rows[1], "label"] == -1
    assert list(d["label"][[rows[0], rows[2]]]) == [1, 1]
    assert set(d["reason"][[rows[0], rows[2]]]) == {"near_copy_conflict"}
    assert d["copy_group"][rows].nunique() == 1 and d["copy_group"].nunique() == 300 - 2


def test_copy_groups_join_byte_and_near_copy_links():
    dup = np.array([0, 1, 0, 2, 3, 4])  # rows 0 and 2 are one file
    near = np.array([0, 1, 2, 1, 4, 4])  # 1 ~ 3 and 4 ~ 5 are near-copies; 2 alone
    assert copy_groups(dup, near).tolist() == [0, 1, 0, 1, 2, 2]
    assert copy_groups(dup).tolist() == [0, 1, 0, 2, 3, 4]
    assert copy_groups(np.array([7, 3, 7])).tolist() == [0, 1, 0]


def test_summarise_counts(noisy):
    _, given, _, _, ood, probs = noisy
    d = decide(given, probs, ood_flags=ood, dup_group=np.arange(len(given)), num_classes=K)
    s = summarise(d, num_classes=K)
    assert s["n"] == len(given) and sum(s["by_action"].values()) == len(given)
    assert s["by_reason"]["ood"] == int(ood.sum())
    assert sum(c["final"] for c in s["per_class"]) == s["kept"] == int((d["label"] >= 0).sum())
    assert [c["given"] for c in s["per_class"]] == np.bincount(given, minlength=K).tolist()
    assert np.asarray(s["relabel_matrix"]).sum() == s["by_action"]["relabel"]


def test_out_of_sample_probs_do_not_depend_on_the_number_of_fold_threads():

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


def test_map_folds_holds_the_blas_cap_while_any_fold_still_runs():
    """A fold that ends first must not lift the cap under one still fitting: the BLAS thread
    count is process-wide, and a lifted cap changes the float sums of the running fit."""
    import threading
    import time

    from threadpoolctl import threadpool_info, threadpool_limits

    from animal_assets.core.probe import map_folds

    def blas_threads():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    started = threading.Barrier(2)

    def fit(fold):
        started.wait()
        time.sleep(0.05 if fold == 0 else 0.4)  # fold 0 ends and restores first
        return blas_threads()

    # Two BLAS threads outside the folds, whatever the process started with (a test worker's
    # share of the cores may be one), so that a lifted cap would show.
    with threadpool_limits(limits=2, user_api="blas"):
        if not blas_threads() or max(blas_threads()) < 2:
            pytest.skip("this BLAS cannot run two threads: a lifted cap would not show")
        seen = map_folds(fit, 2, n_jobs=2, n_threads=1)
        assert max(blas_threads()) == 2
    assert seen == [[1] * len(seen[0]), [1] * len(seen[1])], seen


@pytest.mark.parametrize("value, expected", [("3", 3), (" 1 ", 1), ("0", None), ("two", None)])
def test_the_number_of_fold_threads_comes_from_the_environment(monkeypatch, value, expected):
    from animal_assets.core.jobs import JOBS_VARIABLE, default_jobs
    from animal_assets.core.probe import map_folds

    monkeypatch.setenv(JOBS_VARIABLE, value)
    if expected is None:
        with pytest.raises(ValueError, match=JOBS_VARIABLE):
            default_jobs()
        return
    assert default_jobs() == expected
    assert map_folds(lambda fold: fold * 2, 4, n_jobs=None, n_threads=1) == [0, 2, 4, 6]
    monkeypatch.delenv(JOBS_VARIABLE)
    assert default_jobs() >= 1

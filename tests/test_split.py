"""Tests of the validation split and of the class-balancing plan."""
from __future__ import annotations

import sys
import types

import numpy as np
import pandas as pd
import pytest

from animal_assets.core.cleaning import decide, duplicate_groups
from animal_assets.core.probe import out_of_sample_probs
from animal_assets.core.split import balance_plan, distinct_counts, make_balanced_images, select_val


def decisions_table(seed: int, counts=(400, 150, 260)):
    """A decide()-shaped table mixing clean keeps, flagged keeps, relabels, conflicts and drops."""
    rng = np.random.default_rng(seed)
    given = np.repeat(np.arange(len(counts)), counts)
    n = len(given)
    kind = rng.choice(["keep", "flagged_keep", "relabel", "conflict", "drop"], size=n,
                      p=[0.6, 0.1, 0.1, 0.05, 0.15])
    label = np.where(kind == "relabel", (given + 1) % len(counts), given)
    label[kind == "drop"] = -1
    frame = pd.DataFrame({
        "given": given,
        "label": label,
        "action": np.select([kind == "relabel", kind == "drop"], ["relabel", "drop"], "keep"),
        "reason": np.select([kind == "relabel", kind == "drop", kind == "conflict"],
                            ["label_issue", "label_issue", "duplicate_conflict"], ""),
        "confidence": rng.uniform(0.2, 1.0, n).round(2),  # rounded: plenty of ties
        "label_issue": (kind == "flagged_keep") | (kind == "relabel") | (kind == "drop"),
    })
    return frame, np.arange(n)


def clean_candidates(frame):
    return ((frame["action"] == "keep") & (frame["reason"] == "") & ~frame["label_issue"]).to_numpy()


@pytest.mark.parametrize("per_class, max_fraction", [(100, 0.2), (5, 0.5), (1000, 0.1), (30, 1.0)])
def test_select_val_balanced_capped_and_clean(per_class, max_fraction):
    frame, group = decisions_table(0)
    trust = frame["confidence"].to_numpy()
    val = select_val(frame, trust, dup_group=group, num_classes=3, per_class=per_class,
                     max_fraction=max_fraction, seed=0)
    ok = clean_candidates(frame)
    assert ok[val].all()  # never a flagged, relabelled, contested or dropped image
    label = frame["label"].to_numpy()
    pools = [np.flatnonzero(ok & (label == k)) for k in range(3)]
    expected = min(min(per_class, int(max_fraction * len(p))) for p in pools)
    assert np.bincount(label[val], minlength=3).tolist() == [expected] * 3
    for pool in pools:  # the most trusted of each class
        chosen, rest = pool[val[pool]], pool[~val[pool]]
        if len(rest):
            assert trust[chosen].min() >= trust[rest].max()


def test_select_val_keeps_duplicate_groups_on_one_side():
    frame, group = decisions_table(1)
    trust = frame["confidence"].to_numpy().copy()
    keepers = np.flatnonzero(clean_candidates(frame))
    group[keepers[1]] = group[keepers[0]]  # two kept byte-identical copies: neither may go to val
    trust[keepers[:2]] = 2.0  # they would be the first choice otherwise
    dropped = np.flatnonzero(frame["label"].to_numpy() == -1)[0]
    group[dropped] = group[keepers[2]]  # a twin that cleaning dropped does not block its copy
    trust[keepers[2]] = 2.0
    val = select_val(frame, trust, dup_group=group, num_classes=3, seed=0)
    assert not val[keepers[:2]].any() and val[keepers[2]]
    train = (frame["label"].to_numpy() >= 0) & ~val
    assert not set(group[val]) & set(group[train])


def test_select_val_end_to_end_twins_never_cross():
    rng = np.random.default_rng(7)
    true = np.repeat([0, 1, 2], [200, 120, 160])
    x = rng.normal(size=(len(true), 16)) + 4 * np.eye(16)[true]
    given = true.copy()
    twins = rng.choice(len(true), 60, replace=False)  # append byte-identical copies, half relabelled
    x = np.r_[x, x[twins]]
    given = np.r_[given, np.where(np.arange(60) % 2 == 0, given[twins], (given[twins] + 1) % 3)]
    hashes = [f"h{i}" for i in range(len(true))] + [f"h{i}" for i in twins]
    group = duplicate_groups(hashes)
    probs = out_of_sample_probs(x, given, num_classes=3, groups=group, seed=0)
    d = decide(given, probs, ood_flags=np.zeros(len(given), bool), dup_group=group, num_classes=3)
    val = select_val(d, d["confidence"].to_numpy(), dup_group=group, num_classes=3, seed=0)
    train = (d["label"].to_numpy() >= 0) & ~val
    assert val.sum() > 0 and len(set(np.bincount(d["label"][val], minlength=3))) == 1
    assert not set(group[val]) & set(group[train])
    assert len(set(group[train])) == train.sum()  # no image twice in training either


def test_select_val_refuses_a_starved_class():
    frame, group = decisions_table(2, counts=(300, 300, 4))
    with pytest.raises(ValueError, match=r"split.py: classes \[2\]"):
        select_val(frame, frame["confidence"].to_numpy(), dup_group=group, num_classes=3)


def test_select_val_skips_a_class_without_images():
    frame, group = decisions_table(4, counts=(300, 260))  # labels 0 and 1 only
    trust = frame["confidence"].to_numpy()
    with_empty = select_val(frame, trust, dup_group=group, num_classes=3, seed=0)
    without = select_val(frame, trust, dup_group=group, num_classes=2, seed=0)
    assert np.array_equal(with_empty, without)  # the empty class neither lowers n nor shifts the draw
    counts = np.bincount(frame["label"].to_numpy()[with_empty], minlength=3)
    assert counts[2] == 0 and counts[0] == counts[1] > 0


@pytest.mark.parametrize("case, detail", [
    ("one_image", "class 2 has 0 trustworthy images (1 given, 0 after cleaning)"),
    ("only_relabelled_in", "class 2 has 0 trustworthy images (0 given, 7 after cleaning)"),
    ("four_trusted", "class 2 has 4 trustworthy images (4 given, 4 after cleaning)"),
])
def test_select_val_names_a_class_with_images_but_too_few_trusted(case, detail):
    frame, group = decisions_table(5, counts=(300, 260))
    extra = {"one_image": 1, "only_relabelled_in": 7, "four_trusted": 4}[case]
    rows = pd.DataFrame({
        "given": 2 if case != "only_relabelled_in" else 0,
        "label": -1 if case == "one_image" else 2,
        "action": {"one_image": "drop", "only_relabelled_in": "relabel", "four_trusted": "keep"}[case],
        "reason": "" if case == "four_trusted" else "label_issue",
        "confidence": 0.9, "label_issue": case != "four_trusted",
    }, index=range(extra))
    frame = pd.concat([frame, rows], ignore_index=True)
    group = np.arange(len(frame))
    with pytest.raises(ValueError) as err:
        select_val(frame, frame["confidence"].to_numpy(), dup_group=group, num_classes=3)
    assert str(err.value) == (
        f"split.py: classes [2] have too few trustworthy images for a validation set: {detail}; "
        "with max_fraction 0.2 a class needs at least 5 (kept with its given label, not flagged "
        "as a label issue, no kept byte-identical twin)"
    )


def test_select_val_deterministic_and_seeded_ties():
    frame, group = decisions_table(3)
    flat = np.ones(len(frame))  # all tied: the seed decides
    a = select_val(frame, flat, dup_group=group, num_classes=3, seed=0)
    b = select_val(frame, flat, dup_group=group, num_classes=3, seed=0)
    c = select_val(frame, flat, dup_group=group, num_classes=3, seed=1)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and a.sum() == c.sum()


# --- balance_plan ---------------------------------------------------------------------------


@pytest.mark.parametrize("target, max_factor, expected", [
    (None, 3.0, [500, 300, 60, 0]),  # class 2 capped at 3x20, empty class stays empty
    (None, 100.0, [500, 500, 500, 0]),
    (250, 3.0, [500, 250, 60, 0]),  # no class is subsampled
    (None, 1.0, [500, 100, 20, 0]),  # factor 1: no oversampling
])
def test_balance_plan_counts(target, max_factor, expected):
    labels = np.repeat([0, 1, 2, -1], [500, 100, 20, 30])
    source, generated = balance_plan(labels, num_classes=4, target=target, max_factor=max_factor, seed=0)
    assert np.bincount(labels[source], minlength=4).tolist() == expected
    originals = source[~generated]
    assert sorted(originals.tolist()) == np.flatnonzero(labels >= 0).tolist()  # each original once
    for k in range(3):
        reps = np.bincount(source[generated & (labels[source] == k)], minlength=len(labels))
        reps = reps[labels == k]
        assert reps.max() - reps.min() <= 1  # repeats spread evenly over the class


def test_balance_plan_respects_exclude_and_is_deterministic():
    labels = np.repeat([0, 1], [90, 30])
    val = np.zeros(120, bool)
    val[[0, 1, 100, 101]] = True
    s1, g1 = balance_plan(labels, num_classes=2, exclude=val, seed=4)
    s2, g2 = balance_plan(labels, num_classes=2, exclude=val, seed=4)
    s3, _ = balance_plan(labels, num_classes=2, exclude=val, seed=5)
    assert not val[s1].any()
    assert np.bincount(labels[s1]).tolist() == [88, 84]
    assert np.array_equal(s1, s2) and np.array_equal(g1, g2) and not np.array_equal(s1, s3)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_balance_plan_without_copies_is_the_plan_of_single_images(seed):
    labels = np.random.default_rng(seed).integers(-1, 3, 300)
    plain = balance_plan(labels, num_classes=3, seed=seed)
    for keep_one in (False, True):
        grouped = balance_plan(labels, num_classes=3, group=np.arange(300) + 7, keep_one=keep_one, seed=seed)
        assert all(np.array_equal(a, b) for a, b in zip(plain, grouped))


def _with_copies():
    """Class 0: 10 photographs. Class 1: rows 10-15 are six copies of one photograph, rows 16-19
    four others and row 20 a copy of row 0, relabelled: 6 photographs in 11 images."""
    labels = np.repeat([0, 1], [10, 11])
    group = np.arange(21)
    group[10:16] = 10
    group[20] = 0
    return labels, group


def test_copies_count_once_towards_balance_and_are_not_repeated_more():
    labels, group = _with_copies()
    assert distinct_counts(labels, group, num_classes=2).tolist() == [10, 6]
    source, generated = balance_plan(labels, num_classes=2, group=group, max_factor=3.0, seed=0)
    assert sorted(source[~generated].tolist()) == list(range(21))  # keep_all: every image once
    repeats = source[generated]
    # class 1 counts 6 photographs (the relabelled copy of row 0 is one of them there) and is
    # lifted to 10 photographs' worth: 4 repeats, each of a different photograph, no copy of the
    # six-copy group but its first
    assert len(repeats) == 4 and len(set(repeats.tolist())) == 4
    assert set(repeats.tolist()) <= {10, 16, 17, 18, 19, 20}
    # without the groups class 1 counts 11 images, gets no repeat and sets the goal for class 0
    plain_source, plain_generated = balance_plan(labels, num_classes=2, max_factor=3.0, seed=0)
    assert labels[plain_source[plain_generated]].tolist() == [0]


def test_keep_one_exports_the_first_image_of_each_group_per_class():
    labels, group = _with_copies()
    source, generated = balance_plan(labels, num_classes=2, group=group, keep_one=True, seed=0)
    originals = sorted(source[~generated].tolist())
    assert originals == list(range(11)) + [16, 17, 18, 19, 20]
    assert np.bincount(labels[source], minlength=2).tolist() == [10, 10]


def test_balance_plan_refuses_groups_of_another_length():
    with pytest.raises(ValueError, match="group must have shape"):
        balance_plan(np.zeros(5, np.int64), num_classes=1, group=np.zeros(4, np.int64))


def test_make_balanced_images_augments_only_repeats(monkeypatch):
    calls = {}

    def fake(images, *, rotate_deg, translate, flip, seed):
        calls.update(n=len(images), rotate_deg=rotate_deg, translate=translate, flip=flip, seed=seed)
        return 255 - images

    monkeypatch.setitem(sys.modules, "animal_assets.core.augment",
                        types.SimpleNamespace(augment_uint8_images=fake))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    labels = np.repeat([0, 1], [7, 3])
    source, generated = balance_plan(labels, num_classes=2, seed=0)
    out = make_balanced_images(images, source, generated, seed=9, rotate_deg=5, translate=2)
    assert out.dtype == np.uint8 and out.shape == (len(source), 8, 8, 3)
    assert np.array_equal(out[~generated], images[source[~generated]])
    assert np.array_equal(out[generated], 255 - images[source[generated]])
    assert calls == {"n": int(generated.sum()), "rotate_deg": 5, "translate": 2, "flip": True, "seed": 9}


def test_make_balanced_images_with_real_augment():
    pytest.importorskip("animal_assets.core.augment")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16, 3), dtype=np.uint8)
    source, generated = balance_plan(np.repeat([0, 1], [7, 3]), num_classes=2, seed=0)
    a = make_balanced_images(images, source, generated, seed=1)
    b = make_balanced_images(images, source, generated, seed=1)
    assert a.dtype == np.uint8 and a.shape == (len(source), 16, 16, 3)
    assert np.array_equal(a[~generated], images[source[~generated]]) and np.array_equal(a, b)

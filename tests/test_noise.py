"""Tests for animal_assets.core.synthetic.noise: injected noise matches its spec and its written truth."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from animal_assets.core.synthetic.noise import NoiseSpec, inject_noise, n_ood_for, write_noisy_dataset
from animal_assets.core.truth import KINDS, read_truth

K = 6
PAIRS = ((0, 1), (2, 3))  # classes 4 and 5 stay unpaired
PARTNER = {0: 1, 1: 0, 2: 3, 3: 2}
NAME_RE = re.compile(r"^img_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jpg$")


def marked(n: int, *, ood: bool = False) -> np.ndarray:
    """(n, 64, 64, 3) images whose pixels encode their row, so every item can be traced back."""
    images = np.zeros((n, 64, 64, 3), dtype=np.uint8)
    rows = np.arange(n)
    images[:, :, :, 0] = (rows % 256)[:, None, None]
    images[:, :, :, 1] = (rows // 256)[:, None, None]
    images[:, :, :, 2] = 255 if ood else 0
    return images


def source_of(image: np.ndarray) -> tuple[bool, int]:
    """(is_ood, row) encoded by :func:`marked`."""
    return bool(image[0, 0, 2] == 255), int(image[0, 0, 0]) + 256 * int(image[0, 0, 1])


def make_clean(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    labels = np.random.default_rng(seed).integers(0, K, n)
    return marked(n), labels


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def check_ds801_basic(folder: Path, num_classes: int) -> dict[str, list[int]]:
    """The DS801 rules a writer must meet: names img_{uuid}.jpg, one-hot int lists, same keys."""
    labels = json.loads((folder / "data-labels.json").read_text())
    names = sorted(p.name for p in (folder / "imgs").iterdir())
    assert all(NAME_RE.match(n) for n in names)
    assert sorted(f"{k}.jpg" for k in labels) == names
    for value in labels.values():
        assert isinstance(value, list) and len(value) == num_classes
        assert all(type(v) is int and v in (0, 1) for v in value) and sum(value) == 1
    return labels


def within(observed: int, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(observed - n * p) <= sigmas * np.sqrt(n * p * (1 - p)) + 1


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.45])
def test_pair_flips_hit_rate_and_go_only_to_partner(rate):
    images, labels = make_clean(4000)
    noisy = inject_noise(images, labels, marked(0, ood=True), NoiseSpec(pairs=PAIRS, pair_flip_rate=rate),
                         num_classes=K, seed=1)
    paired = np.isin(noisy.true, list(PARTNER))
    flipped = noisy.kind == "flipped"
    assert within(int(flipped[paired].sum()), int(paired.sum()), rate)
    assert not flipped[~paired].any()
    assert all(g == PARTNER[t] for g, t in zip(noisy.given[flipped], noisy.true[flipped]))
    assert (noisy.given[~flipped] == noisy.true[~flipped]).all()


def test_per_class_pair_rates_flip_each_true_class_at_its_own_rate():
    images, labels = make_clean(4000)
    rates = (0.45, 0.10, 0.30, 0.0, 0.9, 0.9)  # 0 -> 1 at 0.45, 1 -> 0 at 0.10; 4 and 5 are unpaired
    noisy = inject_noise(images, labels, marked(0, ood=True), NoiseSpec(pairs=PAIRS, pair_flip_rate=rates),
                         num_classes=K, seed=1)
    flipped = noisy.kind == "flipped"
    for c, rate in enumerate(rates):
        members = noisy.true == c
        assert abs(flipped[members].mean() - (rate if c in PARTNER else 0.0)) <= 0.05
    assert all(g == PARTNER[t] for g, t in zip(noisy.given[flipped], noisy.true[flipped]))


def test_float_rate_gives_the_same_draws_as_equal_per_class_rates():
    images, labels = make_clean(1000)
    common = dict(pairs=PAIRS, symmetric_flip_rate=0.1, ood_fraction=0.1, n_dup_conflicts=4)
    a = inject_noise(images, labels, marked(150, ood=True), NoiseSpec(pair_flip_rate=0.3, **common),
                     num_classes=K, seed=11)
    b = inject_noise(images, labels, marked(150, ood=True), NoiseSpec(pair_flip_rate=(0.3,) * K, **common),
                     num_classes=K, seed=11)
    for name in ("images", "given", "true", "kind", "dup_of"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert (a.kind == "flipped").any()


def test_pair_rates_and_list_input():
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=[0.45, 0.1, 0.2, 0.3, 0.5, 0.6])
    assert spec.pair_flip_rate == (0.45, 0.1, 0.2, 0.3, 0.5, 0.6) and hash(spec) == hash(NoiseSpec(**spec.__dict__))
    assert spec.pair_rates(K).tolist() == [0.45, 0.1, 0.2, 0.3, 0.0, 0.0]
    assert NoiseSpec(pairs=PAIRS, pair_flip_rate=0.25).pair_rates(K).tolist() == [0.25] * 4 + [0.0] * 2
    with pytest.raises(ValueError, match="NoiseSpec.pair_flip_rate has 6 entries, num_classes is 4"):
        spec.pair_rates(4)


@pytest.mark.parametrize("kwargs,message", [
    ({"pair_flip_rate": (0.1, 1.5)}, r"pair_flip_rate\[1\] must lie in \[0, 1\]"),
    ({"pair_flip_rate": (-0.1, 0.2)}, r"pair_flip_rate\[0\] must lie in \[0, 1\]"),
    ({"pair_flip_rate": (0.1, 0.2, 0.7), "symmetric_flip_rate": 0.4}, r"pair_flip_rate\[2\].*class 2"),
    ({"pair_flip_rate": (0.1, 0.2), "symmetric_flip_rate": 1.2}, "symmetric_flip_rate must lie"),
])
def test_invalid_per_class_rates_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match="NoiseSpec") as info:
        NoiseSpec(**kwargs)
    assert re.search(message, str(info.value))


def test_per_class_rates_of_wrong_length_are_rejected():
    images, labels = make_clean(50)
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=(0.3, 0.1, 0.2))
    with pytest.raises(ValueError, match="inject_noise: pair_flip_rate has 3 entries, num_classes is 6"):
        inject_noise(images, labels, marked(0, ood=True), spec, num_classes=K, seed=0)


@pytest.mark.parametrize("rate", [0.1, 0.25])
def test_symmetric_flips_hit_rate_and_spread_over_other_classes(rate):
    images, labels = make_clean(4000)
    noisy = inject_noise(images, labels, marked(0, ood=True), NoiseSpec(symmetric_flip_rate=rate),
                         num_classes=K, seed=2)
    flipped = noisy.kind == "flipped"
    assert within(int(flipped.sum()), len(noisy), rate)
    assert (noisy.given[flipped] != noisy.true[flipped]).all()
    offsets = Counter(((noisy.given[flipped] - noisy.true[flipped]) % K).tolist())
    assert sorted(offsets) == list(range(1, K))
    assert all(within(n, int(flipped.sum()), 1 / (K - 1)) for n in offsets.values())


def test_pair_and_symmetric_rates_combine():
    images, labels = make_clean(6000)
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=0.2, symmetric_flip_rate=0.1)
    noisy = inject_noise(images, labels, marked(0, ood=True), spec, num_classes=K, seed=3)
    paired = np.isin(noisy.true, list(PARTNER))
    to_partner = np.array([PARTNER.get(t, -1) == g for t, g in zip(noisy.true, noisy.given)])
    assert within(int(to_partner[paired].sum()), int(paired.sum()), 0.2 + 0.1 / (K - 1))
    assert within(int((noisy.kind == "flipped")[~paired].sum()), int((~paired).sum()), 0.1)


@pytest.mark.parametrize("fraction,n_dup", [(0.0, 0), (0.06, 0), (0.1, 7), (0.3, 3)])
def test_ood_share_of_final_set_equals_spec(fraction, n_dup):
    images, labels = make_clean(900)
    spec = NoiseSpec(ood_fraction=fraction, n_dup_conflicts=n_dup)
    noisy = inject_noise(images, labels, marked(600, ood=True), spec, num_classes=K, seed=4)
    ood = noisy.kind == "ood"
    assert ood.sum() == n_ood_for(900 + n_dup, fraction)
    assert abs(ood.sum() / len(noisy) - fraction) <= 1 / len(noisy)
    assert (noisy.true[ood] == -1).all() and (noisy.true[~ood] >= 0).all()
    assert ((noisy.given >= 0) & (noisy.given < K)).all()
    sources = [source_of(img) for img in noisy.images[ood]]
    assert all(is_ood for is_ood, _ in sources) and len(set(sources)) == len(sources)


def test_class_keep_sets_per_class_counts():
    images, labels = make_clean(1200)
    keep = (1.0, 0.9, 0.75, 0.5, 0.3, 0.05)
    noisy = inject_noise(images, labels, marked(0, ood=True), NoiseSpec(class_keep=keep), num_classes=K, seed=5)
    for c, frac in enumerate(keep):
        assert (noisy.true == c).sum() == int(np.floor(frac * (labels == c).sum() + 0.5))
    rows = [source_of(img)[1] for img in noisy.images]
    assert len(set(rows)) == len(rows) and all(labels[r] == t for r, t in zip(rows, noisy.true))


@pytest.mark.parametrize("n_dup", [1, 12])
def test_dup_conflicts_copy_an_item_under_another_label(n_dup):
    images, labels = make_clean(300)
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=0.3, ood_fraction=0.1, n_dup_conflicts=n_dup)
    noisy = inject_noise(images, labels, marked(100, ood=True), spec, num_classes=K, seed=6)
    dups = np.flatnonzero(noisy.kind == "dup_conflict")
    assert len(dups) == n_dup and (noisy.dup_of[noisy.kind != "dup_conflict"] == -1).all()
    for i in dups:
        j = noisy.dup_of[i]
        assert noisy.kind[j] in ("clean", "flipped")
        assert np.array_equal(noisy.images[i], noisy.images[j])
        assert noisy.given[i] != noisy.given[j] and noisy.true[i] == noisy.true[j]


def test_same_seed_same_result_and_streams_are_independent():
    images, labels = make_clean(500)
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=0.3, ood_fraction=0.1, n_dup_conflicts=5,
                     class_keep=(1.0, 0.8, 1.0, 0.6, 1.0, 1.0))
    ood = marked(80, ood=True)
    a = inject_noise(images, labels, ood, spec, num_classes=K, seed=7)
    b = inject_noise(images, labels, ood, spec, num_classes=K, seed=7)
    c = inject_noise(images, labels, ood, spec, num_classes=K, seed=8)
    for name in ("images", "given", "true", "kind", "dup_of"):
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.given, c.given)
    # a different flip rate leaves the kept images, OOD picks and order untouched
    d = inject_noise(images, labels, ood, NoiseSpec(**{**spec.__dict__, "pair_flip_rate": 0.1}),
                     num_classes=K, seed=7)
    assert np.array_equal(a.images, d.images) and np.array_equal(a.true, d.true)


@pytest.mark.parametrize("kwargs", [
    {"pair_flip_rate": 1.5}, {"symmetric_flip_rate": -0.1},
    {"pair_flip_rate": 0.6, "symmetric_flip_rate": 0.6}, {"ood_fraction": 1.0},
    {"n_dup_conflicts": -1}, {"pairs": ((1, 1),)}, {"pairs": ((0, 1), (1, 2))},
    {"class_keep": (1.0, 0.0)},
])
def test_invalid_spec_is_rejected(kwargs):
    with pytest.raises(ValueError, match="NoiseSpec"):
        NoiseSpec(**kwargs)


@pytest.mark.parametrize("case,error", [
    ("few_ood", ValueError), ("keep_length", ValueError), ("label_range", ValueError),
    ("dtype", TypeError), ("shape", ValueError), ("pair_range", ValueError), ("too_many_dups", ValueError),
])
def test_invalid_inputs_are_rejected(case, error):
    images, labels = make_clean(50)
    ood, spec = marked(5, ood=True), NoiseSpec()
    if case == "few_ood":
        spec = NoiseSpec(ood_fraction=0.5)
    elif case == "keep_length":
        spec = NoiseSpec(class_keep=(1.0, 1.0))
    elif case == "label_range":
        labels = labels.copy()
        labels[0] = K
    elif case == "dtype":
        images = images.astype(np.float32)
    elif case == "shape":
        images = images[:, :32]
    elif case == "pair_range":
        spec = NoiseSpec(pairs=((0, K),))
    elif case == "too_many_dups":
        spec = NoiseSpec(n_dup_conflicts=51)
    with pytest.raises(error, match="inject_noise|NoiseSpec"):
        inject_noise(images, labels, ood, spec, num_classes=K, seed=0)


@pytest.fixture
def small_noisy():
    # random pixels: flat marked images can share a JPEG encoding, which would blur the dup check
    rng = np.random.default_rng(9)
    images, ood = (rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (80, 20))
    spec = NoiseSpec(pairs=PAIRS, pair_flip_rate=0.3, ood_fraction=0.1, n_dup_conflicts=5)
    return inject_noise(images, rng.integers(0, K, 80), ood, spec, num_classes=K, seed=9)


def test_written_dataset_and_truth_agree(tmp_path, small_noisy):
    dataset_dir, truth_path = write_noisy_dataset(tmp_path / "out", small_noisy, num_classes=K, seed=9)
    assert dataset_dir.parent == truth_path.parent == tmp_path / "out"
    assert not any(p.name == "truth.json" for p in dataset_dir.rglob("*"))
    labels = check_ds801_basic(dataset_dir, K)
    truth = read_truth(truth_path, num_classes=K)
    assert set(truth) == set(labels)
    assert all(labels[k].index(1) == v["given"] for k, v in truth.items())
    assert Counter(v["kind"] for v in truth.values()) == Counter(
        {k: n for k, n in small_noisy.counts().items() if n})
    by_bytes: dict[bytes, list[str]] = {}
    for key in truth:
        by_bytes.setdefault((dataset_dir / "imgs" / f"{key}.jpg").read_bytes(), []).append(key)
    dups = [k for k, v in truth.items() if v["kind"] == "dup_conflict"]
    assert len(dups) == 5
    for key in dups:
        group = next(g for g in by_bytes.values() if key in g)
        assert len(group) == 2
        original = next(k for k in group if k != key)
        assert truth[original]["kind"] in ("clean", "flipped")
        assert truth[original]["given"] != truth[key]["given"]
    assert sum(len(g) for g in by_bytes.values() if len(g) > 1) == 10


def test_written_dataset_passes_format_validation(tmp_path, small_noisy):
    from animal_assets.core.export import validate_ds801_folder

    dataset_dir, _ = write_noisy_dataset(tmp_path, small_noisy, num_classes=K, seed=9)
    assert validate_ds801_folder(dataset_dir) == []


def test_writing_is_deterministic(tmp_path, small_noisy):
    for name in ("a", "b"):
        write_noisy_dataset(tmp_path / name, small_noisy, num_classes=K, seed=9)
    write_noisy_dataset(tmp_path / "c", small_noisy, num_classes=K, seed=10)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b") != tree_digest(tmp_path / "c")


GOOD_KEY = "img_00000000-0000-4000-8000-000000000000"


@pytest.mark.parametrize("entry,problem", [
    ({"true": 1, "given": 1}, "exactly true, given, kind"),
    ({"true": 1, "given": 1, "kind": "clean", "x": 0}, "exactly true, given, kind"),
    ({"true": -2, "given": 1, "kind": "flipped"}, "'true'"),
    ({"true": 1, "given": True, "kind": "clean"}, "'given'"),
    ({"true": 1, "given": 1.0, "kind": "clean"}, "'given'"),
    ({"true": 1, "given": 1, "kind": "noisy"}, "'kind'"),
    ({"true": 1, "given": 2, "kind": "ood"}, "exactly for kind 'ood'"),
    ({"true": -1, "given": 2, "kind": "clean"}, "exactly for kind 'ood'"),
    ({"true": 1, "given": 2, "kind": "clean"}, "'clean'"),
    ({"true": 1, "given": 1, "kind": "flipped"}, "'flipped'"),
    ({"true": 1, "given": K, "kind": "flipped"}, "num_classes"),
])
def test_read_truth_rejects_bad_entries(tmp_path, entry, problem):
    path = tmp_path / "truth.json"
    path.write_text(json.dumps({GOOD_KEY: {"true": 0, "given": 0, "kind": "clean"}, GOOD_KEY[:-1] + "1": entry}))
    with pytest.raises(ValueError, match=re.escape(GOOD_KEY[:-1] + "1")) as info:
        read_truth(path, num_classes=K)
    assert problem in str(info.value)


@pytest.mark.parametrize("text,problem", [
    ("[]", "top level"), ("{", "not valid JSON"),
    (json.dumps({"img_1": {"true": 0, "given": 0, "kind": "clean"}}), "img_{uuid}"),
])
def test_read_truth_rejects_bad_files(tmp_path, text, problem):
    path = tmp_path / "truth.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(problem)):
        read_truth(path)


def test_kinds_are_the_documented_four():
    assert KINDS == ("clean", "flipped", "ood", "dup_conflict")

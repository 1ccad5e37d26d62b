"""Tests for animal_assets.core.synthetic.demo: the offline noisy-digits demo dataset."""
from __future__ import annotations

import hashlib
import io
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animal_assets.core.synthetic.demo import (
    DEMO_CLASS_KEEP,
    DEMO_PAIRS,
    demo_spec,
    make_demo_dataset,
    photo_crops,
    render_digits,
)
from animal_assets.core.truth import read_truth

NAME_RE = re.compile(r"^img_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jpg$")
PARTNER = {a: b for pair in DEMO_PAIRS for a, b in (pair, pair[::-1])}


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "tiny", seed=0, size="tiny")


def test_tiny_demo_holds_every_kind_of_noise(tiny):
    assert 170 <= sum(tiny.counts.values()) <= 230
    assert tiny.counts["dup_conflict"] == 4
    assert tiny.counts["ood"] > 0 and tiny.counts["flipped"] > 0 and tiny.counts["clean"] > 0
    assert tiny.num_classes == 10 and tiny.dataset_dir.parent == tiny.truth_path.parent


def test_tiny_demo_is_a_valid_ds801_folder_matching_its_truth(tiny):
    labels = json.loads((tiny.dataset_dir / "data-labels.json").read_text())
    names = sorted(p.name for p in (tiny.dataset_dir / "imgs").iterdir())
    assert all(NAME_RE.match(n) for n in names)
    assert sorted(f"{k}.jpg" for k in labels) == names
    assert all(len(v) == 10 and sum(v) == 1 and all(type(x) is int for x in v) for v in labels.values())
    truth = read_truth(tiny.truth_path, num_classes=10)
    assert set(truth) == set(labels)
    assert all(labels[k].index(1) == v["given"] for k, v in truth.items())
    assert Counter(v["kind"] for v in truth.values()) == Counter(tiny.counts)


def test_tiny_demo_passes_format_validation(tiny):
    from animal_assets.core.export import validate_ds801_folder

    assert validate_ds801_folder(tiny.dataset_dir) == []


def test_flips_mostly_go_to_the_look_alike_partner(tiny):
    truth = read_truth(tiny.truth_path)
    flipped = [v for v in truth.values() if v["kind"] == "flipped"]
    to_partner = sum(PARTNER[v["true"]] == v["given"] for v in flipped)
    # pair flips (0.15) outnumber symmetric ones (0.02, spread over nine classes) about 7 to 1
    assert to_partner / len(flipped) >= 0.7


def test_dup_conflicts_are_byte_identical_with_another_label(tiny):
    truth = read_truth(tiny.truth_path)
    by_bytes: dict[bytes, list[str]] = {}
    for key in truth:
        by_bytes.setdefault((tiny.dataset_dir / "imgs" / f"{key}.jpg").read_bytes(), []).append(key)
    groups = [g for g in by_bytes.values() if len(g) > 1]
    assert len(groups) == 4 and all(len(g) == 2 for g in groups)
    for group in groups:
        kinds = sorted(truth[k]["kind"] for k in group)
        assert kinds[1] == "dup_conflict" and kinds[0] in ("clean", "flipped")
        assert truth[group[0]]["given"] != truth[group[1]]["given"]
        assert truth[group[0]]["true"] == truth[group[1]]["true"] >= 0


def test_images_are_64px_rgb(tiny):
    for path in sorted((tiny.dataset_dir / "imgs").iterdir())[:20]:
        with Image.open(io.BytesIO(path.read_bytes())) as img:
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (64, 64)


@pytest.mark.parametrize("seed", [0, 3])
def test_same_seed_gives_byte_identical_output(tmp_path, seed):
    digests = {tree_digest(make_demo_dataset(tmp_path / f"{seed}-{i}", seed=seed, size="tiny").dataset_dir.parent)
               for i in range(2)}
    other = tree_digest(make_demo_dataset(tmp_path / "other", seed=seed + 1, size="tiny").dataset_dir.parent)
    assert len(digests) == 1 and other not in digests


def test_rebuild_replaces_its_own_folder_and_never_a_foreign_one(tmp_path):
    from animal_assets.core.atomic import OWNER_MARKER, ForeignFolderError

    make_demo_dataset(tmp_path / "d", seed=0, size="tiny")
    (tmp_path / "d" / "stale.txt").write_text("old")  # inside the tool's own (marked) folder
    demo = make_demo_dataset(tmp_path / "d", seed=0, size="tiny")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == [OWNER_MARKER, "train-set",
                                                                  "truth.json"]
    assert demo.truth_path.exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("work")
    with pytest.raises(ForeignFolderError, match="not written by animal-assets"):
        make_demo_dataset(tmp_path / "mine", seed=0, size="tiny")
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_rendered_digits_are_legible_and_varied():
    digits = np.zeros((30, 8, 8))
    digits[:, 1:7, 3:5] = 16  # a vertical bar: every image the same glyph
    images = render_digits(digits, np.random.default_rng(0))
    assert images.shape == (30, 64, 64, 3) and images.dtype == np.uint8
    luminance = images.mean(axis=3)
    assert (luminance.max(axis=(1, 2)) - luminance.min(axis=(1, 2)) >= 100).all()
    assert len({img.tobytes() for img in images}) == 30


def test_ood_crops_are_varied_and_not_flat():
    crops = photo_crops(40, np.random.default_rng(0))
    assert crops.shape == (40, 64, 64, 3) and crops.dtype == np.uint8
    assert len({c.tobytes() for c in crops}) == 40
    spread = crops.reshape(40, -1, 3).std(axis=1).mean(axis=1)
    assert np.median(spread) >= 15
    assert np.std(crops.reshape(40, -1, 3).mean(axis=1), axis=0).mean() >= 10  # colours differ


def test_spec_matches_documented_noise():
    spec = demo_spec("demo")
    assert spec.pairs == DEMO_PAIRS and sorted(c for p in DEMO_PAIRS for c in p) == list(range(10))
    assert spec.pair_flip_rate == 0.15 and spec.ood_fraction == 0.06 and spec.n_dup_conflicts == 10
    assert spec.class_keep == DEMO_CLASS_KEEP and min(DEMO_CLASS_KEEP) == 0.5


def test_unknown_size_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="demo size"):
        make_demo_dataset(tmp_path / "x", size="huge")
    assert not (tmp_path / "x").exists()


def test_full_demo_uses_every_digit(tmp_path):
    demo = make_demo_dataset(tmp_path / "demo", seed=0)
    in_dist = sum(n for k, n in demo.counts.items() if k != "ood")
    assert in_dist - 10 == sum(int(np.floor(f * n + 0.5)) for f, n in zip(
        DEMO_CLASS_KEEP, (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)))
    total = sum(demo.counts.values())
    assert abs(demo.counts["ood"] / total - 0.06) <= 1 / total
    assert len(list((demo.dataset_dir / "imgs").iterdir())) == total

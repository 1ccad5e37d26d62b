"""Tests for animal_assets.core.synthetic.benchmark: a known-truth benchmark from a clean class-folder tree."""
from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animal_assets.core.synthetic.benchmark import build_benchmark, main
from animal_assets.core.synthetic.spec import CIFAR_STANDARD, BenchmarkSettings, load_spec
from animal_assets.core.synthetic.noise import NoiseSpec, n_ood_for
from animal_assets.core.truth import read_truth

NAME_RE = re.compile(r"^img_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\.jpg$")
TRAIN = {"a": 30, "b": 25, "c": 20, "d": 15, "x": 12, "y": 12, "z": 3}  # x, y OOD; z never asked for
TEST = {"a": 2, "b": 3, "c": 4, "d": 5}
SPEC = NoiseSpec(pairs=((0, 1),), pair_flip_rate=0.3, ood_fraction=0.1, n_dup_conflicts=3)
CIFAR_IN, CIFAR_OOD = CIFAR_STANDARD.in_classes, CIFAR_STANDARD.ood_classes


def jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_tree(root: Path, train: dict[str, int], test: dict[str, int], seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, counts in (("train", train), ("test", test)):
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                (root / split / cls / f"{i:04d}.jpg").write_bytes(jpeg(rng))
    return root


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def ds801_labels(folder: Path, num_classes: int) -> dict[str, list[int]]:
    labels = json.loads((folder / "data-labels.json").read_text())
    names = sorted(p.name for p in (folder / "imgs").iterdir())
    assert all(NAME_RE.match(n) for n in names) and sorted(f"{k}.jpg" for k in labels) == names
    assert all(len(v) == num_classes and sum(v) == 1 and all(type(x) is int for x in v)
               for v in labels.values())
    return labels


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("src") / "subset", TRAIN, TEST)


def pack(tree: Path, dest: Path, kind: str) -> Path:
    """Pack ``tree`` (under its own top folder) as kind 'dir', 'tgz' or 'zip'."""
    if kind == "dir":
        return tree
    files = sorted(p for p in tree.rglob("*") if p.is_file())
    if kind == "tgz":
        path = dest / "subset.tgz"
        with tarfile.open(path, "w:gz") as tar:
            for f in files:
                tar.add(f, arcname=f"subset/{f.relative_to(tree).as_posix()}")
    else:
        path = dest / "subset.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for f in files:
                zf.write(f, arcname=f"subset/{f.relative_to(tree).as_posix()}")
    return path


def build(src, out, **overrides):
    kwargs = dict(in_classes=["d", "b", "a", "c"], ood_classes=["x", "y"], spec=SPEC, seed=5)
    return build_benchmark(src, out, **{**kwargs, **overrides})


@pytest.mark.parametrize("kind", ["dir", "tgz", "zip"])
def test_folder_and_archives_give_identical_output(tree, tmp_path, kind):
    src = pack(tree, tmp_path, kind)
    bench = build(src, tmp_path / "out")
    reference = build(tree, tmp_path / "ref")
    assert tree_digest(tmp_path / "out") == tree_digest(tmp_path / "ref")
    assert bench.class_names == ("d", "b", "a", "c")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".animal-assets", "benchmark.json", "test-set", "train-set", "truth.json"]
    assert reference.counts == bench.counts


def test_train_set_matches_truth_and_spec(tree, tmp_path):
    bench = build(tree, tmp_path / "out")
    labels = ds801_labels(bench.dataset_dir, 4)
    truth = read_truth(bench.truth_path, num_classes=4)
    assert set(truth) == set(labels) and all(labels[k].index(1) == v["given"] for k, v in truth.items())
    n_in = sum(TRAIN[c] for c in "abcd")
    kinds = Counter(v["kind"] for v in truth.values())
    assert kinds["ood"] == n_ood_for(n_in + 3, 0.1) and kinds["dup_conflict"] == 3
    true_counts = Counter(v["true"] for v in truth.values() if v["kind"] != "dup_conflict")
    assert [true_counts[k] for k in range(4)] == [TRAIN[c] for c in "dbac"]
    for v in truth.values():
        if v["kind"] == "flipped":  # only pair 0<->1 (d<->b) flips
            assert {v["true"], v["given"]} == {0, 1}


def test_test_split_is_clean_and_in_class_order(tree, tmp_path):
    bench = build(tree, tmp_path / "out")
    labels = ds801_labels(bench.test_dir, 4)
    assert bench.n_test == len(labels) == sum(TEST.values())
    counts = Counter(v.index(1) for v in labels.values())
    assert [counts[k] for k in range(4)] == [TEST[c] for c in "dbac"]
    with Image.open(next((bench.test_dir / "imgs").iterdir())) as img:
        assert img.size == (64, 64) and img.mode == "RGB"
    assert not set(labels) & set(read_truth(bench.truth_path))


def test_written_sets_pass_format_validation(tree, tmp_path):
    from animal_assets.core.export import validate_ds801_folder

    bench = build(tree, tmp_path / "out")
    assert validate_ds801_folder(bench.dataset_dir) == []
    assert validate_ds801_folder(bench.test_dir) == []


def test_seed_changes_output_and_max_per_class_caps(tree, tmp_path):
    a, b = build(tree, tmp_path / "a"), build(tree, tmp_path / "b", seed=6)
    assert tree_digest(tmp_path / "a") != tree_digest(tmp_path / "b")
    capped = build(tree, tmp_path / "c", max_per_class=10, spec=NoiseSpec(ood_fraction=0.2))
    truth = read_truth(capped.truth_path)
    assert Counter(v["true"] for v in truth.values()) == {0: 10, 1: 10, 2: 10, 3: 10, -1: 10}
    assert capped.n_test == sum(TEST.values())
    assert a.counts != {} and b.counts != {}


def test_missing_test_split_gives_no_test_dir(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 5, "b": 5, "x": 5}, {})
    bench = build_benchmark(src, tmp_path / "out", in_classes=["a", "b"], ood_classes=["x"],
                            spec=NoiseSpec(ood_fraction=0.2), seed=0)
    assert bench.test_dir is None and bench.n_test == 0 and not (tmp_path / "out" / "test-set").exists()


@pytest.mark.parametrize("overrides,message", [
    ({"in_classes": ["a", "q"]}, r"\['q'\]"),
    ({"in_classes": ["a"]}, "at least 2"),
    ({"in_classes": ["a", "a"]}, "at least 2"),
    ({"ood_classes": ["a", "x"]}, "both in and OOD"),
    ({"max_per_class": 0}, "max_per_class"),
    ({"spec": NoiseSpec(ood_fraction=0.9)}, "OOD images needed"),
])
def test_bad_arguments_are_rejected(tree, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(tree, tmp_path / "out", **overrides)
    assert not (tmp_path / "out").exists()


def test_test_split_missing_a_class_is_rejected(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 5, "b": 5}, {"a": 2})
    with pytest.raises(ValueError, match=r"test split lacks classes \['b'\]"):
        build_benchmark(src, tmp_path / "out", in_classes=["a", "b"], ood_classes=[], spec=NoiseSpec(), seed=0)


@pytest.mark.parametrize("kind,name", [
    ("tar", "../evil/train/a/0000.jpg"), ("tar", "/abs/train/a/0000.jpg"),
    ("zip", "../evil/train/a/0000.jpg"), ("zip", "/abs/train/a/0000.jpg"), ("zip", "C:/x/train/a/0.jpg"),
])
def test_unsafe_member_names_are_refused(tmp_path, kind, name):
    data = jpeg(np.random.default_rng(0))
    if kind == "tar":
        src = tmp_path / "bad.tar.gz"
        with tarfile.open(src, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    else:
        src = tmp_path / "bad.zip"
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr(name, data)
    with pytest.raises(ValueError, match="absolute path or a '..' component"):
        build_benchmark(src, tmp_path / "out", in_classes=["a", "b"], ood_classes=[], spec=NoiseSpec(), seed=0)


def test_non_image_and_non_archive_sources_are_refused(tmp_path):
    src = make_tree(tmp_path / "src", {"a": 2, "b": 2}, {})
    (src / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        build_benchmark(src, tmp_path / "out", in_classes=["a", "b"], ood_classes=[], spec=NoiseSpec(), seed=0)
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(ValueError, match="not a folder, tar archive or zip archive"):
        build_benchmark(tmp_path / "plain.txt", tmp_path / "out", in_classes=["a", "b"], ood_classes=[],
                        spec=NoiseSpec(), seed=0)


def test_cifar_standard_settings():
    names = CIFAR_IN
    assert names == ("bird", "cat", "deer", "dog", "frog", "horse")
    assert set(CIFAR_OOD) == {"airplane", "automobile", "ship", "truck"}
    pairs = {frozenset((names[a], names[b])) for a, b in CIFAR_STANDARD.spec.pairs}
    assert pairs == {frozenset(p) for p in (("cat", "dog"), ("deer", "horse"), ("bird", "frog"))}
    spec = CIFAR_STANDARD.spec
    assert (spec.pair_flip_rate, spec.ood_fraction, spec.class_keep) == (0.30, 0.10, None)
    assert (spec.symmetric_flip_rate, spec.n_dup_conflicts) == (0.0, 0)


def test_cli_writes_the_standard_benchmark(tmp_path, capsys):
    src = make_tree(tmp_path / "cifar", {**{c: 12 for c in CIFAR_IN}, **{c: 6 for c in CIFAR_OOD}},
                    {c: 2 for c in CIFAR_IN})
    assert main([str(src), str(tmp_path / "out"), "--seed", "3", "--max-per-class", "10"]) == 0
    out = capsys.readouterr().out
    assert "test-set (12 images)" in out and re.search(r"ood: 7\b", out)
    meta = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert meta["class_names"] == list(CIFAR_IN) and meta["seed"] == 3 and meta["counts"]["ood"] == 7


def write_spec(path: Path, settings: dict) -> Path:
    if path.suffix == ".json":
        path.write_text(json.dumps(settings))
    else:
        import yaml

        path.write_text(yaml.safe_dump(settings))
    return path


def test_spec_file_json_and_yaml_give_the_same_settings(tmp_path):
    settings = {"in_classes": ["d", "b", "a", "c"], "ood_classes": ["x"], "pairs": [[0, 1], [2, 3]],
                "pair_flip_rate": [0.45, 0.1, 0.2, 0.0], "symmetric_flip_rate": 0.05, "ood_fraction": 0.2,
                "n_dup_conflicts": 2, "class_keep": [1.0, 0.5, 0.75, 1.0], "max_per_class": 9}
    expected = BenchmarkSettings(in_classes=("d", "b", "a", "c"), ood_classes=("x",), spec=NoiseSpec(
        pairs=((0, 1), (2, 3)), pair_flip_rate=(0.45, 0.1, 0.2, 0.0), symmetric_flip_rate=0.05, ood_fraction=0.2,
        n_dup_conflicts=2, class_keep=(1.0, 0.5, 0.75, 1.0)))
    for name in ("spec.json", "spec.yaml"):
        assert load_spec(write_spec(tmp_path / name, settings), seed=0) == (expected, 9)
    (tmp_path / "empty.yml").write_text("")
    assert load_spec(tmp_path / "empty.yml", seed=0) == (CIFAR_STANDARD, None)


def test_spec_file_class_keep_span_is_spread_in_a_seeded_order(tmp_path):
    path = write_spec(tmp_path / "spec.json", {"class_keep": {"from": 1.0, "to": 0.25}})
    keeps = [load_spec(path, seed=seed)[0].spec.class_keep for seed in range(6)]
    for keep in keeps:
        assert sorted(keep, reverse=True) == pytest.approx(np.linspace(1.0, 0.25, len(CIFAR_IN)).tolist())
        assert len(set(keep)) == len(CIFAR_IN) and max(keep) == 1.0 and min(keep) == 0.25
    assert load_spec(path, seed=3)[0].spec.class_keep == keeps[3]
    assert len(set(keeps)) > 1


def test_spec_file_asymmetric_rates_give_each_pair_one_forward_one_back(tmp_path):
    path = write_spec(tmp_path / "spec.yaml", {"in_classes": ["a", "b", "c", "d", "e"], "pairs": [[0, 1], [3, 2]],
                                               "asymmetric": {"forward": 0.35, "back": 0.10}})
    rates = [load_spec(path, seed=seed)[0].spec.pair_flip_rate for seed in range(6)]
    for rate in rates:
        assert sorted((rate[0], rate[1])) == sorted((rate[2], rate[3])) == [0.10, 0.35] and rate[4] == 0.0
    assert load_spec(path, seed=2)[0].spec.pair_flip_rate == rates[2]
    assert len(set(rates)) > 1


@pytest.mark.parametrize("settings,message", [
    ({"pair_flip_rat": 0.3}, "unknown key 'pair_flip_rat'"),
    ({"pair_flip_rate": 0.3, "asymmetric": {"forward": 0.35, "back": 0.1}}, "either 'asymmetric' or 'pair_flip_rate'"),
    ({"pair_flip_rate": [0.3, 0.1]}, "'pair_flip_rate' must be a number or a list of 6 numbers"),
    ({"pair_flip_rate": [0.3, 0.1, 0.2, 0.2, 1.5, 0.0]}, r"pair_flip_rate\[4\] must lie in \[0, 1\]"),
    ({"asymmetric": {"forward": 0.35}}, "'asymmetric' must be"),
    ({"asymmetric": {"forward": 0.9, "back": 0.1}, "symmetric_flip_rate": 0.2}, "resolved from 'asymmetric'"),
    ({"class_keep": {"from": 1.0, "to": 0.0}}, r"class_keep\[\d\] must lie in \(0, 1\]"),
    ({"class_keep": {"from": 1.0}}, "'class_keep' must be null"),
    ({"in_classes": ["a", "b"]}, r"'pairs' must be a list of \[int, int\] class indices in 0..1, the default is"),
    ({"pairs": [[0, 1], [1, 2]]}, "NoiseSpec.pairs"),
    ({"ood_classes": ["bird"]}, "'ood_classes' must not repeat in_classes"),
    ({"ood_fraction": "0.1"}, "'ood_fraction' must be a number"),
    ({"max_per_class": 0}, "'max_per_class' must be a positive integer"),
])
def test_bad_spec_files_are_rejected_naming_the_file(tmp_path, settings, message):
    path = write_spec(tmp_path / "bad.json", settings)
    with pytest.raises(ValueError, match=f"^{re.escape(str(path))}: ") as info:
        load_spec(path, seed=0)
    assert re.search(message, str(info.value))


def test_cli_builds_from_a_spec_file(tree, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.yaml", {
        "in_classes": ["d", "b", "a", "c"], "ood_classes": ["x", "y"], "pairs": [[0, 1]],
        "pair_flip_rate": [0.45, 0.10, 0.0, 0.0], "ood_fraction": 0.1, "max_per_class": 10})
    assert main([str(tree), str(tmp_path / "out"), "--spec", str(spec), "--seed", "2"]) == 0
    assert '"pair_flip_rate": [0.45, 0.1, 0.0, 0.0]' in capsys.readouterr().out
    meta = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert meta["class_names"] == ["d", "b", "a", "c"] and meta["ood_classes"] == ["x", "y"]
    assert meta["spec"]["pair_flip_rate"] == [0.45, 0.10, 0.0, 0.0] and meta["spec"]["pairs"] == [[0, 1]]
    assert meta["max_per_class"] == 10 and meta["seed"] == 2
    truth = read_truth(tmp_path / "out" / "truth.json")
    assert Counter(v["true"] for v in truth.values() if v["kind"] != "dup_conflict")[0] == 10
    assert main([str(tree), str(tmp_path / "out2"), "--spec", str(spec), "--max-per-class", "8"]) == 0
    assert json.loads((tmp_path / "out2" / "benchmark.json").read_text())["max_per_class"] == 8


def test_cli_reports_a_bad_spec_file(tree, tmp_path, capsys):
    spec = write_spec(tmp_path / "spec.json", {"colour": "red"})
    with pytest.raises(SystemExit) as info:
        main([str(tree), str(tmp_path / "out"), "--spec", str(spec)])
    assert info.value.code == 2 and "unknown key 'colour'" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


REAL_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset.tgz"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_CIFAR.exists(), reason=f"{REAL_CIFAR} not present")
def test_standard_benchmark_on_the_real_archive(tmp_path):
    start = time.perf_counter()
    bench = build_benchmark(REAL_CIFAR, tmp_path / "out", in_classes=CIFAR_IN, ood_classes=CIFAR_OOD,
                            spec=CIFAR_STANDARD.spec, seed=0, max_per_class=200)
    assert time.perf_counter() - start < 120
    assert bench.counts["ood"] == n_ood_for(1200, 0.1) and bench.n_test == 3000
    flipped = bench.counts["flipped"] / 1200
    assert 0.25 <= flipped <= 0.35

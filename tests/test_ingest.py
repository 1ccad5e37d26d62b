"""Tests of reading DS801 datasets from folders and archives: manifests, images, policies, errors.

Archive safety and image decoding have their own modules, tests/test_archive_safety.py and
tests/test_image_decoding.py."""
from __future__ import annotations

import io
import json
import tarfile
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from animal_assets.core.ds801 import write_ds801
from animal_assets.core.shards import shard_of
from animal_assets.core.ingest import (
    MANIFEST_COLUMNS, DatasetError, dataset_fingerprint, load_raw_images, merge_raw_shards,
    open_raw, read_dataset, read_dataset_shard, read_manifest, shard_key_of, summary,
)
from tests.fixtures import (
    REAL_DS801, image_bytes, image_paths, labels_of, make_archive, make_dataset, tree_hashes,
)

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _outputs(out: Path) -> dict[str, str]:
    hashes = tree_hashes(out)
    return {k: v for k, v in hashes.items() if k != "raw.json"}


def _violations(raw) -> list[dict]:
    return json.loads(Path(raw.violations_path).read_text())


def test_clean_folder(tmp_path):
    folder = make_dataset(tmp_path, n=9, k=3)
    raw = read_dataset(folder, tmp_path / "out")
    assert (raw.n_input_files, raw.n_label_entries, raw.n_usable, raw.num_classes) == (9, 9, 9, 3)
    assert not raw.blocking and _violations(raw) == []
    images, rows = load_raw_images(raw)
    assert images.shape == (9, 64, 64, 3) and images.dtype == np.uint8
    assert list(read_manifest(raw.manifest_path).columns) == list(MANIFEST_COLUMNS)
    assert list(rows["file"]) == sorted(rows["file"]) and list(rows["index"]) == list(range(9))
    labels = labels_of(folder)
    for i, row in rows.iterrows():
        original = (folder / row["file"]).read_bytes()
        assert (Path(raw.files_dir) / f"{row['id']}.jpg").read_bytes() == original
        assert np.array_equal(images[i], np.asarray(Image.open(io.BytesIO(original))))
        assert labels[row["id"]].index(1) == row["given"]
        assert (row["status"], row["reason"], row["width"], row["mode"]) == ("ok", "", 64, "RGB")
    assert open_raw(raw.root) == raw


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "tgz"])
@pytest.mark.parametrize("wrap", [None, "train-set"])
def test_archives_match_folder(tmp_path, kind, wrap):
    folder = make_dataset(tmp_path, n=7, k=3, seed=4)
    expected = read_dataset(folder, tmp_path / "from_folder")
    archive = make_archive(folder, kind, wrap=wrap)
    raw = read_dataset(archive, tmp_path / "from_archive")
    assert _outputs(Path(raw.root)) == _outputs(Path(expected.root))
    assert (raw.n_usable, raw.num_classes, raw.blocking) == (7, 3, False)
    assert raw.fingerprint == dataset_fingerprint(archive) != expected.fingerprint


def test_outputs_are_deterministic_and_replaced(tmp_path):
    folder = make_dataset(tmp_path, n=6, k=2)
    a = read_dataset(folder, tmp_path / "a")
    (tmp_path / "a" / "stale.txt").write_text("left over")
    a2 = read_dataset(folder, tmp_path / "a")
    b = read_dataset(folder, tmp_path / "b")
    assert not (tmp_path / "a" / "stale.txt").exists() and a2 == a
    assert _outputs(Path(a.root)) == _outputs(Path(b.root))


def _broken_dataset(tmp_path):
    """A dataset with one break of each kind; returns (folder, {file or id: expected reason})."""
    folder = make_dataset(tmp_path, n=10, k=3)
    imgs = image_paths(folder)
    labels = labels_of(folder)
    imgs[0].rename(imgs[0].with_name(imgs[0].name.replace(".jpg", ".JPG")))
    imgs[1].unlink()
    imgs[2].write_bytes(image_bytes(2, mode="L"))
    labels[imgs[3].name[:-4]] = [1, 1, 0]
    labels[imgs[4].name[:-4]] = [0, 1]
    (imgs[0].parent / f"img_{UUID}.jpg").write_bytes(image_bytes(11))
    labels["IMG_bad"] = [1, 0, 0]
    (folder / "data-labels.json").write_text(json.dumps(labels))
    (folder / "README.txt").write_text("notes")
    expected = {
        f"imgs/{imgs[0].name.replace('.jpg', '.JPG')}": "filename",
        imgs[0].name[:-4]: "label_has_image",  # pairing is exact, so the .JPG file pairs with no key
        imgs[1].name[:-4]: "label_has_image",
        f"imgs/{imgs[2].name}": "image_decodes",
        f"imgs/{imgs[3].name}": "label_one_hot",
        f"imgs/{imgs[4].name}": "label_length",
        f"imgs/img_{UUID}.jpg": "image_has_label",
        "IMG_bad": "label_key",
        "README.txt": "unexpected_file",
    }
    return folder, expected


def test_broken_dataset_rows_and_counts(tmp_path):
    folder, expected = _broken_dataset(tmp_path)
    raw = read_dataset(folder, tmp_path / "out", format_policy="quarantine")
    m = read_manifest(raw.manifest_path)
    got = {(row.file or row.id): row.reason for row in m.itertuples() if row.status == "quarantined"}
    assert got == expected
    assert raw.n_input_files == len(m[m.file != ""]) == 11
    labels = labels_of(folder)
    label_ids = [i for i in m.id if i in labels]
    assert sorted(label_ids) == sorted(labels) and len(labels) == raw.n_label_entries
    assert raw.n_usable == 5 == len(m[m.status == "ok"]) and not raw.blocking
    rules = {v["rule"] for v in _violations(raw)}
    assert set(expected.values()) <= rules
    images, rows = load_raw_images(raw)
    assert len(images) == len(rows) == 5 and set(rows.status) == {"ok"}
    s = summary(raw)
    assert s["status_counts"] == {"ok": 5, "quarantined": 9} and s["reasons"]["filename"] == 1
    assert sum(s["counts_per_class"].values()) == 5 and list(s["counts_per_class"]) == ["0", "1", "2"]
    assert s["images"]["modes"] == {"L": 1, "RGB": 9} and s["images"]["sizes"] == {"64x64": 10}
    json.dumps(s)


@pytest.mark.parametrize("fmt, dec, blocking", [
    ("strict", "quarantine", True), ("quarantine", "quarantine", False),
    ("quarantine", "strict", True), ("strict", "strict", True),
])
def test_policies_set_blocking_not_status(tmp_path, fmt, dec, blocking):
    folder, _ = _broken_dataset(tmp_path)
    raw = read_dataset(folder, tmp_path / "out", format_policy=fmt, decode_policy=dec)
    base = read_dataset(folder, tmp_path / "base", format_policy="quarantine")
    assert raw.blocking is blocking and (raw.format_policy, raw.decode_policy) == (fmt, dec)
    assert _outputs(Path(raw.root)) == _outputs(Path(base.root))


def test_unreadable_labels_quarantine_everything(tmp_path):
    folder = make_dataset(tmp_path, n=3, k=2)
    (folder / "data-labels.json").write_text('{"a": [1], "a": ')
    raw = read_dataset(folder, tmp_path / "out", format_policy="quarantine")
    m = read_manifest(raw.manifest_path)
    assert raw.n_usable == 0 and set(m.reason) == {"labels_json"} and len(m) == 3
    assert [v["rule"] for v in _violations(raw)] == ["labels_json"]
    assert np.load(raw.images_path).shape == (0, 64, 64, 3)


def _two_wrappers(tmp_path):
    a, b = make_dataset(tmp_path, n=2, name="a"), make_dataset(tmp_path, n=2, name="b")
    dest = tmp_path / "two.zip"
    with zipfile.ZipFile(dest, "w") as zf:
        for folder in (a, b):
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    zf.writestr(p.relative_to(tmp_path).as_posix(), p.read_bytes())
    return dest


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _read_in_shards(src: Path, out: Path, shards: int, **policies):
    parts = [read_dataset_shard(src, out / "shards" / str(k), shard=k, shards=shards)
             for k in range(shards)]
    return parts, merge_raw_shards(parts, out / "merged", **policies)


@pytest.mark.parametrize("kind", [None, "zip", "tgz"])
@pytest.mark.parametrize("shards", [1, 3, 4])
def test_read_in_shards_and_merged_is_read_whole(tmp_path, kind, shards):
    """Every shard reads and decodes only its images; merged, they are one read byte for byte:
    the broken dataset's quarantined rows, label entries without an image, the labels file's
    own violations and an archive hidden under imgs/ included."""
    folder, expected = _broken_dataset(tmp_path)
    inner = make_archive(make_dataset(tmp_path / "inner", n=2, k=3), "zip")
    (folder / "imgs" / f"img_{UUID[:-1]}f.jpg").write_bytes(inner.read_bytes())
    src = folder if kind is None else make_archive(folder, kind)
    whole = read_dataset(src, tmp_path / "whole", format_policy="quarantine")
    parts, merged = _read_in_shards(src, tmp_path, shards, format_policy="quarantine")
    assert "unexpected_file" in read_manifest(merged.manifest_path)["reason"].tolist()
    assert _outputs(Path(merged.root)) == _outputs(Path(whole.root))
    assert open_raw(merged.root) == replace(whole, **{f: getattr(merged, f) for f in (
        "root", "images_path", "manifest_path", "files_dir", "violations_path")})
    rows = [json.loads((Path(p.root) / "rows.json").read_text()) for p in parts]
    assert sum(map(len, rows)) == len(read_manifest(whole.manifest_path))
    for k, part in enumerate(parts):  # each row in its shard, usable images counted
        assert {shard_of(shard_key_of(r["file"].rsplit("/", 1)[-1] or r["id"]), shards)
                for r in rows[k]} <= {k}
        assert {shard_of(r["id"], shards) for r in rows[k] if r["status"] == "ok"} <= {k}
        assert part.n_usable == len(np.load(Path(part.root) / "images.npy")) == sum(
            r["status"] == "ok" for r in rows[k])
    # the labels file's own (a key's entry without an image goes with that key's shard)
    labels_file = [sum(v["file"].startswith("data-labels.json") and v["rule"] != "label_has_image"
                       for v in json.loads((Path(p.root) / "violations.json").read_text()))
                   for p in parts]
    assert labels_file[0] >= 1 and labels_file[1:] == [0] * (shards - 1)


def test_merged_shards_apply_the_policies_and_the_minimum(tmp_path):
    folder, _ = _broken_dataset(tmp_path)
    parts, strict = _read_in_shards(folder, tmp_path / "a", 3)
    assert strict.blocking and _outputs(Path(strict.root)) == _outputs(
        Path(read_dataset(folder, tmp_path / "whole").root))
    with pytest.raises(DatasetError, match="only 5 usable images .* the graph needs at least 6"):
        merge_raw_shards(parts, tmp_path / "b", format_policy="quarantine", minimum=6)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("case, match", [
    ("missing", "no such file or folder"),
    ("txt_file", "unsupported input"),
    ("no_labels", "no data-labels.json found"),
    ("two_wrappers", "more than one wrapping folder"),
    ("empty", "neither images nor label entries"),
    ("damaged_tgz", "damaged or unreadable"),
    ("damaged_zip", "damaged or unreadable"),
    ("out_inside_input", "must not contain or lie inside"),
    ("input_inside_out", "must not contain or lie inside"),
])
def test_dataset_errors(tmp_path, case, match):
    out = tmp_path / "out"
    folder = make_dataset(tmp_path, n=2, k=2)
    if case == "missing":
        path = tmp_path / "nope.tgz"
    elif case == "txt_file":
        path = _write(tmp_path / "data.txt", b"x")
    elif case == "no_labels":
        (folder / "data-labels.json").unlink()
        path = folder
    elif case == "two_wrappers":
        path = _two_wrappers(tmp_path)
    elif case == "empty":
        path = write_ds801(tmp_path / "empty", [], num_classes=2)
    elif case == "damaged_tgz":
        data = make_archive(folder, "tgz").read_bytes()
        path = _write(tmp_path / "cut.tgz", data[: len(data) // 2])
    elif case == "damaged_zip":
        path = _write(tmp_path / "bad.zip", b"PK\x03\x04 not really a zip")
    elif case == "out_inside_input":
        path, out = folder, folder / "out"
    else:
        path, out = folder, tmp_path
    with pytest.raises(DatasetError, match=match) as err:
        read_dataset(path, out)
    assert "\n" not in str(err.value)
    assert folder.exists() and not (folder / "out").exists()


def test_fingerprint_tracks_labels_and_listing(tmp_path):
    folder = make_dataset(tmp_path, n=4, k=2)
    first = dataset_fingerprint(folder)
    assert first == dataset_fingerprint(folder) and len(first) == 64
    labels = labels_of(folder)
    key = sorted(labels)[0]
    labels[key] = labels[key][::-1]
    (folder / "data-labels.json").write_text(json.dumps(labels, sort_keys=True) + "\n")
    relabelled = dataset_fingerprint(folder)
    (folder / "imgs" / f"img_{UUID}.jpg").write_bytes(image_bytes(3))
    added = dataset_fingerprint(folder)
    (folder / "imgs" / f"img_{UUID}.jpg").unlink()
    image_paths(folder)[0].unlink()
    removed = dataset_fingerprint(folder)
    assert len({first, relabelled, added, removed}) == 4
    archive = make_archive(folder, "zip")
    assert dataset_fingerprint(archive) == dataset_fingerprint(archive)


def _real_sample(tmp_path: Path, n: int) -> Path:
    """Copy the first ``n`` images of the real DS801 archive, and their labels, into a folder."""
    images, labels = {}, None
    with tarfile.open(REAL_DS801, "r|gz") as tf:
        for ti in tf:
            if ti.name.endswith("data-labels.json"):
                labels = json.load(tf.extractfile(ti))
            elif ti.isfile() and "/imgs/" in ti.name and len(images) < n:
                images[ti.name.rsplit("/", 1)[-1]] = tf.extractfile(ti).read()
            if labels is not None and len(images) == n:
                break
    folder = tmp_path / "sample"
    (folder / "imgs").mkdir(parents=True)
    for name, data in images.items():
        (folder / "imgs" / name).write_bytes(data)
    keys = {name[:-4] for name in images}
    (folder / "data-labels.json").write_text(json.dumps({k: v for k, v in labels.items() if k in keys}))
    return folder


@pytest.mark.slow
def test_real_ds801_sample(tmp_path):
    if not REAL_DS801.exists():
        pytest.skip(f"real DS801 archive not found at {REAL_DS801} (../shared/data is not checked out)")
    folder = _real_sample(tmp_path, 2000)
    raw = read_dataset(folder, tmp_path / "out")
    assert _violations(raw) == [] and not raw.blocking
    assert (raw.n_input_files, raw.n_usable, raw.num_classes) == (2000, 2000, 10)
    assert len(summary(raw)["counts_per_class"]) == 10
    assert all(c > 0 for c in summary(raw)["counts_per_class"].values())

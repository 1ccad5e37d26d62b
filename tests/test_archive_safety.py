"""Tests of archive and folder safety: the input is only read, never modified or extracted;
path traversal, absolute paths, links, device nodes, nested archives, control characters and
duplicate members are quarantined with the rule they break, and nothing is written outside the
output folder."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from animal_assets.core.ingest import read_dataset, read_manifest
from tests.fixtures import Extra, image_bytes, image_paths, labels_of, make_archive, make_dataset, tree_hashes

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def _violations(raw) -> list[dict]:
    return json.loads(Path(raw.violations_path).read_text())


@pytest.mark.parametrize("kind", [None, "zip", "tgz"])
def test_input_is_never_modified(tmp_path, kind):
    folder = make_dataset(tmp_path, n=5, k=2)
    (image_paths(folder)[0]).write_bytes(b"broken")
    target = folder if kind is None else make_archive(folder, kind)
    before = tree_hashes(target)
    read_dataset(target, tmp_path / "out", format_policy="quarantine")
    read_dataset(target, tmp_path / "out")
    assert tree_hashes(target) == before


HOSTILE = {
    "dotdot": (Extra("../evil.jpg", image_bytes(1)), "../evil.jpg", "safe_path"),
    "deep_dotdot": (Extra("ds/imgs/../../../evil.jpg", image_bytes(1)), "ds/imgs/../../../evil.jpg", "safe_path"),
    "absolute": (Extra("/tmp/abs.jpg", image_bytes(1)), "/tmp/abs.jpg", "safe_path"),
    "backslash": (Extra("imgs\\..\\evil.jpg", image_bytes(1)), "imgs\\..\\evil.jpg", "safe_path"),
    "symlink": (Extra(f"imgs/img_{UUID}.jpg", symlink="/etc/passwd"), f"imgs/img_{UUID}.jpg", "safe_path"),
    "symlink_dir": (Extra("imgs/up", symlink="../.."), "imgs/up", "safe_path"),
    "hardlink": (Extra(f"imgs/img_{UUID}.jpg", hardlink="/etc/passwd"), f"imgs/img_{UUID}.jpg", "safe_path"),
    "device": (Extra("imgs/dev", device=True), "imgs/dev", "safe_path"),
    "nested_zip_as_jpg": (
        Extra(f"imgs/img_{UUID}.jpg", b"PK\x03\x04" + b"\0" * 40), f"imgs/img_{UUID}.jpg", "unexpected_file"),
    "nested_tgz": (Extra("more.tgz", b"\x1f\x8b\x08" + b"\0" * 40), "more.tgz", "unexpected_file"),
    "control_char": (Extra("imgs/a\x1b[2J.jpg", image_bytes(1)), "imgs/a\\x1b[2J.jpg", "safe_path"),
}


@pytest.mark.parametrize("kind, case", [
    (kind, case) for case in sorted(HOSTILE) for kind in ("tgz", "zip")
    if kind == "tgz" or not (HOSTILE[case][0].hardlink or HOSTILE[case][0].device)  # zip has neither
])
def test_hostile_archive_members(tmp_path, kind, case):
    extra, shown, rule = HOSTILE[case]
    folder = make_dataset(tmp_path / "src", n=3, k=2)
    archive = make_archive(folder, kind, dest=tmp_path / f"in.{kind}", extra=[extra])
    before = tree_hashes(tmp_path)
    raw = read_dataset(archive, tmp_path / "work" / "out")
    after = {k: v for k, v in tree_hashes(tmp_path).items() if not k.startswith("work")}
    assert after == before, "something was written outside the output folder"
    assert not list(tmp_path.parent.glob("**/evil.jpg")) and not Path("/tmp/abs.jpg").exists()
    m = read_manifest(raw.manifest_path)
    rows = m[m.file == shown]
    assert len(rows) == 1 and rows.iloc[0].reason == rule and rows.iloc[0].status == "quarantined"
    assert any(v["rule"] == rule and v["message"].startswith(shown + ": ") for v in _violations(raw))
    assert raw.blocking and raw.n_usable == 3 and raw.n_input_files == 4
    assert (Path(raw.root) / "files").is_dir() and len(os.listdir(raw.files_dir)) == 3


def test_folder_links_are_not_followed(tmp_path):
    folder = make_dataset(tmp_path / "src", n=3, k=2)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(image_bytes(5))
    os.symlink(secret, folder / "imgs" / f"img_{UUID}.jpg")
    os.symlink(tmp_path, folder / "imgs" / "loop")
    raw = read_dataset(folder, tmp_path / "out")
    m = read_manifest(raw.manifest_path).set_index("file")
    assert m.loc[f"imgs/img_{UUID}.jpg", "reason"] == "safe_path" and m.loc[f"imgs/img_{UUID}.jpg", "sha256"] == ""
    assert m.loc["imgs/loop", "reason"] == "safe_path" and raw.n_usable == 3 and raw.blocking


def test_odd_names_in_folder_and_labels(tmp_path):
    folder = make_dataset(tmp_path / "src", n=2, k=2)
    (folder / "imgs" / "a\x1bb.jpg").write_bytes(image_bytes(1))
    (folder / "imgs" / os.fsdecode(b"caf\xe9.jpg")).write_bytes(image_bytes(2))
    labels = labels_of(folder)
    (folder / "data-labels.json").write_text(json.dumps(labels)[:-1] + ', "img_\\ud800": [1, 0]}')
    raw = read_dataset(folder, tmp_path / "out", format_policy="quarantine")
    m = read_manifest(raw.manifest_path).set_index("file")
    assert m.loc["imgs/a\\x1bb.jpg", "reason"] == "safe_path"
    assert m.loc["imgs/caf\\xe9.jpg", "reason"] == "safe_path"
    assert list(m[m.index == ""].reason) == ["label_key"] and raw.n_usable == 2
    assert any('"img_\\ud800"' in v["file"] for v in _violations(raw))


def test_duplicate_archive_members(tmp_path):
    folder = make_dataset(tmp_path / "src", n=3, k=2)
    name = image_paths(folder)[0].name
    archive = make_archive(folder, "tgz", extra=[Extra(f"imgs/{name}", image_bytes(7))])
    raw = read_dataset(archive, tmp_path / "out")
    m = read_manifest(raw.manifest_path)
    assert list(m[m.file == f"imgs/{name}"].reason) == ["safe_path", "safe_path"] and raw.n_usable == 2

"""Tests of the DS801 format rules: names, labels, the labels file and whole-folder validation.

Image decoding has its own module, tests/test_image_decoding.py."""
from __future__ import annotations

import json
import os

import pytest

from animal_assets.core import formats
from animal_assets.core.export import validate_ds801_folder
from animal_assets.core.formats import (
    FORMAT_RULES, IMAGE_RULES, Rule, Violation, blocking_rules, check_label,
    filename_violation, label_violation, parse_labels, read_labels,
)
from tests.fixtures import image_bytes, image_paths, labels_of, make_dataset

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"


def test_rule_names_are_stable_and_partitioned():
    assert [str(r) for r in Rule] == [
        "safe_path", "unexpected_file", "filename", "labels_json", "label_duplicate_key", "label_key",
        "label_length", "label_one_hot", "image_has_label", "label_has_image", "image_decodes",
    ]
    assert FORMAT_RULES | IMAGE_RULES == set(Rule) and not FORMAT_RULES & IMAGE_RULES
    assert IMAGE_RULES == {Rule.IMAGE_DECODES}
    groups = list(formats.RULE_GROUPS.values())
    assert set().union(*groups) == set(Rule) and sum(map(len, groups)) == len(Rule)


@pytest.mark.parametrize("fmt, dec, expected", [
    ("strict", "quarantine", FORMAT_RULES), ("quarantine", "quarantine", frozenset()),
    ("strict", "strict", FORMAT_RULES | IMAGE_RULES), ("quarantine", "strict", IMAGE_RULES),
])
def test_blocking_rules(fmt, dec, expected):
    assert blocking_rules(fmt, dec) == expected


@pytest.mark.parametrize("fmt, dec", [("lenient", "strict"), ("strict", "STRICT")])
def test_blocking_rules_rejects_unknown_policy(fmt, dec):
    with pytest.raises(ValueError, match="policy must be one of"):
        blocking_rules(fmt, dec)


def test_violation_message_names_file_and_rule():
    v = Violation.of("imgs/IMG_x.JPG", Rule.FILENAME, filename_violation("IMG_x.JPG"))
    assert v.rule == "filename" and v.file == "imgs/IMG_x.JPG"
    assert v.message.startswith("imgs/IMG_x.JPG: file name must match img_{uuid}.jpg")
    assert v.message.endswith("(rule filename)") and "\n" not in v.message
    assert v.to_dict() == {"file": v.file, "rule": "filename", "message": v.message}


@pytest.mark.parametrize("name", [f"img_{UUID}.jpg", "img_00000000-0000-0000-0000-000000000000.jpg"])
def test_valid_filenames(name):
    assert filename_violation(name) is None


@pytest.mark.parametrize("name", [
    f"img_{UUID}.JPG", f"img_{UUID}.jpeg", f"img_{UUID}.jpg.jpg", f"img_{UUID}.png", f"img_{UUID}",
    f"IMG_{UUID}.jpg", f"{UUID}.jpg", f"image_{UUID}.jpg", f"img-{UUID}.jpg", f"img_{UUID.upper()}.jpg",
    f"img_{UUID.replace('-', '')}.jpg", f"img_{{{UUID}}}.jpg", f"img_{UUID[:-1]}g.jpg", f"img_{UUID} .jpg",
    f" img_{UUID}.jpg", f"img_{UUID}.jpg\n", f"img_{UUID[:-1]}\u0663.jpg", f"img_{UUID}x.jpg",
    f"img_{UUID[:-1]}.jpg", f"img_{UUID}.jpg ", "img_.jpg", "", ".jpg", 7, None,
])
def test_invalid_filenames(name):
    problem = filename_violation(name)
    assert problem is not None and problem.startswith("file name must match img_{uuid}.jpg")


@pytest.mark.parametrize("value, k", [([0, 1, 0], 3), ([1], 1), ([0] * 9 + [1], 10)])
def test_valid_labels(value, k):
    assert check_label(value, k) is None and label_violation(value, k) is None


@pytest.mark.parametrize("value, rule", [
    ([0, True, 0], "label_one_hot"), ([0, 1.0, 0], "label_one_hot"), ([0, "1", 0], "label_one_hot"),
    ([0, None, 0], "label_one_hot"), ([[1], 0, 0], "label_one_hot"), ([0, 2, 0], "label_one_hot"),
    ([1, 1, 0], "label_one_hot"), ([0, 0, 0], "label_one_hot"), ([0, -1, 1], "label_one_hot"),
    (1, "label_one_hot"), ("[0,1,0]", "label_one_hot"), (None, "label_one_hot"), (True, "label_one_hot"),
    ({"a": 1}, "label_one_hot"), ([0, 1], "label_length"), ([0, 0, 1, 0], "label_length"), ([], "label_length"),
])
def test_invalid_labels(value, rule):
    found = check_label(value, 3)
    assert found is not None and found[0] == rule
    assert label_violation(value, 3) == found[1]


def _labels(entries: dict) -> bytes:
    return json.dumps(entries).encode()


def test_parse_labels_valid_and_infers_k():
    keys = [f"img_{i:08x}-0000-4000-8000-000000000000" for i in range(5)]
    table = read_labels(_labels({k: [0, 0, 1, 0] for k in keys}), source="data-labels.json")
    assert table.readable and table.num_classes == 4 and not table.violations
    assert table.classes == dict.fromkeys(keys, 2)
    values, violations = parse_labels(_labels({keys[0]: [1, 0]}), source="x.json")
    assert values == {keys[0]: [1, 0]} and violations == []


@pytest.mark.parametrize("data, detail", [
    (b"", "empty"), (b"  \n", "empty"), (b"{", "not valid JSON"), (b"{'a': [1]}", "not valid JSON"),
    (b"[]", "must be a JSON object"), (b'[{"img_x": [1]}]', "must be a JSON object"),
    (b'"text"', "must be a JSON object"), (b"null", "must be a JSON object"), (b"3", "must be a JSON object"),
    (b"\xff\xfe{}", "not UTF-8"), (b"[" * 100_000 + b"]" * 100_000, "JSON"),
])
def test_unreadable_labels_file(data, detail):
    table = read_labels(data, source="sub/data-labels.json")
    assert not table.readable and table.values == {}
    [v] = table.violations
    assert v.rule == "labels_json" and v.file == "sub/data-labels.json"
    assert v.message.startswith("sub/data-labels.json: ") and detail in v.message


def test_duplicate_keys_are_reported_not_last_wins():
    key, other = f"img_{UUID}", "img_11111111-2222-4333-8444-555555555555"
    data = f'{{"{key}": [1, 0], "{other}": [0, 1], "{key}": [0, 1]}}'.encode()
    table = read_labels(data, source="data-labels.json")
    assert table.problems == {key: Rule.LABEL_DUPLICATE_KEY} and table.classes == {other: 1}
    [v] = table.violations
    assert v.rule == "label_duplicate_key" and key in v.message and "2 times" in v.message


@pytest.mark.parametrize("key", ["IMG_x", f"img_{UUID}.jpg", f"img_{UUID.upper()}", "", f"imgs/img_{UUID}"])
def test_bad_label_keys(key):
    table = read_labels(_labels({key: [0, 1]}), source="data-labels.json")
    assert table.problems == {key: Rule.LABEL_KEY}
    [v] = table.violations
    assert v.rule == "label_key" and v.file == f"data-labels.json[{json.dumps(key)}]"
    assert v.message.startswith(v.file + ": ")


def test_label_length_uses_most_common_k():
    keys = [f"img_{i:08x}-0000-4000-8000-000000000000" for i in range(4)]
    data = _labels({keys[0]: [1, 0, 0], keys[1]: [0, 1, 0], keys[2]: [0, 0, 1], keys[3]: [0, 1]})
    table = read_labels(data, source="data-labels.json")
    assert table.num_classes == 3 and table.problems == {keys[3]: Rule.LABEL_LENGTH}
    [v] = table.violations
    assert v.rule == "label_length" and keys[3] in v.message and "K=3" in v.message


@pytest.mark.parametrize("value", [[0, True], [0, 1.0], [0, "1"], [0, None], [[1], 0], [0, 2], [1, 1], [0, 0]])
def test_bad_label_values_in_file(value):
    keys = [f"img_{i:08x}-0000-4000-8000-000000000000" for i in range(3)]
    data = _labels({keys[0]: [1, 0], keys[1]: [0, 1], keys[2]: value})
    table = read_labels(data, source="data-labels.json")
    assert table.problems == {keys[2]: Rule.LABEL_ONE_HOT} and set(table.classes) == set(keys[:2])
    assert [v.rule for v in table.violations] == ["label_one_hot"] and keys[2] in table.violations[0].message


def test_validate_clean_folder(tmp_path):
    assert validate_ds801_folder(make_dataset(tmp_path, n=6, k=2)) == []


def _mutate(folder, case):
    """Break ``folder`` in one way; return (rule, file expected in the message)."""
    imgs = image_paths(folder)
    labels = labels_of(folder)
    key = imgs[0].name[:-4]
    if case == "bad_name":
        imgs[0].rename(imgs[0].with_name(imgs[0].name.upper()))
        return "filename", f"imgs/{imgs[0].name.upper()}"
    if case == "image_without_label":
        (imgs[0].parent / f"img_{UUID}.jpg").write_bytes(image_bytes(9))
        return "image_has_label", f"imgs/img_{UUID}.jpg"
    if case == "label_without_image":
        imgs[0].unlink()
        return "label_has_image", key
    if case == "bad_label":
        labels[key] = [1, 1]
        (folder / "data-labels.json").write_text(json.dumps(labels))
        return "label_one_hot", key
    if case == "png_image":
        imgs[0].write_bytes(image_bytes(1, fmt="PNG"))
        return "image_decodes", imgs[0].name
    if case == "symlink":
        os.symlink("/etc/passwd", imgs[0].parent / f"img_{UUID}.jpg")
        return "safe_path", f"imgs/img_{UUID}.jpg"
    if case == "extra_file":
        (folder / "notes.txt").write_text("hi")
        return "unexpected_file", "notes.txt"
    if case == "sub_folder":
        (imgs[0].parent / "more").mkdir()
        return "unexpected_file", "imgs/more"
    if case == "labels_missing":
        (folder / "data-labels.json").unlink()
        return "labels_json", "data-labels.json"
    raise ValueError(case)


@pytest.mark.parametrize("case", [
    "bad_name", "image_without_label", "label_without_image", "bad_label", "png_image", "symlink",
    "extra_file", "sub_folder", "labels_missing",
])
def test_validate_folder_finds_each_break(tmp_path, case):
    folder = make_dataset(tmp_path, n=4, k=2)
    rule, named = _mutate(folder, case)
    violations = validate_ds801_folder(folder)
    assert any(v.rule == rule and named in v.message for v in violations), violations


def test_validate_rejects_non_folder(tmp_path):
    with pytest.raises(ValueError, match="not a folder"):
        validate_ds801_folder(tmp_path / "missing")


def test_limits_are_sane():
    assert formats.MAX_IMAGE_BYTES == 1 << 20 and formats.MAX_LABELS_BYTES > 2_333_732

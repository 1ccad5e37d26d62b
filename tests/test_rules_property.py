"""Property tests: the DS801 name and label rules agree with a second, independent statement of them.

The second statement is a JSON Schema for one label, checked with ``jsonschema.Draft4Validator``,
and one regular expression for names. Draft 4 on purpose: from Draft 6 on, "integer" accepts
``1.0``; in every draft jsonschema's "integer" excludes booleans (both checked below). Hypothesis
generates random JSON values, raw labels files (duplicate keys included) and hostile file names.
"""
from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from functools import lru_cache

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from animal_assets.core.formats import (
    Rule, check_label, filename_violation, key_violation, label_entry_name, label_violation,
    parse_labels, read_labels,
)

# the whole name, start to end of string (\Z: "$" would also accept a trailing newline)
NAME = re.compile(r"^img_[0-9a-f]{8}(?:-[0-9a-f]{4}){3}-[0-9a-f]{12}\.jpg\Z")
SOURCE = "data-labels.json"
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

#: one item of a label, in the eyes of the schema: a JSON integer that is 0 or 1
BIT = {"type": "integer", "enum": [0, 1]}


@lru_cache(maxsize=None)
def label_validator(k: int) -> jsonschema.Draft4Validator:
    """A valid label for K classes: K items, each BIT, and one of K one-hot patterns."""
    if k < 1:
        return jsonschema.Draft4Validator({"not": {}})  # nothing is valid when K is 0
    patterns = [
        {"items": [{"enum": [1]} if i == j else {"enum": [0]} for j in range(k)]}
        for i in range(k)
    ]
    schema = {"type": "array", "minItems": k, "maxItems": k, "items": BIT, "anyOf": patterns}
    jsonschema.Draft4Validator.check_schema(schema)
    return jsonschema.Draft4Validator(schema)


BITS_LIST = jsonschema.Draft4Validator({"type": "array", "items": BIT})
NONEMPTY_BITS_LIST = jsonschema.Draft4Validator({"type": "array", "minItems": 1, "items": BIT})


def oracle_label_rule(value: object, k: int) -> Rule | None:
    """The rule a label breaks per the schema: its length when every item is a bit, else one-hot."""
    if label_validator(k).is_valid(value):
        return None
    if BITS_LIST.is_valid(value) and len(value) != k:
        return Rule.LABEL_LENGTH
    return Rule.LABEL_ONE_HOT


def oracle_k(values: list[object]) -> int:
    """K: the length most lists of bits share, the longer one on a tie, 0 when there is none."""
    lengths = Counter(len(v) for v in values if NONEMPTY_BITS_LIST.is_valid(v))
    ranked = sorted(lengths.items(), key=lambda item: (-item[1], -item[0]))
    return ranked[0][0] if ranked else 0


# --------------------------------------------------------------------------------------------
# strategies

UUIDS = st.uuids().map(str)
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-3, 3) | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.sampled_from([0.0, 1.0, -0.0, 1e0, 0.5]) | st.text(max_size=4))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12,
)
# items that look like bits to a careless reader
NEAR_BITS = st.sampled_from([0, 1, 1, 0, 0, True, False, 1.0, 0.0, -0.0, 2, -1, "1", "0", None, [1], [0]])


@st.composite
def one_hot(draw, k: st.SearchStrategy[int] = st.integers(1, 6)) -> list[int]:
    n = draw(k)
    hot = draw(st.integers(0, n - 1))
    return [int(i == hot) for i in range(n)]


@st.composite
def near_one_hot(draw) -> list:
    """A valid one-hot list with one item swapped for a look-alike, or an item added or removed."""
    value = draw(one_hot())
    i = draw(st.integers(0, len(value)))
    how = draw(st.sampled_from(["swap", "insert", "delete"]))
    if how == "swap" and i < len(value):
        value[i] = draw(NEAR_BITS)
    elif how == "insert":
        value.insert(i, draw(NEAR_BITS))
    elif i < len(value):
        del value[i]
    return value


LABEL_VALUES = (one_hot() | near_one_hot() | st.lists(NEAR_BITS, max_size=7) | JSON_VALUES
                | st.lists(one_hot(), min_size=1, max_size=2))


def _mutate_name(u: str, how: str, pos: int, char: str) -> str:
    name = f"img_{u}.jpg"
    at = 4 + pos % len(u)
    return {
        "valid": name,
        "upper_all": f"img_{u.upper()}.jpg",
        "upper_one": name[:at] + name[at].upper() + name[at + 1:],
        "prefix_upper": f"IMG_{u}.jpg",
        "no_prefix": f"{u}.jpg",
        "other_prefix": f"im_{u}.jpg",
        "ext_jpeg": f"img_{u}.jpeg",
        "ext_upper": f"img_{u}.JPG",
        "ext_png": f"img_{u}.png",
        "no_ext": f"img_{u}",
        "double_ext": f"img_{u}.jpg.jpg",
        "extra_dot": f"img_{u}..jpg",
        "dot_inside": name[:at] + "." + name[at:],
        "leading_dot": f".img_{u}.jpg",
        "space_inside": name[:at] + " " + name[at:],
        "space_end": name + " ",
        "newline_end": name + "\n",
        "replace_char": name[:at] + char + name[at + 1:],
        "insert_char": name[:at] + char + name[at:],
        "no_hyphens": f"img_{u.replace('-', '')}.jpg",
        "braces": f"img_{{{u}}}.jpg",
        "short": f"img_{u[:-1]}.jpg",
        "long": f"img_{u}0.jpg",
        "hex_string": f"img_{uuid.UUID(u).hex}.jpg",
    }[how]


HOSTILE_CHARS = st.sampled_from(["A", "F", "g", "z", "-", "_", ".", " ", "\t", "\u0660", "\uff10",
                                 "\u00e9", "\u212a", "\u0131", "\u00df", "/", "\x00"]) | st.characters()
VALID_NAMES = UUIDS.map(lambda u: f"img_{u}.jpg")
NAMES = (
    VALID_NAMES
    | st.builds(_mutate_name, UUIDS, st.sampled_from([
        "valid", "upper_all", "upper_one", "prefix_upper", "no_prefix",
        "other_prefix", "ext_jpeg", "ext_upper", "ext_png", "no_ext", "double_ext", "extra_dot",
        "dot_inside", "leading_dot", "space_inside", "space_end", "newline_end", "replace_char",
        "insert_char", "no_hyphens", "braces", "short", "long", "hex_string",
    ]), st.integers(0, 35), HOSTILE_CHARS)
    | st.text(max_size=50)
    | st.text(alphabet="img_0123456789abcdefABCDEF-.jpg ", max_size=50)
)


@st.composite
def labels_files(draw) -> tuple[bytes, list[tuple[str, object]]]:
    """Raw JSON text of a labels object, written by hand so duplicate keys survive, and its pairs."""
    k = draw(st.integers(1, 5))

    def entry(key: str | None = None) -> tuple[str, object]:
        # half the keys and values are valid, so the valid path is exercised as much as the rest
        if key is None:
            name = draw(VALID_NAMES if draw(st.booleans()) else NAMES)
            key = name[:-4] if name.endswith(".jpg") else name
        return key, draw(one_hot(st.just(k)) if draw(st.booleans()) else LABEL_VALUES)

    pairs = [entry() for _ in range(draw(st.integers(0, 8)))]
    if pairs and draw(st.booleans()):
        pairs.insert(draw(st.integers(0, len(pairs))), entry(draw(st.sampled_from(pairs))[0]))
    sep = draw(st.sampled_from([",", ", ", ",\n  "]))
    text = "{" + sep.join(f"{json.dumps(key)}: {json.dumps(value)}" for key, value in pairs) + "}"
    return text.encode("utf-8"), pairs


# --------------------------------------------------------------------------------------------
# the second implementation itself


@pytest.mark.parametrize("value", [True, False, 1.0, 0.0, -0.0])
def test_draft4_integer_rejects_booleans_and_floats(value):
    assert not jsonschema.Draft4Validator(BIT).is_valid(value)
    assert not label_validator(1).is_valid([value])


def test_later_drafts_would_accept_one_point_zero():
    assert jsonschema.Draft6Validator({"type": "integer"}).is_valid(1.0)
    assert not jsonschema.Draft6Validator({"type": "integer"}).is_valid(True)


@pytest.mark.parametrize("value, k, expected", [
    ([0, 1, 0], 3, None), ([1], 1, None), ([0, 0, 0], 3, Rule.LABEL_ONE_HOT),
    ([1, 1, 0], 3, Rule.LABEL_ONE_HOT), ([0, 1], 3, Rule.LABEL_LENGTH),
    ([0, True, 0], 3, Rule.LABEL_ONE_HOT), ([0, 1.0, 0], 3, Rule.LABEL_ONE_HOT),
    ({"0": 1}, 1, Rule.LABEL_ONE_HOT), ([[1]], 1, Rule.LABEL_ONE_HOT), ([0, 1], 0, Rule.LABEL_LENGTH),
])
def test_oracle_on_known_labels(value, k, expected):
    assert oracle_label_rule(value, k) == expected


@pytest.mark.parametrize("name, ok", [
    (f"img_{uuid.UUID(int=0xABC)}.jpg", True),
    (f"img_{uuid.UUID(int=0xABC)}.jpg\n", False),
    (f"img_{str(uuid.UUID(int=0xABC)).upper()}.jpg", False),
    (f"img_{uuid.UUID(int=0xABC)}.jpg".replace("0", "\uff10", 1), False),  # a full-width digit
    (f"img_{uuid.UUID(int=0xABC)}.jpg".replace("0", "\u0660", 1), False),  # an Arabic-Indic digit
])
def test_oracle_on_known_names(name, ok):
    assert bool(NAME.match(name)) is ok


@pytest.mark.parametrize("raw", ['{}', '{"a": 1}', '{"0": 0, "1": 1, "2": 0}'])
def test_an_object_label_is_never_taken_for_a_list(raw):
    key = f"img_{uuid.UUID(int=0xABC)}"
    other = f"img_{uuid.UUID(int=0xDEF)}"
    table = read_labels(f'{{"{other}": [0, 1, 0], "{key}": {raw}}}'.encode())
    assert table.values[key] == json.loads(raw)
    assert table.problems == {key: Rule.LABEL_ONE_HOT}
    (violation,) = table.violations
    assert "got an object" in violation.message


# --------------------------------------------------------------------------------------------
# agreement


@SETTINGS
@given(name=NAMES)
def test_filename_rule_agrees_with_the_regex(name):
    expected = NAME.match(name) is not None
    problem = filename_violation(name)
    assert (problem is None) is expected, (name, problem)
    if problem is not None:
        assert "img_{uuid}.jpg" in problem
    # a labels-file key is an image name without its .jpg
    assert (key_violation(name) is None) is (NAME.match(name + ".jpg") is not None)


@SETTINGS
@given(value=LABEL_VALUES, k=st.integers(1, 6))
def test_label_rule_agrees_with_the_schema(value, k):
    expected = oracle_label_rule(value, k)
    found = check_label(value, k)
    assert (found[0] if found else None) == expected, (value, k, found)
    assert (label_violation(value, k) is None) is (expected is None)
    # without a K, a label is valid when it is valid for its own length
    unsized = check_label(value, None)
    own_k = len(value) if isinstance(value, list) else 0
    assert (unsized is None) is label_validator(own_k).is_valid(value), (value, unsized)


@SETTINGS
@given(labels=labels_files())
def test_labels_file_agrees_with_the_schema(labels):
    data, pairs = labels
    counts = Counter(key for key, _ in pairs)
    last = {key: value for key, value in pairs}
    k = oracle_k(list(last.values()))
    expected_rules: dict[str, list[Rule]] = {}
    for key, value in last.items():
        rules = []
        if counts[key] > 1:
            rules.append(Rule.LABEL_DUPLICATE_KEY)
        if not NAME.match(key + ".jpg"):
            rules.append(Rule.LABEL_KEY)
        label_rule = oracle_label_rule(value, k)
        if label_rule:
            rules.append(label_rule)
        expected_rules[key] = rules

    table = read_labels(data, source=SOURCE)
    assert table.readable
    assert table.num_classes == k
    assert table.values == last
    assert table.classes == {key: last[key].index(1) for key, r in expected_rules.items() if not r}
    assert table.problems == {key: r[0] for key, r in expected_rules.items() if r}
    expected_violations = sorted((label_entry_name(SOURCE, key), str(rule))
                                 for key, rules in expected_rules.items() for rule in rules)
    assert sorted((v.file, v.rule) for v in table.violations) == expected_violations
    values, violations = parse_labels(data, source=SOURCE)
    assert values == last and violations == list(table.violations)


@SETTINGS
@given(value=JSON_VALUES.filter(lambda v: not isinstance(v, dict))
       | st.binary(max_size=30) | st.text(max_size=30).map(str.encode))
def test_anything_but_a_json_object_is_unreadable(value):
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    try:
        is_object = isinstance(json.loads(data.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError):
        is_object = False
    table = read_labels(data, source=SOURCE)
    assert table.readable is is_object
    if not is_object:
        assert [v.rule for v in table.violations] == [str(Rule.LABELS_JSON)]
        assert table.values == {} and table.classes == {}

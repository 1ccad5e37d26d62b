"""The DS801 format rules as pure checks.

Every rule has a stable snake_case name (:class:`Rule`) so a broken input is reported as a list of
:class:`Violation` records, one clear sentence each, instead of an exception. Format rules (names,
labels, pairing, paths) block a run under the default strict policy; the image rule
(``image_decodes``) quarantines the single image by default. Nothing here writes files; the only
I/O is reading one file without following links (:func:`read_regular`); checking a whole
exported folder is :func:`animal_assets.core.export.validate_ds801_folder`.
"""
from __future__ import annotations

import io
import json
import os
import re
import stat
import warnings
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from animal_assets.core.ds801 import IMAGE_ID, IMAGE_SIZE, LABELS_FILE

EXIF_ORIENTATION = 0x0112  # the EXIF tag of the orientation
MAX_IMAGE_BYTES = 1 << 20  # a 64x64 JPEG is a few KiB; anything past 1 MiB is not one
MAX_LABELS_BYTES = 256 << 20  # about 100x the 30,707-entry labels file of the real set
POLICIES = ("strict", "quarantine")

_NAME_RE = re.compile(IMAGE_ID + r"\.jpg", re.ASCII)


class Rule(StrEnum):
    """Stable names of the DS801 rules, as written to manifests and violation lists."""

    SAFE_PATH = "safe_path"
    UNEXPECTED_FILE = "unexpected_file"
    FILENAME = "filename"
    LABELS_JSON = "labels_json"
    LABEL_DUPLICATE_KEY = "label_duplicate_key"
    LABEL_KEY = "label_key"
    LABEL_LENGTH = "label_length"
    LABEL_ONE_HOT = "label_one_hot"
    IMAGE_HAS_LABEL = "image_has_label"
    LABEL_HAS_IMAGE = "label_has_image"
    IMAGE_DECODES = "image_decodes"


#: Rules about names, labels, pairing and paths: they block a run under the strict format policy.
FORMAT_RULES = frozenset(r for r in Rule if r is not Rule.IMAGE_DECODES)
#: Rules about image content: a breaking image is quarantined under the default decode policy.
IMAGE_RULES = frozenset({Rule.IMAGE_DECODES})
#: The rules by what they are about, e.g. one check per group.
RULE_GROUPS: dict[str, frozenset[Rule]] = {
    "paths_and_names": frozenset({Rule.SAFE_PATH, Rule.UNEXPECTED_FILE, Rule.FILENAME}),
    "labels": frozenset({Rule.LABELS_JSON, Rule.LABEL_DUPLICATE_KEY, Rule.LABEL_KEY, Rule.LABEL_LENGTH,
                         Rule.LABEL_ONE_HOT}),
    "pairing": frozenset({Rule.IMAGE_HAS_LABEL, Rule.LABEL_HAS_IMAGE}),
    "images": IMAGE_RULES,
}
#: When a file breaks several rules, the first in this order is given as its reason.
RULE_PRIORITY = tuple(Rule)


def blocking_rules(format_policy: str = "strict", decode_policy: str = "quarantine") -> frozenset[Rule]:
    """Return the rules whose violation blocks a run under the given policies.

    Parameters
    ----------
    format_policy, decode_policy : {"strict", "quarantine"}
        ``strict`` makes the rule group blocking, ``quarantine`` only sets the files aside.

    Returns
    -------
    frozenset of Rule
    """
    for name, value in (("format_policy", format_policy), ("decode_policy", decode_policy)):
        if value not in POLICIES:
            raise ValueError(f"{name} must be one of {POLICIES}, got {value!r}")
    rules: set[Rule] = set()
    if format_policy == "strict":
        rules |= FORMAT_RULES
    if decode_policy == "strict":
        rules |= IMAGE_RULES
    return frozenset(rules)


@dataclass(frozen=True)
class Violation:
    """One broken rule: the file (or ``labels-file["key"]`` entry), the rule name and a sentence."""

    file: str
    rule: str
    message: str

    @classmethod
    def of(cls, file: str, rule: Rule | str, detail: str) -> Violation:
        """Build a violation whose message names the file, says what is wrong and names the rule."""
        rule = str(Rule(rule))
        return cls(file=file, rule=rule, message=f"{file}: {detail} (rule {rule})")

    def to_dict(self) -> dict[str, str]:
        return {"file": self.file, "rule": self.rule, "message": self.message}


def label_entry_name(source: str, key: str) -> str:
    """Name a labels-file entry the way violations do: ``data-labels.json["img_..."]``."""
    return f"{source}[{json.dumps(key)}]"


def filename_violation(name: object) -> str | None:
    """Check an image file name (no folder) against ``img_{uuid}.jpg``.

    Returns
    -------
    str or None
        What is wrong, or None when the name is valid.
    """
    base = "file name must match img_{uuid}.jpg with a lower-case canonical uuid"
    if not isinstance(name, str):
        return f"{base}, got a {type(name).__name__}"
    if _NAME_RE.fullmatch(name):
        return None
    if not name.endswith(".jpg"):
        hint = "the extension must be exactly lower-case .jpg"
    elif not name.startswith("img_"):
        hint = "it must start with img_"
    elif not name.isascii() or any(c.isspace() for c in name):
        hint = "it must not hold spaces or non-ASCII characters"
    else:
        hint = "the uuid must be 8-4-4-4-12 lower-case hex digits"
    return f"{base} ({hint})"


def image_stem(name: str) -> str:
    """The labels-file key an image file name pairs with: the name without a final lower-case .jpg."""
    return name[:-4] if name.endswith(".jpg") else name


def key_violation(key: str) -> str | None:
    """Check a labels-file key: the image file name without ``.jpg``, i.e. ``img_{uuid}``."""
    if _NAME_RE.fullmatch(key + ".jpg"):
        return None
    return "label key must be the image file name without .jpg: img_{uuid} with a lower-case canonical uuid"


def _describe(value: object) -> str:
    if isinstance(value, dict):
        return "an object"
    text = json.dumps(value) if isinstance(value, (bool, int, float, str, list, type(None))) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_label(value: object, num_classes: int | None) -> tuple[Rule, str] | None:
    """Check one label value; return the broken rule and what is wrong, or None when valid.

    A valid value is a list of ``num_classes`` JSON integers, each 0 or 1, with exactly one 1.
    Booleans, floats such as ``1.0``, strings, null and nested lists are all violations.
    """
    if not isinstance(value, list):
        return Rule.LABEL_ONE_HOT, f"label must be a JSON list of 0/1 integers, got {_describe(value)}"
    for item in value:
        # bool is a subclass of int in Python, but JSON true is not the integer 1
        if type(item) is not int or item not in (0, 1):
            return Rule.LABEL_ONE_HOT, f"label items must be the JSON integers 0 or 1, got {_describe(item)}"
    if num_classes is not None and len(value) != num_classes:
        return Rule.LABEL_LENGTH, f"label has {len(value)} items, but the labels file uses K={num_classes}"
    ones = sum(value)
    if ones != 1:
        return Rule.LABEL_ONE_HOT, f"label must hold exactly one 1, found {ones}"
    return None


def label_violation(value: object, num_classes: int | None) -> str | None:
    """Return what is wrong with a label value (see :func:`check_label`), or None when valid."""
    found = check_label(value, num_classes)
    return None if found is None else found[1]


class _Object(dict):
    """A JSON object that counts its keys, so duplicate keys stay visible (the last value wins).

    A dict, not a list of pairs: an object nested in a label must never pass for a JSON list.
    """

    def __init__(self, pairs: list[tuple[str, object]]):
        super().__init__(pairs)
        self.key_counts = Counter(key for key, _ in pairs)


@dataclass(frozen=True)
class LabelTable:
    """The outcome of reading a labels file.

    ``values`` holds every distinct key with its (last) raw value; ``classes`` the class index of
    every key that meets all label rules; ``problems`` the first broken rule of every other key.
    ``readable`` is False when the file as a whole is not a JSON object.
    """

    values: dict[str, object]
    classes: dict[str, int]
    problems: dict[str, Rule]
    num_classes: int
    violations: tuple[Violation, ...]
    readable: bool


def _infer_num_classes(values: list[object]) -> int:
    """K is the most common length among lists of 0/1 integers (ties go to the longer length)."""
    lengths = Counter(
        len(v) for v in values
        if isinstance(v, list) and v and all(type(x) is int and x in (0, 1) for x in v)
    )
    if not lengths:
        return 0
    return max(lengths.items(), key=lambda item: (item[1], item[0]))[0]


def read_labels(data: bytes, *, source: str = LABELS_FILE) -> LabelTable:
    """Parse and check a labels file against the JSON-level and label rules.

    Parameters
    ----------
    data : bytes
        The raw file content.
    source : str
        The file's path inside the dataset, used to name it in violations.

    Returns
    -------
    LabelTable
    """
    def unreadable(detail: str) -> LabelTable:
        return LabelTable({}, {}, {}, 0, (Violation.of(source, Rule.LABELS_JSON, detail),), False)

    if not data.strip():
        return unreadable("labels file is empty; it must be a JSON object")
    try:
        parsed = json.loads(data.decode("utf-8"), object_pairs_hook=_Object)
    except UnicodeDecodeError:
        return unreadable("labels file is not UTF-8 text")
    except (ValueError, RecursionError) as exc:
        return unreadable(f"labels file is not valid JSON ({exc})")
    if not isinstance(parsed, _Object):
        return unreadable(f"labels file must be a JSON object, got a JSON {type(parsed).__name__}")

    values: dict[str, object] = dict(parsed)
    counts = parsed.key_counts
    num_classes = _infer_num_classes(list(values.values()))
    violations: list[Violation] = []
    problems: dict[str, Rule] = {}
    classes: dict[str, int] = {}
    for key in sorted(values):
        entry = label_entry_name(source, key)
        found: list[tuple[Rule, str]] = []
        if counts[key] > 1:
            found.append((Rule.LABEL_DUPLICATE_KEY, f"key appears {counts[key]} times in the labels file"))
        name_problem = key_violation(key)
        if name_problem:
            found.append((Rule.LABEL_KEY, name_problem))
        label_problem = check_label(values[key], num_classes)
        if label_problem:
            found.append(label_problem)
        violations.extend(Violation.of(entry, rule, detail) for rule, detail in found)
        if found:
            problems[key] = min((r for r, _ in found), key=RULE_PRIORITY.index)
        else:
            classes[key] = values[key].index(1)  # type: ignore[union-attr]
    return LabelTable(values, classes, problems, num_classes, tuple(violations), True)


def parse_labels(data: bytes, *, source: str) -> tuple[dict[str, object], list[Violation]]:
    """Parse a labels file; return every distinct key with its raw value, and the violations.

    Duplicate keys are detected (never silently last-wins) and reported as violations.
    """
    table = read_labels(data, source=source)
    return table.values, list(table.violations)


def decode_image(data: bytes, *, name: str) -> tuple[np.ndarray | None, str | None, dict]:
    """Decode one DS801 image, refusing anything that is not a 64x64 RGB JPEG before decoding it.

    Parameters
    ----------
    data : bytes
        The file content.
    name : str
        The file's path, used in the reason text.

    Returns
    -------
    image : ndarray of shape (64, 64, 3), uint8, or None
        The pixels, or None when the image breaks the rule.
    reason : str or None
        What is wrong, or None.
    info : dict
        ``format``, ``width``, ``height``, ``mode`` (empty/0 when unknown) and ``bytes``; for a
        decoded image also ``exif_transposed``, True when an EXIF orientation tag was applied
        (the pixels are returned as a viewer shows them).
    """
    info = {"format": "", "width": 0, "height": 0, "mode": "", "bytes": len(data)}
    if not data:
        return None, f"{name} is empty (zero bytes)", info
    if len(data) > MAX_IMAGE_BYTES:
        return None, f"{name} is {len(data)} bytes, more than the {MAX_IMAGE_BYTES}-byte limit", info
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # open only parses the header; pixels are decoded by load(), called below only once the
            # header says 64x64, so a crafted huge image is never allocated
            with Image.open(io.BytesIO(data)) as im:
                info.update(format=im.format or "", width=im.size[0], height=im.size[1], mode=im.mode)
                if im.format != "JPEG":
                    return None, f"{name} is a {im.format or 'unknown'} image, not a JPEG", info
                if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                    w, h = im.size
                    return None, f"{name} is {w}x{h} pixels, not {IMAGE_SIZE}x{IMAGE_SIZE}", info
                if im.mode != "RGB":
                    return None, f"{name} has colour mode {im.mode}, not RGB", info
                im.load()
                # the pixels as a viewer shows them: an EXIF orientation tag is applied (a 64x64
                # image stays 64x64)
                orientation = im.getexif().get(EXIF_ORIENTATION, 1)
                info["exif_transposed"] = orientation not in (1, None)
                array = np.array(ImageOps.exif_transpose(im) if info["exif_transposed"] else im,
                                 dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return None, f"{name} is refused as a possible decompression bomb ({exc})", info
    except UnidentifiedImageError:
        return None, f"{name} is not an image PIL can identify", info
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        return None, f"{name} does not decode ({exc})", info
    if array.shape != (IMAGE_SIZE, IMAGE_SIZE, 3):
        return None, f"{name} decodes to shape {array.shape}, not (64, 64, 3)", info
    return array, None, info


def read_regular(path: str | os.PathLike, limit: int) -> bytes | None:
    """Read a file without following a symlink swapped in after listing; None when over ``limit``."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        data = f.read(limit + 1)
    return None if len(data) > limit else data

"""A person's review of the cleaning decisions: read, validate and apply a review file.

The review file is a CSV with one row per image a person decided on::

    id,action,label,note
    img_0f8e...,relabel,lynx,ears are tufted
    img_7a21...,drop,,not an animal
    img_93bc...,keep,,the cleaner was wrong

``id`` is the image name without ``.jpg``; ``action`` is ``keep`` (keep the given label),
``relabel`` (to ``label``) or ``drop``; ``label`` is a class index or a class name; ``note`` is
free text. A reviewed image takes the person's decision whatever the automatic cleaning said:
the review is applied after every automatic rule, class floors included, and each row it
changed is marked ``source = "review"`` in the decisions table.

The file is versioned by the hash of its bytes (:func:`review_version`), so an edited file is a
new version of the input of everything downstream.
"""
from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

ACTIONS = ("keep", "relabel", "drop")  # what a decision, and so a review, does with an image
COLUMNS = ("id", "action", "label", "note")
#: Data version when no review file is configured.
NO_REVIEW = "no-review"
#: ``reason`` of a row a person dropped or relabelled.
REVIEW_REASON = "review"


class ReviewError(ValueError):
    """The review file breaks a rule; the message names the file, the line and the rule."""


def review_version(path: str | os.PathLike | None) -> str:
    """The data version of a review file: ``sha256:<hex>`` of its bytes, or :data:`NO_REVIEW`.

    Raises
    ------
    ReviewError
        When a path is given but no file is there.
    """
    if not path:
        return NO_REVIEW
    path = Path(path).expanduser()
    if not path.is_file():
        raise ReviewError(
            f"{path}: the review file does not exist; create it with the header "
            f"{','.join(COLUMNS)} or unset the review path"
        )
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def empty_review() -> pd.DataFrame:
    """A review without rows, with the columns :func:`read_review` returns."""
    return pd.DataFrame({
        "id": pd.Series(dtype=str), "action": pd.Series(dtype=str),
        "label": pd.Series(dtype=np.int64), "note": pd.Series(dtype=str),
        "line": pd.Series(dtype=np.int64),
    })


def _parse_label(text: str, class_names: Sequence[str], num_classes: int) -> int | None:
    if text == "":
        return None
    if text in class_names:
        return list(class_names).index(text)
    try:
        value = int(text)
    except ValueError:
        return -1
    return value if 0 <= value < num_classes else -1


def check_field_counts(path: str | os.PathLike) -> None:
    """Refuse a byte-order mark and a row with more or fewer fields than the header (a comma
    too many or too few), naming its line; blank lines are allowed. Needs nothing but the file,
    so the preflight runs it before anything is computed.

    Raises
    ------
    ReviewError
    """
    path = Path(path).expanduser()
    try:
        with open(path, newline="", encoding="utf-8") as f:
            if f.read(1) == "\ufeff":
                raise ReviewError(
                    f"{path}: the file starts with a byte-order mark (Excel's \"CSV UTF-8\" adds "
                    "one); like the labels file, a review is plain UTF-8: save it as CSV without "
                    "the mark")
            f.seek(0)
            reader = csv.reader(f, skipinitialspace=True)
            header = next(reader, None)
            if header is None:
                return
            for row in reader:
                if row and any(cell.strip() for cell in row) and len(row) != len(header):
                    raise ReviewError(
                        f"{path}, line {reader.line_num}: the row has {len(row)} fields, the "
                        f"header has {len(header)} ({','.join(header)}); quote a note that "
                        "holds a comma")
    except (csv.Error, UnicodeDecodeError) as err:
        raise ReviewError(f"{path}: not a readable CSV file ({err})") from None


def read_review(
    path: str | os.PathLike,
    *,
    known_ids: Sequence[str],
    given: Sequence[int],
    num_classes: int,
    class_names: Sequence[str] = (),
) -> pd.DataFrame:
    """Read and validate a review file.

    Parameters
    ----------
    path : path-like
        The CSV (UTF-8 without a byte-order mark); columns ``id`` and ``action``
        are required, ``label`` and ``note`` optional, others are ignored.
    known_ids : sequence of str, length N
        The ids the decisions cover (usable images).
    given : sequence of int, length N
        Their given labels, aligned with ``known_ids``.
    num_classes : int
        K.
    class_names : sequence of str, optional
        Names accepted in the ``label`` column besides indices ``0..K-1``.

    Returns
    -------
    pandas.DataFrame, one row per reviewed image
        ``id``, ``action`` (keep / relabel / drop, after the rules below), ``label`` (final
        label, -1 when dropped), ``note`` and ``line`` (line in the file, the header is line 1).
        A ``relabel`` to the given label is a ``keep``.

    Raises
    ------
    ReviewError
        On the first broken rule: missing column, unknown id, an id twice, unknown action,
        a label that is no class, ``relabel`` without a label, ``drop`` or ``keep`` with a
        label other than the given one. The message names the file, the line and the rule.
    """
    path = Path(path).expanduser()
    review_version(path)  # a missing file gets its own message
    check_field_counts(path)
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8",
                            skipinitialspace=True)
    except pd.errors.EmptyDataError:
        return empty_review()
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ReviewError(f"{path}: not a readable CSV file ({err})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    missing = [c for c in ("id", "action") if c not in table.columns]
    if missing:
        raise ReviewError(
            f"{path}, line 1: the header must name the columns {','.join(COLUMNS)} "
            f"(label and note may be left out); missing {missing}"
        )
    index = {str(i): n for n, i in enumerate(known_ids)}
    given = np.asarray(given, dtype=np.int64)
    names = [str(c) for c in class_names]
    rows, first_line = [], {}
    for offset, record in enumerate(table.to_dict("records")):
        line = offset + 2
        image_id = record["id"].strip()
        action = record["action"].strip().lower()
        label_text = str(record.get("label", "")).strip()
        note = str(record.get("note", "")).strip()
        if not image_id and not action and not label_text and not note:
            continue  # a blank line left by a spreadsheet
        where = f"{path}, line {line}"
        if image_id.endswith(".jpg"):
            image_id = image_id[: -len(".jpg")]
        if image_id not in index:
            raise ReviewError(
                f"{where}: unknown image id {image_id!r}; ids are the usable images' names "
                "without .jpg (see clean_labels' decisions.csv)"
            )
        if image_id in first_line:
            raise ReviewError(
                f"{where}: {image_id} is already reviewed on line {first_line[image_id]}; "
                "one decision per image"
            )
        first_line[image_id] = line
        if action not in ACTIONS:
            raise ReviewError(f"{where}: action {record['action']!r} must be one of {list(ACTIONS)}")
        label = _parse_label(label_text, names, num_classes)
        if label == -1:
            named = f" or one of {names}" if names else ""
            raise ReviewError(
                f"{where}: label {label_text!r} is not a class; use 0..{num_classes - 1}{named}"
            )
        own = int(given[index[image_id]])
        if action == "relabel" and label is None:
            raise ReviewError(f"{where}: relabel needs a label")
        if action == "drop" and label is not None:
            raise ReviewError(f"{where}: drop takes no label (leave the label column empty)")
        if action == "keep" and label not in (None, own):
            raise ReviewError(
                f"{where}: keep keeps the given label {own}; to change it use relabel"
            )
        if action == "relabel" and label == own:
            action = "keep"
        final = -1 if action == "drop" else (own if label is None else label)
        rows.append({"id": image_id, "action": action, "label": final, "note": note,
                     "line": line})
    if not rows:
        return empty_review()
    return pd.DataFrame(rows).astype({"label": np.int64, "line": np.int64})


def apply_review(decisions: pd.DataFrame, review: pd.DataFrame, *, num_classes: int) -> pd.DataFrame:
    """Overrule the automatic decisions with the reviewed ones.

    Parameters
    ----------
    decisions : pandas.DataFrame, N rows
        Automatic decisions: ``id``, ``given``, ``label``, ``action``, ``reason``,
        ``confidence``, ``self_confidence`` and the probabilities ``p0..p{K-1}``.
    review : pandas.DataFrame
        :func:`read_review` output.
    num_classes : int
        K.

    Returns
    -------
    pandas.DataFrame, N rows
        A copy of ``decisions`` with the reviewed rows replaced (``reason`` ``review`` for a
        drop or a relabel, empty for a keep; ``confidence`` the probe's probability of the new
        label, of the given one when dropped) and two more columns: ``source`` (``auto`` or
        ``review``) and ``review_note``; the automatic decision stays in ``auto_action`` and
        ``auto_label``.
    """
    out = decisions.copy()
    out["auto_action"] = out["action"]
    out["auto_label"] = out["label"]
    out["source"] = "auto"
    out["review_note"] = ""
    if review.empty:
        return out
    position = pd.Series(np.arange(len(out)), index=out["id"].astype(str))
    unknown = sorted(set(review["id"]) - set(position.index))
    if unknown:
        raise ReviewError(f"review: ids not in the decisions: {unknown[:5]}")
    rows = position[review["id"]].to_numpy()
    label = review["label"].to_numpy(dtype=np.int64)
    if ((label < -1) | (label >= num_classes)).any():
        raise ReviewError(f"review: labels must lie in -1..{num_classes - 1}")
    action = review["action"].to_numpy()
    cols = out.columns.get_loc
    out.iloc[rows, cols("label")] = label
    out.iloc[rows, cols("action")] = action
    out.iloc[rows, cols("reason")] = np.where(action == "keep", "", REVIEW_REASON)
    probs = out[[f"p{k}" for k in range(num_classes)]].to_numpy(dtype=np.float64)[rows]
    given = out["given"].to_numpy(dtype=np.int64)[rows]
    chosen = np.where(label >= 0, label, given)
    out.iloc[rows, cols("confidence")] = probs[np.arange(len(rows)), chosen]
    out.iloc[rows, cols("source")] = "review"
    out.iloc[rows, cols("review_note")] = review["note"].to_numpy()
    return out


def template(decisions: pd.DataFrame, *, class_names: Sequence[str] = ()) -> pd.DataFrame:
    """A review file to start from: every image the cleaning did not keep as given, with the
    automatic decision filled in, most confident first; delete the rows you agree with and edit
    the rest.

    Parameters
    ----------
    decisions : pandas.DataFrame
        Decisions with ``id``, ``given``, ``label``, ``action``, ``reason``, ``confidence``.
    class_names : sequence of str, optional
        Names written in the ``label`` column instead of indices.

    Returns
    -------
    pandas.DataFrame
        Columns ``id``, ``action``, ``label``, ``note``.
    """
    changed = decisions[decisions["action"] != "keep"].sort_values(
        ["confidence", "id"], ascending=[False, True], kind="stable")
    names = list(class_names)

    def label_text(row) -> str:
        if row["action"] == "drop":
            return ""
        k = int(row["label"])
        return names[k] if k < len(names) else str(k)

    def note(row) -> str:
        given = int(row["given"])
        shown = names[given] if given < len(names) else str(given)
        return f"auto: {row['reason']} (given {shown}, p={float(row['confidence']):.2f})"

    return pd.DataFrame({
        "id": changed["id"].astype(str),
        "action": changed["action"].astype(str),
        "label": [label_text(r) for _, r in changed.iterrows()],
        "note": [note(r) for _, r in changed.iterrows()],
    }, columns=list(COLUMNS))

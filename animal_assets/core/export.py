"""DS801 exports with the decoded arrays the trainer reads, their deterministic zip, and the
check that a DS801 folder follows every format rule."""
from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core import ds801
from animal_assets.core.atomic import atomic_path, save_npy
from animal_assets.core.ds801 import IMAGES_DIR, LABELS_FILE
from animal_assets.core.formats import (
    MAX_IMAGE_BYTES, MAX_LABELS_BYTES, LabelTable, Rule, Violation, decode_image, filename_violation, image_stem,
    label_entry_name, read_labels, read_regular,
)

#: The time of every member of the exported zip (the earliest a zip can hold).
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Split:
    """A DS801 export plus the decoded arrays the trainer reads (decoded from the export)."""

    dir: str  # the DS801 folder (imgs/ + data-labels.json)
    images_path: str  # (N, 64, 64, 3) uint8 .npy
    labels_path: str  # (N,) int64 .npy
    ids_path: str  # CSV: id, label, source_id, generated
    counts: tuple[int, ...]


def export_split(
    out_dir: Path, *, ids, labels, jpegs, source_ids, generated, num_classes: int,
) -> Split:
    """Write a DS801 folder plus arrays decoded from exactly the exported JPEG bytes."""
    ds_dir = out_dir / "ds801"
    ds801.write_ds801(ds_dir, zip(ids, jpegs, labels), num_classes=num_classes)
    images = np.empty((len(ids), ds801.IMAGE_SIZE, ds801.IMAGE_SIZE, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        array, reason, _ = decode_image(data, name=f"{ids[i]}.jpg")
        if array is None:
            raise RuntimeError(f"{ids[i]}.jpg: exported image does not decode ({reason})")
        images[i] = array
    labels = np.asarray(labels, dtype=np.int64)
    save_npy(out_dir / "images.npy", images)
    save_npy(out_dir / "labels.npy", labels)
    table = pd.DataFrame(
        {"id": ids, "label": labels, "source_id": source_ids, "generated": generated}
    )
    with atomic_path(out_dir / "ids.csv") as tmp:
        table.to_csv(tmp, index=False)
    counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    return Split(
        dir=str(ds_dir), images_path=str(out_dir / "images.npy"),
        labels_path=str(out_dir / "labels.npy"), ids_path=str(out_dir / "ids.csv"),
        counts=counts,
    )


def relocate(split_: Split, tmp: Path, final: Path) -> Split:
    """Rewrite the paths of a Split written inside an atomic temporary folder."""
    def move(p: str) -> str:
        return str(final / Path(p).relative_to(tmp))

    return Split(
        dir=move(split_.dir), images_path=move(split_.images_path),
        labels_path=move(split_.labels_path), ids_path=move(split_.ids_path),
        counts=split_.counts,
    )


def zip_tree(path: Path, folders: dict[str, Path]) -> None:
    """Store ``folders`` (prefix -> folder) in one zip whose bytes depend on the files only."""
    # JPEGs do not compress; storing keeps the archive quick to write and to read.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for prefix, folder in folders.items():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    # fixed time, mode and system instead of the file's: the same export gives
                    # the same archive bytes
                    info = zipfile.ZipInfo(f"{prefix}/{file.relative_to(folder).as_posix()}",
                                           date_time=ZIP_DATE_TIME)
                    info.create_system = 3  # Unix, so the mode bits below are meaningful
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    zf.writestr(info, file.read_bytes(), compress_type=zipfile.ZIP_STORED)


def _regular_entries(folder: Path, rel: str, violations: list[Violation]) -> dict[str, os.DirEntry]:
    """List a folder without following symlinks; report anything not a regular file or folder."""
    kept: dict[str, os.DirEntry] = {}
    with os.scandir(folder) as it:
        for entry in sorted(it, key=lambda e: e.name):
            path = f"{rel}{entry.name}"
            if entry.is_symlink():
                violations.append(Violation.of(path, Rule.SAFE_PATH, "symbolic link, never followed"))
            elif entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
                kept[entry.name] = entry
            else:
                violations.append(Violation.of(path, Rule.SAFE_PATH, "not a regular file"))
    return kept


def validate_ds801_folder(path: str | os.PathLike) -> list[Violation]:
    """Check a DS801 folder (``imgs/`` + ``data-labels.json`` at its top) against every rule.

    Parameters
    ----------
    path : path
        The folder, e.g. one the project exported.

    Returns
    -------
    list of Violation
        Empty when the folder is a valid DS801 dataset.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root}: not a folder, so it cannot be checked as a DS801 dataset")
    violations: list[Violation] = []
    top = _regular_entries(root, "", violations)
    for name, entry in top.items():
        if name not in (IMAGES_DIR, LABELS_FILE) or entry.is_dir() != (name == IMAGES_DIR):
            violations.append(Violation.of(name, Rule.UNEXPECTED_FILE, "not part of a DS801 dataset"))
    table = LabelTable({}, {}, {}, 0, (), False)
    if LABELS_FILE in top and top[LABELS_FILE].is_file(follow_symlinks=False):
        data = read_regular(top[LABELS_FILE].path, MAX_LABELS_BYTES)
        if data is None:
            violations.append(Violation.of(LABELS_FILE, Rule.LABELS_JSON, "labels file is too large"))
        else:
            table = read_labels(data, source=LABELS_FILE)
            violations.extend(table.violations)
    else:
        violations.append(Violation.of(LABELS_FILE, Rule.LABELS_JSON, "labels file is missing"))
    stems: set[str] = set()
    if IMAGES_DIR in top and top[IMAGES_DIR].is_dir(follow_symlinks=False):
        for name, entry in _regular_entries(root / IMAGES_DIR, f"{IMAGES_DIR}/", violations).items():
            rel = f"{IMAGES_DIR}/{name}"
            if entry.is_dir(follow_symlinks=False):
                violations.append(Violation.of(rel, Rule.UNEXPECTED_FILE, "sub-folder inside imgs/"))
                continue
            problem = filename_violation(name)
            if problem:
                violations.append(Violation.of(rel, Rule.FILENAME, problem))
            stem = image_stem(name)
            stems.add(stem)
            if table.readable and stem not in table.values:
                violations.append(Violation.of(rel, Rule.IMAGE_HAS_LABEL, f"image has no entry in {LABELS_FILE}"))
            data = read_regular(entry.path, MAX_IMAGE_BYTES)
            reason = decode_image(data, name=rel)[1] if data is not None else (
                f"{rel} is larger than the {MAX_IMAGE_BYTES}-byte limit")
            if reason:
                violations.append(Violation.of(rel, Rule.IMAGE_DECODES, reason))
    for key in sorted(set(table.values) - stems):
        violations.append(Violation.of(label_entry_name(LABELS_FILE, key), Rule.LABEL_HAS_IMAGE,
                                       f"no image {IMAGES_DIR}/{key}.jpg for this entry"))
    return violations

"""Read a DS801 dataset safely, from a folder or an archive, and decode every image once.

The input is never modified or extracted: folders are walked without following links and archive
members are read in memory. Every file and every label entry becomes one manifest row ("ok" or
"quarantined" with the broken rule), the usable images are stacked into one ``.npy`` array, and
their original JPEG bytes are kept so that exports can copy them unchanged. All outputs are written
into one folder that replaces the previous one atomically.

The same read can run in shards (:func:`read_dataset_shard`, each reading and decoding only the
files of its image ids) whose merge (:func:`merge_raw_shards`) writes the same outputs byte for
byte.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import stat
import tarfile
import time
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from animal_assets.core.archive import (
    ARCHIVE_MAGIC, MAX_SKIP_BYTES, DatasetError, Member, archive_format, find_root, read_members,
)
from animal_assets.core.atomic import atomic_dir, ensure_free_space
from animal_assets.core.ds801 import IMAGE_SIZE, IMAGES_DIR, LABELS_FILE
from animal_assets.core.formats import (
    MAX_IMAGE_BYTES, MAX_LABELS_BYTES, RULE_PRIORITY, LabelTable, Rule, Violation, blocking_rules,
    decode_image, filename_violation, image_stem, label_entry_name, read_labels, read_regular,
)
from animal_assets.core.shards import check_count, shard_of

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_COLUMNS = ("id", "file", "given", "sha256", "status", "reason", "width", "height", "mode", "index")
@dataclass(frozen=True)
class RawImages:
    """Where :func:`read_dataset` put its outputs, and the counts that describe them."""

    root: str
    images_path: str
    manifest_path: str
    files_dir: str
    violations_path: str
    num_classes: int
    n_input_files: int
    n_label_entries: int
    n_usable: int
    blocking: bool
    source: str
    fingerprint: str
    format_policy: str
    decode_policy: str
    #: Usable images whose EXIF orientation tag was applied (turned upright) when decoded.
    n_exif_transposed: int = 0


def _member_problems(m: Member, rel: str | None, counts: Counter) -> list[tuple[Rule, str]]:
    """Path, kind and layout problems of one member (everything but labels and pixels)."""
    if m.unsafe:
        return [(Rule.SAFE_PATH, m.unsafe)]
    if m.kind in ("symlink", "hardlink"):
        return [(Rule.SAFE_PATH, f"{'symbolic' if m.kind == 'symlink' else 'hard'} link, never followed")]
    if m.kind == "other":
        return [(Rule.SAFE_PATH, "not a regular file (device, fifo or socket)")]
    if m.kind == "encrypted":
        return [(Rule.UNEXPECTED_FILE, "encrypted member, never read")]
    if counts[m.path] > 1:
        return [(Rule.SAFE_PATH, f"appears {counts[m.path]} times, so one copy would overwrite another")]
    if m.data is not None and m.data.startswith(ARCHIVE_MAGIC):
        return [(Rule.UNEXPECTED_FILE, "is an archive; archives inside the dataset are never opened")]
    if rel is None:
        return [(Rule.UNEXPECTED_FILE, "lies outside the dataset folder")]
    if not rel.startswith(f"{IMAGES_DIR}/") or rel.count("/") != 1:
        return [(Rule.UNEXPECTED_FILE,
                 f"not part of a DS801 dataset (only {IMAGES_DIR}/*.jpg and {LABELS_FILE} belong)")]
    return []


def _assess(members: list[Member], prefix: str, keep: Callable[[str], bool] | None = None,
            *, label_file_violations: bool = True) -> tuple[list[dict], list[Violation], LabelTable]:
    """Build the manifest rows (unsorted, usable ones carrying pixels), violations and label table.

    With ``keep``, only the rows whose shard key it accepts (a shard's) are built, and only their
    files decoded: a file's key is its name without ``.jpg`` (:func:`shard_key_of`), a label
    entry's its key. ``label_file_violations`` false leaves out the labels file's own violations
    (one shard lists them)."""
    labels_path = prefix + LABELS_FILE
    labels_member = next(m for m in members if m.path == labels_path and m.unsafe is None and m.kind == "file")
    if labels_member.data is None:
        too_large = Violation.of(LABELS_FILE, Rule.LABELS_JSON, f"labels file is over {MAX_LABELS_BYTES} bytes")
        table = LabelTable({}, {}, {}, 0, (too_large,), False)
    else:
        table = read_labels(labels_member.data, source=LABELS_FILE)
    violations = list(table.violations) if label_file_violations else []
    counts = Counter(m.path for m in members if m.unsafe is None and m.kind != "dir")
    rows, seen = [], set()
    for m in members:
        if m.kind == "dir" or m is labels_member:
            continue
        rel = m.path[len(prefix):] if m.unsafe is None and m.path.startswith(prefix) else None
        shown = rel if rel is not None else m.path
        name = shown.rsplit("/", 1)[-1]
        found = _member_problems(m, rel, counts)
        stem, info, array = None, {"width": 0, "height": 0, "mode": ""}, None
        # links and duplicates inside imgs/ still pair with their label entry; archives and
        # encrypted members are not images at all
        is_image = (rel is not None and rel.startswith(f"{IMAGES_DIR}/") and rel.count("/") == 1
                    and all(rule is not Rule.UNEXPECTED_FILE for rule, _ in found))
        problem = filename_violation(name) if is_image else None
        if is_image:
            stem = image_stem(name)
            seen.add(stem)
        if keep is not None and not keep(shard_key_of(name)):
            continue
        if is_image:
            if problem:
                found.append((Rule.FILENAME, problem))
            if table.readable and stem not in table.values:
                found.append((Rule.IMAGE_HAS_LABEL, f"image has no entry in {LABELS_FILE}"))
            if m.kind == "file":
                if m.data is None:
                    reason = f"{shown} is {m.size} bytes, more than the {MAX_IMAGE_BYTES}-byte limit"
                else:
                    array, reason, info = decode_image(m.data, name=shown)
                if reason:
                    found.append((Rule.IMAGE_DECODES, reason))
        violations.extend(Violation.of(shown, rule, detail) for rule, detail in found)
        rules = [rule for rule, _ in found]
        if stem is not None and not table.readable:
            rules.append(Rule.LABELS_JSON)
        elif stem in table.problems:
            rules.append(table.problems[stem])
        ok = not rules
        rows.append({
            "id": stem if stem is not None and not problem else name, "file": shown,
            "given": table.classes.get(stem, -1) if stem is not None else -1,
            "sha256": hashlib.sha256(m.data).hexdigest() if m.data is not None else "",
            "status": "ok" if ok else "quarantined",
            "reason": "" if ok else str(min(rules, key=RULE_PRIORITY.index)),
            "width": info["width"], "height": info["height"], "mode": info["mode"], "index": -1,
            "_array": array if ok else None, "_data": m.data if ok else None,
            "_exif_transposed": bool(info.get("exif_transposed")),
        })
    for key in sorted(set(table.values) - seen):
        if keep is not None and not keep(key):
            continue
        entry = label_entry_name(LABELS_FILE, key)
        violations.append(
            Violation.of(entry, Rule.LABEL_HAS_IMAGE, f"no image {IMAGES_DIR}/{key}.jpg for this entry"))
        rule = min(table.problems.get(key, Rule.LABEL_HAS_IMAGE), Rule.LABEL_HAS_IMAGE, key=RULE_PRIORITY.index)
        rows.append({"id": key, "file": "", "given": table.classes.get(key, -1), "sha256": "",
                     "status": "quarantined", "reason": str(rule), "width": 0, "height": 0, "mode": "",
                     "index": -1, "_array": None, "_data": None})
    return rows, violations, table


def dataset_fingerprint(path: str | os.PathLike) -> str:
    """Cheap, stable sha256 hex of a dataset: archive bytes, or for a folder the labels file bytes
    plus the sorted listing of every entry (path, kind, size). No image is decoded.
    """
    path = Path(path)
    h = hashlib.sha256(b"ds801-fingerprint-v1\n")
    if path.is_file():
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    listing, pending = [], [(path, "")]
    while pending:
        folder, rel = pending.pop()
        with os.scandir(folder) as it:
            for entry in it:
                st = entry.stat(follow_symlinks=False)
                listing.append((f"{rel}{entry.name}", stat.S_IFMT(st.st_mode), st.st_size))
                if stat.S_ISDIR(st.st_mode):
                    pending.append((Path(entry.path), f"{rel}{entry.name}/"))
                elif stat.S_ISREG(st.st_mode) and entry.name == LABELS_FILE and rel.count("/") <= 1:
                    h.update(f"{rel}{entry.name}\n".encode("utf-8", "surrogateescape"))
                    h.update(read_regular(entry.path, MAX_LABELS_BYTES) or b"<too large>")
    for name, kind, size in sorted(listing):
        h.update(f"{name}\t{kind}\t{size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def _check_paths(src: Path, out: Path) -> None:
    if not src.exists():
        raise DatasetError(f"{src}: no such file or folder")
    if out == src or src.is_relative_to(out) or (src.is_dir() and out.is_relative_to(src)):
        raise DatasetError(f"{out}: the output folder must not contain or lie inside the input {src}")


def read_dataset(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    format_policy: str = "strict",
    decode_policy: str = "quarantine",
    minimum: int | None = None,
) -> RawImages:
    """Read and check a DS801 dataset, writing its usable images and a manifest to ``out_dir``.

    Parameters
    ----------
    path : path
        A folder, or a ``.zip``/``.tar.gz``/``.tgz`` archive, holding ``imgs/`` and
        ``data-labels.json`` at the top or inside one wrapping folder. It is never modified.
    out_dir : path
        Output folder, replaced atomically: ``images.npy`` (N, 64, 64, 3) uint8 of the usable
        images in manifest order, ``manifest.csv``, ``files/img_{uuid}.jpg``, ``violations.json``
        and ``raw.json``.
    format_policy : {"strict", "quarantine"}
        ``strict``: a broken format rule sets ``blocking``; ``quarantine``: only its files are set aside.
    decode_policy : {"strict", "quarantine"}
        The same for images that do not decode as 64x64 RGB JPEG.
    minimum : int, optional
        The fewest usable images the caller can work on. Fewer (with no blocking violation, which
        the caller's checks report instead) raise before anything is written, so ``out_dir``
        keeps what an earlier read put there.

    Returns
    -------
    RawImages

    Raises
    ------
    DatasetError
        When nothing can be read: a missing path, an unsupported file type, a damaged archive,
        no ``data-labels.json``, several wrapping folders, or no images and no labels; and when
        fewer than ``minimum`` images are usable. Every other problem is a violation listed in
        the outputs.
    """
    src, out = Path(path).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    _check_paths(src, out)
    members = read_members(src)
    prefix = find_root(members, str(src))
    rows, violations, table = _assess(members, prefix)
    return _write_raw(src, out, rows, violations, num_classes=table.num_classes,
                      n_label_entries=len(table.values), fingerprint=dataset_fingerprint(src),
                      format_policy=format_policy, decode_policy=decode_policy, minimum=minimum)


def _write_raw(src: Path, out: Path, rows: list[dict], violations: list[Violation], *,
               num_classes: int, n_label_entries: int, fingerprint: str, format_policy: str,
               decode_policy: str, minimum: int | None) -> RawImages:
    """Sort the rows and violations, apply the blocking rules and write the outputs of
    :func:`read_dataset` (a usable row's ``_data``: its bytes, or the path of a file holding
    them, which is linked or copied)."""
    rules = blocking_rules(format_policy, decode_policy)
    if not n_label_entries and not any(r["file"].startswith(f"{IMAGES_DIR}/") for r in rows):
        raise DatasetError(f"{src}: holds neither images nor label entries")
    rows.sort(key=lambda r: (r["file"] == "", r["file"], r["id"]))
    violations.sort(key=lambda v: (v.file, RULE_PRIORITY.index(Rule(v.rule)), v.message))
    usable = [r for r in rows if r["status"] == "ok"]
    for i, r in enumerate(usable):
        r["index"] = i
    raw = RawImages(
        root=str(out), images_path=str(out / "images.npy"), manifest_path=str(out / "manifest.csv"),
        files_dir=str(out / "files"), violations_path=str(out / "violations.json"),
        num_classes=num_classes, n_input_files=sum(r["file"] != "" for r in rows),
        n_label_entries=n_label_entries, n_usable=len(usable),
        blocking=any(v.rule in rules for v in violations), source=str(src),
        fingerprint=fingerprint, format_policy=format_policy, decode_policy=decode_policy,
        n_exif_transposed=sum(r["_exif_transposed"] for r in usable),
    )
    if minimum is not None and not raw.blocking and len(usable) < minimum:
        _too_few(raw, n_quarantined=sum(r["status"] == "quarantined" for r in rows),
                 reasons=Counter(r["reason"] for r in rows if r["reason"]), minimum=minimum)
    with _usable_writer(out, rows, usable) as tmp:
        # label keys may hold lone surrogates (JSON allows "\ud800"); escape rather than fail
        with open(tmp / "manifest.csv", "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
            writer = csv.DictWriter(f, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore",
                                    lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
        (tmp / "violations.json").write_text(json.dumps([v.to_dict() for v in violations], indent=1) + "\n")
        (tmp / "raw.json").write_text(json.dumps(asdict(raw), indent=1) + "\n")
    return raw


@contextmanager
def _usable_writer(out: Path, rows: list[dict], usable: list[dict]) -> Iterator[Path]:
    """A temporary folder that replaces ``out`` (:func:`atomic_dir`), holding ``images.npy`` and
    ``files/`` of the ``usable`` rows in their order (their ``_array`` and ``_data`` are taken)."""
    shape = (len(usable), IMAGE_SIZE, IMAGE_SIZE, 3)
    # the arrays, the original JPEG bytes and a margin for the manifest and the small files
    needed = (int(np.prod(shape)) + sum(_n_bytes(r["_data"]) for r in usable) + 256 * len(rows)
              + (1 << 16))
    ensure_free_space(out, needed)
    with atomic_dir(out, needed=needed) as tmp:
        (tmp / "files").mkdir()
        # plain writes, not a memory map: a full disk then raises ENOSPC instead of SIGBUS
        with open(tmp / "images.npy", "wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                    "fortran_order": False, "shape": shape})
            for r in usable:
                f.write(np.ascontiguousarray(r.pop("_array"), dtype=np.uint8).tobytes())
        for r in usable:
            data, target = r.pop("_data"), tmp / "files" / f"{r['id']}.jpg"
            if isinstance(data, bytes):
                target.write_bytes(data)
            else:  # a shard's copy: never written to again, so a hard link shares it safely
                try:
                    os.link(data, target)
                except OSError:
                    shutil.copyfile(data, target)
        yield tmp


def _n_bytes(data: bytes | Path) -> int:
    return len(data) if isinstance(data, bytes) else Path(data).stat().st_size


# -- shards: the input read and decoded by file name (ANIMAL_ASSETS_SHARDS), merged back -------


@dataclass(frozen=True)
class RawImageShard:
    """What :func:`read_dataset_shard` wrote for the images of one shard: the manifest rows of
    its ids (the label entries without an image included), their violations, the usable images
    and their files. No format policy is applied yet; :func:`merge_raw_shards` applies it."""

    root: str
    raw_version: str  # the input's fingerprint when the shard was read
    source: str
    shard: int
    shards: int
    num_classes: int
    n_label_entries: int
    n_rows: int
    n_usable: int
    n_violations: int
    seconds: float


def shard_key_of(name: str) -> str:
    """What decides the shard of a file of the input: its name without a final ``.jpg`` (an
    image's id, and the key its label entry has), known before the file is read."""
    return image_stem(name)


def read_dataset_shard(path: str | os.PathLike, out_dir: str | os.PathLike, *, shard: int,
                       shards: int) -> RawImageShard:
    """Read and check the files of shard ``shard`` of ``shards`` (by a stable hash of their
    :func:`shard_key_of`, an image's id: :mod:`animal_assets.core.shards`) into ``out_dir``,
    replaced atomically: ``images.npy`` and ``files/`` of its usable images, ``rows.json`` (its
    manifest rows, ``index`` the row in ``images.npy``), ``violations.json`` and ``shard.json``.
    Only the shard's files are read and decoded; the listing, the labels file and the wrapping
    folder are read whole, so each shard raises the :class:`DatasetError` of
    :func:`read_dataset`. Shard 0 also lists the labels file's own violations."""
    start = time.perf_counter()
    check_count(shards)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    src, out = Path(path).expanduser().resolve(), Path(out_dir).expanduser().resolve()
    _check_paths(src, out)

    def mine(key: str) -> bool:
        return shard_of(key, shards) == shard

    members = read_members(src, lambda path: mine(shard_key_of(path.rsplit("/", 1)[-1])))
    prefix = find_root(members, str(src))
    rows, violations, table = _assess(members, prefix, mine, label_file_violations=shard == 0)
    rows.sort(key=lambda r: (r["file"] == "", r["file"], r["id"]))
    usable = [r for r in rows if r["status"] == "ok"]
    for i, r in enumerate(usable):
        r["index"] = i
    record = RawImageShard(
        root=str(out), raw_version=dataset_fingerprint(src), source=str(src), shard=shard,
        shards=shards, num_classes=table.num_classes, n_label_entries=len(table.values),
        n_rows=len(rows), n_usable=len(usable), n_violations=len(violations), seconds=0.0)
    with _usable_writer(out, rows, usable) as tmp:
        (tmp / "rows.json").write_text(json.dumps(
            [{c: r[c] for c in (*MANIFEST_COLUMNS, "_exif_transposed") if c in r} for r in rows]))
        (tmp / "violations.json").write_text(json.dumps([v.to_dict() for v in violations]))
        record = replace(record, seconds=round(time.perf_counter() - start, 3))
        (tmp / "shard.json").write_text(json.dumps(asdict(record), indent=1) + "\n")
    return record


def merge_raw_shards(parts: Sequence[RawImageShard], out_dir: str | os.PathLike, *,
                     format_policy: str = "strict", decode_policy: str = "quarantine",
                     minimum: int | None = None) -> RawImages:
    """The outputs of :func:`read_dataset` from every shard of one read of the input (checked by
    the caller), byte for byte: the rows and violations sorted as one read sorts them, the
    blocking rules and ``minimum`` applied to the whole. Each usable image's file is linked
    from its shard's (copied where links cannot be made)."""
    rows, violations = [], []
    for part in parts:
        root = Path(part.root)
        images = np.load(root / "images.npy", mmap_mode="r")
        for r in json.loads((root / "rows.json").read_text()):
            if r["status"] == "ok":
                r["_array"], r["_data"] = images[r["index"]], root / "files" / f"{r['id']}.jpg"
            rows.append(r)
        violations.extend(Violation(**v) for v in json.loads((root / "violations.json").read_text()))
    first = parts[0]
    src = Path(first.source)
    return _write_raw(src, Path(out_dir).expanduser().resolve(), rows, violations,
                      num_classes=first.num_classes, n_label_entries=first.n_label_entries,
                      fingerprint=first.raw_version, format_policy=format_policy,
                      decode_policy=decode_policy, minimum=minimum)


def peek_labels(path: str | os.PathLike) -> LabelTable | None:
    """The labels file of a dataset, read alone (no image is read or decoded), or None when it
    cannot be found this way (:func:`read_dataset` then says why).

    Used to validate what depends on K and on the ids (a test set, a truth file, class names)
    before any work starts. A folder's or a zip's labels file is read directly; a tar.gz is read
    up to its labels file.
    """
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            found = [path / LABELS_FILE] if (path / LABELS_FILE).is_file() else [
                sub / LABELS_FILE for sub in sorted(path.iterdir())
                if sub.is_dir() and not sub.is_symlink() and (sub / LABELS_FILE).is_file()]
            data = read_regular(found[0], MAX_LABELS_BYTES) if len(found) == 1 else None
        elif path.is_file() and archive_format(path) == "zip":
            with zipfile.ZipFile(path) as zf:
                names = [i for i in zf.infolist() if i.filename.rsplit("/", 1)[-1] == LABELS_FILE
                         and i.filename.count("/") <= 1 and not i.flag_bits & 0x1
                         and i.file_size <= MAX_LABELS_BYTES]
                data = zf.read(names[0]) if len(names) == 1 else None
        elif path.is_file() and archive_format(path) == "tar.gz":
            data = None
            with tarfile.open(path, mode="r|gz") as tf:
                for ti in tf:
                    if ti.size > MAX_SKIP_BYTES:
                        break
                    if (ti.isreg() and ti.name.rsplit("/", 1)[-1] == LABELS_FILE
                            and ti.name.strip("/").count("/") <= 1 and ti.size <= MAX_LABELS_BYTES):
                        data = tf.extractfile(ti).read()
                        break
        else:
            data = None
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError):
        data = None
    if data is None:
        return None
    table = read_labels(data, source=LABELS_FILE)
    return table if table.readable else None


#: The fewest usable images the graph can work on: ood_scores compares each image with its
#: k = 10 nearest neighbours, so it needs more than 10.
MIN_USABLE_IMAGES = 11


def _too_few(raw: RawImages, *, n_quarantined: int, reasons: dict, minimum: int) -> None:
    listed = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items()))
    raise DatasetError(
        f"{raw.source}: only {raw.n_usable} usable images ({n_quarantined} quarantined"
        f"{': ' + listed if listed else ''}); the graph needs at least {minimum}")


def open_raw(out_dir: str | os.PathLike) -> RawImages:
    """Load the :class:`RawImages` record that :func:`read_dataset` wrote into ``out_dir``."""
    record = json.loads((Path(out_dir) / "raw.json").read_text())
    return RawImages(**{f.name: record[f.name] for f in fields(RawImages) if f.name in record})


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest CSV with stable dtypes (text columns stay text, empty stays "")."""
    import pandas as pd  # here, not at the top: the preflight imports this module to peek at labels

    text = {c: str for c in ("id", "file", "sha256", "status", "reason", "mode")}
    ints = {c: np.int64 for c in ("given", "width", "height", "index")}
    return pd.read_csv(path, dtype={**text, **ints}, keep_default_na=False)


def load_raw_images(raw: RawImages, *, mmap: bool = False) -> tuple[np.ndarray, pd.DataFrame]:
    """Return the usable images (N, 64, 64, 3) uint8 and their N manifest rows, aligned by position."""
    images = np.load(raw.images_path, mmap_mode="r" if mmap else None, allow_pickle=False)
    manifest = read_manifest(raw.manifest_path)
    ok = manifest[manifest["status"] == "ok"].sort_values("index").reset_index(drop=True)
    if len(ok) != len(images) or not np.array_equal(ok["index"].to_numpy(), np.arange(len(ok))):
        raise ValueError(f"{raw.manifest_path}: rows with status ok do not match {raw.images_path}")
    return images, ok


def summary(raw: RawImages) -> dict:
    """Counts for metadata (JSON-ready): usable images per class, the classes of K without any
    usable image, rows per status and reason, violations per rule, the usable images an EXIF
    orientation turned upright, and the sizes and colour modes of every image that had a
    readable header.
    """
    m = read_manifest(raw.manifest_path)
    ok = m[m["status"] == "ok"]
    shown = m[m["width"] > 0]
    violations = json.loads(Path(raw.violations_path).read_text())
    return {
        "source": raw.source, "fingerprint": raw.fingerprint, "blocking": raw.blocking,
        "num_classes": raw.num_classes, "n_input_files": raw.n_input_files,
        "n_label_entries": raw.n_label_entries, "n_usable": raw.n_usable,
        "n_quarantined": int((m["status"] == "quarantined").sum()),
        "n_exif_transposed": raw.n_exif_transposed,
        "counts_per_class": {str(k): int((ok["given"] == k).sum()) for k in range(raw.num_classes)},
        "empty_classes": [k for k in range(raw.num_classes) if not (ok["given"] == k).any()],
        "status_counts": {str(k): int(v) for k, v in sorted(Counter(m["status"]).items())},
        "reasons": {str(k): int(v) for k, v in sorted(Counter(m.loc[m["reason"] != "", "reason"]).items())},
        "violations_by_rule": dict(sorted(Counter(v["rule"] for v in violations).items())),
        "images": {
            "sizes": {f"{w}x{h}": int(n)
                      for (w, h), n in sorted(Counter(zip(shown["width"], shown["height"])).items())},
            "modes": {str(k): int(v) for k, v in sorted(Counter(shown["mode"]).items())},
        },
    }

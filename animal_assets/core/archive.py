"""Read the files of a dataset, from a folder or a .zip/.tar.gz/.tgz archive, safely and in memory.

Nothing is extracted and no link is followed: every member becomes a :class:`Member` with its
cleaned path, its kind and, for a regular file within its size limit, its bytes. Names that could
escape the dataset, links, nested archives, encrypted members and oversized members are marked,
not read. The format is recognised from the first bytes, not from the name.
"""
from __future__ import annotations

import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from animal_assets.core.ds801 import LABELS_FILE
from animal_assets.core.formats import MAX_IMAGE_BYTES, MAX_LABELS_BYTES, read_regular

MAX_TOTAL_BYTES = 4 << 30  # refuse archives that would expand to more than this in memory
ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")
#: The first bytes of each archive format, and its name.
_FORMATS = ((b"PK\x03\x04", "zip"), (b"PK\x05\x06", "zip"), (b"\x1f\x8b", "tar.gz"), (b"BZh", "bzip2"),
            (b"\xfd7zXZ", "xz"), (b"7z\xbc\xaf", "7z"), (b"Rar!", "rar"))
ARCHIVE_MAGIC = tuple(magic for magic, _ in _FORMATS)
#: A tar member larger than this is refused before it is read or skipped: no DS801 file comes
#: near it (the labels file may be MAX_LABELS_BYTES), and skipping costs a full decompression.
MAX_SKIP_BYTES = 2 * MAX_LABELS_BYTES


class DatasetError(ValueError):
    """The input cannot be read as a dataset at all (missing, unsupported, no labels file...)."""


@dataclass
class Member:
    path: str  # cleaned path inside the input, or the escaped raw name when unsafe
    kind: str  # file, dir, symlink, hardlink, other, encrypted
    size: int
    data: bytes | None  # content of a regular file within its size limit
    unsafe: str | None = None


def _printable(name: str) -> str:
    name = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in name)


def _clean(raw: str) -> tuple[str, str | None]:
    """Return the normalised member path and, when it could escape the output, why."""
    shown = _printable(raw)
    if "\\" in raw:
        return shown, "member name holds a backslash"
    if raw.startswith("/") or re.match(r"[A-Za-z]:", raw):
        return shown, "member name is an absolute path"
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        return shown, "member name climbs out with '..'"
    if shown != raw:
        return shown, "member name holds control or undecodable characters"
    return "/".join(parts), None


def _limit(path: str) -> int:
    return MAX_LABELS_BYTES if path.rsplit("/", 1)[-1] == LABELS_FILE else MAX_IMAGE_BYTES


#: ``wanted(path) -> bool``: whether a regular file's bytes are read (labels files always are).
Wanted = Callable[[str], bool]


def _wanted(wanted: Wanted | None, path: str) -> bool:
    return wanted is None or path.rsplit("/", 1)[-1] == LABELS_FILE or wanted(path)


def _tar_members(path: Path, wanted: Wanted | None) -> list[Member]:
    members, total = [], 0
    # stream mode reads the gzip once, front to back, and never seeks
    with tarfile.open(path, mode="r|gz") as tf:
        for ti in tf:
            name, unsafe = _clean(ti.name)
            if ti.isdir():
                kind = "dir"
            elif ti.issym():
                kind = "symlink"
            elif ti.islnk():
                kind = "hardlink"
            elif ti.isreg():
                kind = "file"
            else:
                kind = "other"
            if kind == "file" and ti.size > MAX_SKIP_BYTES:
                # a compressed stream cannot seek: skipping the member means decompressing it all
                raise DatasetError(
                    f"{path}: member {_printable(ti.name)} declares {ti.size} bytes, more than the "
                    f"{MAX_SKIP_BYTES} bytes any file of a DS801 dataset can need; refused before "
                    "decompressing it")
            data = None
            if kind == "file" and unsafe is None and ti.size <= _limit(name) and _wanted(wanted, name):
                data = tf.extractfile(ti).read()
                total = _count(path, total, len(data))
            members.append(Member(name, kind, ti.size, data, unsafe))
    return members


def _count(path: Path, total: int, size: int) -> int:
    """Add ``size`` to the bytes held in memory so far; refuse once they pass the cap."""
    total += size
    if total > MAX_TOTAL_BYTES:
        raise DatasetError(f"{path}: expands to more than {MAX_TOTAL_BYTES} bytes of file data")
    return total


def _zip_members(path: Path, wanted: Wanted | None) -> list[Member]:
    members, total = [], 0
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            name, unsafe = _clean(info.orig_filename)
            # the file type bits are meaningful only in zips made on Unix; 0 means a plain file
            ftype = stat.S_IFMT(info.external_attr >> 16) if info.create_system == 3 else 0
            if info.is_dir():
                kind = "dir"
            elif ftype == stat.S_IFLNK:
                kind = "symlink"
            elif ftype not in (0, stat.S_IFREG):
                kind = "other"
            elif info.flag_bits & 0x1:
                kind = "encrypted"
            else:
                kind = "file"
            data = None
            if (kind == "file" and unsafe is None and info.file_size <= _limit(name)
                    and _wanted(wanted, name)):
                with zf.open(info) as f:
                    data = f.read(_limit(name) + 1)
                if len(data) > _limit(name):
                    data = None
                else:
                    total = _count(path, total, len(data))
            members.append(Member(name, kind, info.file_size, data, unsafe))
    return members


def _folder_members(root: Path, wanted: Wanted | None) -> list[Member]:
    members, total = [], 0
    pending = [(root, "")]
    while pending:
        folder, rel = pending.pop()
        with os.scandir(folder) as it:
            for entry in it:
                path = f"{rel}{entry.name}"
                st = entry.stat(follow_symlinks=False)
                if _printable(path) != path:
                    why = "file name holds control or undecodable characters"
                    members.append(Member(_printable(path), "other", st.st_size, None, why))
                elif stat.S_ISLNK(st.st_mode):
                    members.append(Member(path, "symlink", st.st_size, None))
                elif stat.S_ISDIR(st.st_mode):
                    members.append(Member(path, "dir", 0, None))
                    pending.append((Path(entry.path), f"{path}/"))
                elif stat.S_ISREG(st.st_mode):
                    data = (read_regular(entry.path, _limit(path))
                            if st.st_size <= _limit(path) and _wanted(wanted, path) else None)
                    total = _count(root, total, len(data or b""))
                    members.append(Member(path, "file", st.st_size, data))
                else:
                    members.append(Member(path, "other", st.st_size, None))
    return members


def archive_format(path: str | os.PathLike) -> str | None:
    """The archive format of a file by its first bytes: "zip", "tar.gz", another format's name
    (e.g. "7z"), or None when the bytes match no archive format known here.

    The name of the file is not looked at: a zip named ``.tar.gz`` is a zip.
    """
    with open(path, "rb") as f:
        head = f.read(8)
    for magic, kind in _FORMATS:
        if head.startswith(magic):
            return kind
    return None


def read_members(path: Path, wanted: Wanted | None = None) -> list[Member]:
    """Every member of the folder or archive ``path``. With ``wanted``, only the regular files it
    accepts (and every labels file) are read; the others are listed with their kind and size,
    their ``data`` None."""
    if path.is_dir():
        return _folder_members(path, wanted)
    kind = archive_format(path)
    if kind not in ("zip", "tar.gz"):
        what = f"a {kind} archive" if kind else "neither a zip nor a gzip-compressed tar archive"
        raise DatasetError(
            f"{path}: unsupported input ({what}); give a folder or a "
            f"{', '.join(ARCHIVE_SUFFIXES)} archive")
    try:
        members = _zip_members(path, wanted) if kind == "zip" else _tar_members(path, wanted)
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
            NotImplementedError) as exc:
        raise DatasetError(f"{path}: the {kind} archive is damaged or unreadable ({exc})") from exc
    return members


def find_root(members: list[Member], source: str) -> str:
    """Return the prefix of the dataset root: "" or the one wrapping folder holding the labels file."""
    labels = [m.path for m in members if m.unsafe is None and m.path.rsplit("/", 1)[-1] == LABELS_FILE
              and m.path.count("/") <= 1 and m.kind == "file"]
    if LABELS_FILE in labels:
        candidates = [""]
    else:
        candidates = sorted({p.split("/")[0] + "/" for p in labels})
    if not candidates:
        encrypted = [m.path for m in members if m.kind == "encrypted"]
        if encrypted:
            raise DatasetError(
                f"{source}: the archive is encrypted (password-protected members such as "
                f"{encrypted[0]}, {len(encrypted)} in all); decrypt it first, the pipeline never "
                "asks for a password")
        raise DatasetError(f"{source}: no {LABELS_FILE} found at the top or inside one wrapping folder")
    if len(candidates) > 1:
        raise DatasetError(
            f"{source}: more than one wrapping folder holds {LABELS_FILE}: {', '.join(candidates)}")
    if sum(p == candidates[0] + LABELS_FILE for p in labels) > 1:
        raise DatasetError(f"{source}: {candidates[0]}{LABELS_FILE} appears more than once")
    return candidates[0]

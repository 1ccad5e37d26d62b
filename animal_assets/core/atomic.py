"""Atomic file and folder writes, free-space checks and the output folder's lock.

Every output of the pipeline is written to a temporary sibling first and moved into place with
``os.replace``, so a run killed midway leaves the previous output intact; the result has the
permissions the umask gives a new file or folder, as if written in place. A write that runs out
of space removes its temporary file or folder and raises :class:`DiskFullError`, one line naming
the path and the bytes it needed. One run at a time holds an output folder's lock
(:func:`output_lock`).

The tool replaces or writes into a folder only when it owns it: the folder carries
:data:`OWNER_MARKER`, or is empty, or holds nothing but the names the tool writes there (a folder
written before the marker existed, adopted). Anything else is refused with one line
(:class:`ForeignFolderError`), so a user's own files are never deleted.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Collection, Iterator
from pathlib import Path

import numpy as np

#: The lock file inside an output folder; it holds the current holder's description.
LOCK_FILE = ".animal-assets.lock"


class DiskFullError(OSError):
    """A write ran or would run out of space; the message names the path and the bytes needed."""


class OutputBusyError(RuntimeError):
    """Another run holds the output folder's lock; the message names that run."""


class ForeignFolderError(FileExistsError):
    """A folder the tool would replace or write into holds files it did not write, or is a
    link or a file; the message names the path and what to do."""


#: The file that marks a folder as written by the tool (its content names the tool).
OWNER_MARKER = ".animal-assets"


def _is_temp(name: str) -> bool:
    """A temporary file or folder of :func:`atomic_path` or :func:`atomic_dir`."""
    return name.startswith(".") and (name.endswith(".tmp") or name.endswith(".old"))


def check_owned(path: str | os.PathLike, *, known: Collection[str] = ()) -> bool:
    """Whether the tool owns ``path``: a folder with :data:`OWNER_MARKER` (True). An empty
    folder, a missing one, or one that holds only names in ``known`` (the tool's own files, from
    a version before the marker) is adopted (False: not marked yet).

    Raises
    ------
    ForeignFolderError
        When ``path`` is a symbolic link or a file, or a folder that holds anything else.
    """
    path = Path(path)
    if path.is_symlink():
        raise ForeignFolderError(
            f"{path}: the folder is a symbolic link, and the tool never follows a link out of the "
            f"output folder; remove the link and give the folder on the other disk as the output "
            f"folder instead (--output {os.readlink(path)})")
    if not path.exists():
        return False
    if not path.is_dir():
        raise ForeignFolderError(f"{path}: a file stands where the tool writes a folder; move it "
                                 "away or choose another output folder")
    marker = path / OWNER_MARKER
    if marker.is_file() and not marker.is_symlink():
        return True
    foreign = sorted(e.name for e in os.scandir(path) if e.name not in known and not _is_temp(e.name))
    if foreign:
        more = f" and {len(foreign) - 1} more" if len(foreign) > 1 else ""
        raise ForeignFolderError(
            f"{path}: the folder was not written by animal-assets (it holds {foreign[0]!r}{more}), "
            "and the tool never replaces or writes into a folder it did not write; move it away "
            "or choose another output folder")
    return False


def _remove(path: Path) -> None:
    """Remove a file, link or folder of the tool's own (a link itself, never what it points to)."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _mark(folder: Path) -> None:
    fd = os.open(folder / OWNER_MARKER, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                 0o666 & ~_umask())
    try:
        os.write(fd, b"written by animal-assets; the tool replaces this folder on its next run\n")
    finally:
        os.close(fd)


def claim_folder(path: str | os.PathLike, *, known: Collection[str] = ()) -> Path:
    """Check that the tool owns ``path`` (:func:`check_owned`) and mark it as the tool's when it
    exists unmarked (adopted). A missing folder is left to the write that creates it, so a step
    that fails before writing leaves nothing behind."""
    path = Path(path)
    if not check_owned(path, known=known) and path.is_dir():
        _mark(path)
    return path


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _disk_full(path: Path, needed: int | None, written: int) -> DiskFullError:
    free = shutil.disk_usage(path.parent).free if path.parent.exists() else 0
    need = f"{needed} bytes" if needed else f"more than the {written} bytes written"
    return DiskFullError(errno.ENOSPC, f"{path}: no space left on the device: the write needs "
                                       f"{need}, {free} bytes are free; free some space or choose "
                                       "another output folder")


def ensure_free_space(path: str | os.PathLike, needed: int) -> None:
    """Raise :class:`DiskFullError` when the file system that will hold ``path`` has fewer than
    ``needed`` bytes free (checked on the nearest existing parent)."""
    path = Path(path)
    probe = path.parent
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed:
        raise DiskFullError(errno.ENOSPC, f"{path}: not enough free space: the write needs about "
                                          f"{needed} bytes, {free} bytes are free on {probe}; free "
                                          "some space or choose another output folder")


def _umask() -> int:
    """The process's umask (read by setting it and putting it back: Python has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary file path that replaces ``path`` when the block exits cleanly.

    ``needed`` (bytes), when known, is named in the error of a write that runs out of space.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes it 0600; a result honours the umask
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or isinstance(exc, DiskFullError):
            raise
        written = _size(tmp)
        tmp.unlink(missing_ok=True)
        raise _disk_full(path, needed, written) from None
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(
    path: str | os.PathLike, *, needed: int | None = None, known: Collection[str] = (),
    mark: bool = True,
) -> Iterator[Path]:
    """Yield a temporary folder that replaces the folder ``path`` when the block exits cleanly.

    ``path`` is replaced only when the tool owns it (:func:`check_owned`, with ``known`` the
    names the tool writes there); the new folder carries :data:`OWNER_MARKER` unless ``mark``
    is false (a folder in the DS801 format, which holds nothing else).

    The old folder is moved aside, the new one renamed into place, then the old one deleted;
    an interrupted run leaves either the old or the new folder at ``path`` (never a mix), and
    stale temporaries are cleared by the next call. A write inside the block that runs out of
    space removes the temporary folder and raises :class:`DiskFullError`.
    """
    path = Path(path)
    check_owned(path, known=known)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        _remove(stale)
    old = path.parent / f".{path.name}.old"
    if old.is_symlink():
        old.unlink()  # never the tool's: a link is neither followed nor moved into place
    elif old.exists() and not path.exists():
        os.replace(old, path)  # a previous swap was interrupted between its two renames
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a result honours the umask
    try:
        yield tmp
        if mark:
            _mark(tmp)
        if path.exists():
            _remove(old)
            os.replace(path, old)
        os.replace(tmp, path)
        _remove(old)
    except OSError as exc:
        if exc.errno != errno.ENOSPC or isinstance(exc, DiskFullError):
            raise
        written = _size(tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        raise _disk_full(path, needed, written) from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, needed=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj, *, indent: int | None = 2) -> None:
    text = json.dumps(obj, indent=indent, sort_keys=False) + "\n"
    with atomic_path(path, needed=len(text.encode())) as tmp:
        tmp.write_text(text)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` atomically, with plain writes (a full disk raises ENOSPC;
    ``np.save`` reports a short write without an errno)."""
    array = np.ascontiguousarray(array)
    if array.dtype.hasobject:
        raise ValueError(f"{path}: object arrays are never saved")
    with atomic_path(path, needed=array.nbytes + 128) as tmp:
        with open(tmp, "wb") as f:
            np.lib.format.write_array_header_1_0(f, np.lib.format.header_data_from_array_1_0(array))
            f.write(memoryview(array.reshape(-1).view(np.uint8)))


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike, *, holder: str, on_stale: Callable[[str], None] | None = None,
) -> Iterator[Path]:
    """Hold the output folder's lock for the block, so that no second run writes there at once.

    The lock is an advisory ``flock`` on :data:`LOCK_FILE` inside ``folder`` (created if
    needed), released when the block ends or the process dies; the file keeps ``holder`` (a
    description of the run) so a refused run can name the one that holds the folder. The file
    is emptied when the block ends: a free lock whose file still names a holder was left by a
    process that was killed, and ``on_stale`` is called with that holder's description (after
    the lock is taken, before the block runs).

    Raises
    ------
    OutputBusyError
        When another process holds the lock, or the lock file is a symbolic link (never followed).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        # O_NOFOLLOW: a link planted as the lock file would have its target truncated
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        if err.errno != errno.ELOOP:
            raise
        raise OutputBusyError(f"{path}: the output folder's lock file is a symbolic link, and the "
                              "tool never follows a link out of the output folder; remove it") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            other = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "an unnamed run"
            raise OutputBusyError(
                f"{folder}: the output folder is in use by {other}; wait for it to end or choose "
                "another output folder") from None
        stale = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        try:
            if stale and on_stale is not None:
                on_stale(stale)
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

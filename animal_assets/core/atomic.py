"""Atomic file and folder writes, free-space checks and the output folder's lock.

Every output of the pipeline is written to a temporary sibling first and moved into place with
``os.replace``, so a run killed midway leaves the previous output intact; the result has the
permissions the umask gives a new file or folder, as if written in place. A write that runs out
of space removes its temporary file or folder and raises :class:`DiskFullError`, one line naming
the path and the bytes it needed. One run at a time holds an output folder's lock
(:func:`output_lock`).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

#: The lock file inside an output folder; it holds the current holder's description.
LOCK_FILE = ".animal-assets.lock"


class DiskFullError(OSError):
    """A write ran or would run out of space; the message names the path and the bytes needed."""


class OutputBusyError(RuntimeError):
    """Another run holds the output folder's lock; the message names that run."""


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
def atomic_dir(path: str | os.PathLike, *, needed: int | None = None) -> Iterator[Path]:
    """Yield a temporary folder that replaces the folder ``path`` when the block exits cleanly.

    The old folder is moved aside, the new one renamed into place, then the old one deleted;
    an interrupted run leaves either the old or the new folder at ``path`` (never a mix), and
    stale temporaries are cleared by the next call. A write inside the block that runs out of
    space removes the temporary folder and raises :class:`DiskFullError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    old = path.parent / f".{path.name}.old"
    if old.exists() and not path.exists():
        os.replace(old, path)  # a previous swap was interrupted between its two renames
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it 0700; a result honours the umask
    try:
        yield tmp
        if path.exists():
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
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
def output_lock(folder: str | os.PathLike, *, holder: str) -> Iterator[Path]:
    """Hold the output folder's lock for the block, so that no second run writes there at once.

    The lock is an advisory ``flock`` on :data:`LOCK_FILE` inside ``folder`` (created if
    needed), released when the block ends or the process dies; the file keeps ``holder`` (a
    description of the run) so a refused run can name the one that holds the folder.

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
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode() + b"\n", 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)

"""Builders of small seeded DS801 datasets, images and archives (hostile ones included) for tests."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import stat
import struct
import subprocess
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animal_assets.core.ds801 import IMAGES_DIR, LABELS_FILE, new_image_id, write_ds801

REAL_DS801 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "ds801-train-set.tgz"
ARCHIVE_KINDS = ("zip", "tar.gz", "tgz")
_MTIME = 1_700_000_000  # fixed member times keep archives byte-identical between runs


def image_bytes(seed: int, *, size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "JPEG") -> bytes:
    """Encode a seeded random image of ``size`` (width, height) in ``mode`` as ``fmt`` bytes."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    im = Image.fromarray(pixels, mode="RGB").convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def crafted_jpeg(width: int, height: int) -> bytes:
    """A small 64x64 JPEG whose frame header claims ``width`` x ``height`` (cheap huge image)."""
    data = image_bytes(0)
    i = data.find(b"\xff\xc0")
    return data[: i + 5] + struct.pack(">HH", height, width) + data[i + 9:]


def crafted_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` RGB pixels of one colour."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\0" * 4096)  # far too little data: the header alone must get it refused
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_dataset(tmp_path: str | os.PathLike, *, n: int = 12, k: int = 3, seed: int = 0, name: str = "ds") -> Path:
    """Write a valid DS801 folder of ``n`` 64x64 JPEGs, labels ``i % k``, under ``tmp_path/name``."""
    rng = np.random.default_rng(seed)
    items = [(new_image_id(rng), image_bytes(seed * 100_003 + i), i % k) for i in range(n)]
    return write_ds801(Path(tmp_path) / name, items, num_classes=k)


def labels_of(folder: str | os.PathLike) -> dict:
    """The parsed ``data-labels.json`` of a DS801 folder."""
    return json.loads((Path(folder) / LABELS_FILE).read_text())


def image_paths(folder: str | os.PathLike) -> list[Path]:
    """The entries of a DS801 folder's ``imgs/``, sorted by name."""
    return sorted((Path(folder) / IMAGES_DIR).iterdir())


@dataclass(frozen=True)
class Extra:
    """An additional archive member: bytes, or a symbolic/hard link, or a device node (tar only)."""

    name: str
    data: bytes = b""
    symlink: str | None = None
    hardlink: str | None = None
    device: bool = False


def make_archive(
    folder: str | os.PathLike,
    kind: str,
    *,
    wrap: str | None = None,
    dest: str | os.PathLike | None = None,
    extra: tuple[Extra, ...] | list[Extra] = (),
) -> Path:
    """Pack ``folder`` as a ``zip``/``tar.gz``/``tgz`` archive, optionally inside folder ``wrap``.

    Members are added in sorted order with fixed times, then the ``extra`` members as given.
    Returns the archive path (default: next to ``folder``).
    """
    folder = Path(folder)
    if kind not in ARCHIVE_KINDS:
        raise ValueError(f"archive kind must be one of {ARCHIVE_KINDS}, got {kind!r}")
    dest = Path(dest) if dest else folder.parent / f"{folder.name}{'-' + wrap if wrap else ''}.{kind}"
    prefix = f"{wrap}/" if wrap else ""
    entries: list[tuple[str, bytes | None]] = [(prefix, None)] if wrap else []
    for path in sorted(folder.rglob("*")):
        rel = prefix + path.relative_to(folder).as_posix()
        entries.append((rel + "/", None) if path.is_dir() else (rel, path.read_bytes()))
    if kind == "zip":
        with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries:
                zf.writestr(zipfile.ZipInfo(name, (2023, 11, 14, 0, 0, 0)), data or b"")
            for e in extra:
                info = zipfile.ZipInfo(e.name, (2023, 11, 14, 0, 0, 0))
                if e.symlink is not None:
                    info.external_attr = (stat.S_IFLNK | 0o777) << 16
                    zf.writestr(info, e.symlink)
                elif e.hardlink is None and not e.device:
                    zf.writestr(info, e.data)
        return dest
    with tarfile.open(dest, "w:gz") as tf:
        for name, data in entries:
            ti = tarfile.TarInfo(name.rstrip("/"))
            ti.mtime = _MTIME
            if data is None:
                ti.type, ti.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(ti)
            else:
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        for e in extra:
            ti = tarfile.TarInfo(e.name)
            ti.mtime = _MTIME
            if e.symlink is not None:
                ti.type, ti.linkname = tarfile.SYMTYPE, e.symlink
            elif e.hardlink is not None:
                ti.type, ti.linkname = tarfile.LNKTYPE, e.hardlink
            elif e.device:
                ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
            else:
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
                continue
            tf.addfile(ti)
    return dest


def tree_hashes(path: str | os.PathLike) -> dict[str, str]:
    """Map every entry under ``path`` (or ``path`` itself if a file) to a hash of its content.

    Symbolic links are recorded by target and never followed; folders by their presence.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root, name)
            rel = p.relative_to(path).as_posix()
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def cli_in_process(cwd: Path, home: Path, *args: str,
                   env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``animal-assets ARGS`` through the command's entry function in this process, as a
    subprocess would run it: in ``cwd``, with ``home`` as ``DAGSTER_HOME``, no
    ``ANIMAL_ASSETS_*`` variable but ``env_extra``'s (all restored afterwards); returns the exit
    code and the captured stdout and stderr."""
    import pytest

    from animal_assets import cli
    from animal_assets.core.preflight import ENV

    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as patch:
        for var in {*ENV.values(), *(k for k in os.environ if k.startswith("ANIMAL_ASSETS_"))}:
            patch.delenv(var, raising=False)  # the command sets some: all unset again afterwards
        for var, value in {"DAGSTER_HOME": str(home), **(env_extra or {})}.items():
            patch.setenv(var, value)
        patch.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = cli.main(list(args))
            except SystemExit as exit_:
                code = exit_.code
    return subprocess.CompletedProcess(["animal-assets", *args], code, out.getvalue(),
                                       err.getvalue())

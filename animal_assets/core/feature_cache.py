"""Image features kept on disk by content, so an image already embedded is never embedded again.

A row is keyed by the SHA-256 of the image file's bytes; a cache folder holds the rows of one
encoder setting only (input size, block statistics, precision, weights, device), so a feature is
reused only where the same encoder would have computed it. The encoder has no state that crosses
images; on the CPU an image's features are the same bit for bit whatever batch it was embedded
in (measured in float32 and bf16 on a 2-core Intel Xeon), elsewhere they could differ by the
rounding of the batched convolutions, never by more.

Layout: ``root/{settings key}/features.npy`` (M, D) float32 and ``keys.json`` (M hashes, the
row order), both replaced atomically when rows are added. Processes that share a cache (the
benchmark family's runs side by side) add their rows one at a time, under an advisory lock on
``.lock`` in that folder, each first reading the rows the others added.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from animal_assets.core.atomic import atomic_path, save_npy


def settings_key(**settings) -> str:
    """A short stable hash of the encoder settings (keyword order does not matter)."""
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class FeatureCache:
    """Features of one encoder setting, by image content hash.

    Parameters
    ----------
    root : path
        Folder of the cache; created when rows are first added.
    **settings
        Everything the features depend on besides the image bytes (e.g. ``image_size``,
        ``stages``, ``precision``, ``weights``).
    """

    def __init__(self, root: str | os.PathLike, **settings) -> None:
        self.dir = Path(root).expanduser() / settings_key(**settings)
        self._read()

    def _stamp(self) -> tuple:
        """What identifies the two files as written (each write replaces a file: a new inode)."""
        stamp = []
        for name in ("keys.json", "features.npy"):
            try:
                st = os.stat(self.dir / name)
            except FileNotFoundError:
                stamp.append(None)
            else:
                stamp.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamp)

    def _read(self) -> None:
        self._read_stamp = self._stamp()
        self._keys: list[str] = []
        self._rows: dict[str, int] = {}
        self._features: np.ndarray | None = None
        keys_path, features_path = self.dir / "keys.json", self.dir / "features.npy"
        if keys_path.is_file() and features_path.is_file():
            keys, features = json.loads(keys_path.read_text()), np.load(features_path)
            # Both only ever grow at the end, each replaced atomically: a run stopped between
            # the two writes leaves one longer than the other, and their common first rows
            # still belong together.
            kept = min(len(keys), len(features))
            self._keys, self._features = keys[:kept], (features[:kept] if kept else None)
            self._rows = {k: i for i, k in enumerate(self._keys)}

    def __len__(self) -> int:
        return len(self._keys)

    def missing(self, keys: Sequence[str]) -> np.ndarray:
        """Indices into ``keys`` of the images the cache has no row for."""
        return np.array([i for i, k in enumerate(keys) if k not in self._rows], dtype=np.int64)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """The rows of ``keys``, in that order (every key must be cached)."""
        if self._features is None:
            raise KeyError("feature cache is empty")
        return self._features[[self._rows[k] for k in keys]]

    def add(self, keys: Sequence[str], features: np.ndarray) -> None:
        """Store the rows of new ``keys`` (keys already cached keep their row) and save."""
        features = np.asarray(features, dtype=np.float32)
        if len(keys) != len(features):
            raise ValueError(f"feature_cache.py: {len(keys)} keys for {len(features)} rows")
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if self._stamp() != self._read_stamp:
                self._read()  # with the rows another process added since
            self._append(keys, features)
            self._read_stamp = self._stamp()

    def _append(self, keys: Sequence[str], features: np.ndarray) -> None:
        new, seen = [], set(self._rows)
        for i, k in enumerate(keys):
            if k not in seen:
                seen.add(k)
                new.append(i)
        if not new:
            return
        if self._features is not None and features.shape[1:] != self._features.shape[1:]:
            raise ValueError(f"feature_cache.py: rows of width {features.shape[1]} added to a cache "
                             f"of width {self._features.shape[1]}")
        added = features[new]
        self._features = added if self._features is None else np.concatenate([self._features, added])
        for i in new:
            self._rows[keys[i]] = len(self._keys)
            self._keys.append(keys[i])
        save_npy(self.dir / "features.npy", self._features)
        with atomic_path(self.dir / "keys.json") as tmp:
            Path(tmp).write_text(json.dumps(self._keys))

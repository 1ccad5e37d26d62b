"""Shards of the per-image work: which images a shard holds, and its name.

An image belongs to shard ``sha256(id) mod n``: a stable hash of its id, so an image stays in its
shard across runs, a grown dataset adds its new images to the shards without moving the old ones
(each shard's feature cache then embeds only the new ones), and the shards hold about ``N / n``
images each whatever order the input lists them in.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence

import numpy as np

#: The most shards a graph can be cut into.
MAX_SHARDS = 1024
#: Environment variable: the number of shards of the per-image work (unset: 1, unsharded). The
#: definitions read it when they load.
SHARDS_VARIABLE = "ANIMAL_ASSETS_SHARDS"


def check_count(n: int) -> int:
    """``n`` if it is a usable shard count (1 to :data:`MAX_SHARDS`); raises ValueError."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_SHARDS:
        raise ValueError(f"the shard count must be a whole number from 1 to {MAX_SHARDS}, not {n!r}")
    return n


def shard_of(image_id: str, n: int) -> int:
    """The shard (0 to n - 1) of the image ``image_id``."""
    digest = hashlib.sha256(image_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def shard_assignment(ids: Sequence[str], n: int) -> np.ndarray:
    """(len(ids),) int: the shard of each image of ``ids``."""
    return np.fromiter((shard_of(i, n) for i in ids), np.int64, len(ids))


def shard_rows(ids: Sequence[str], shard: int, n: int) -> np.ndarray:
    """Positions in ``ids`` of the images of ``shard`` (of ``n``), in their order in ``ids``."""
    return np.flatnonzero(shard_assignment(ids, n) == shard)


def shard_key(shard: int, n: int) -> str:
    """The name of shard ``shard`` of ``n`` (a Dagster partition key), e.g. ``03-of-16``: it
    sorts in shard order and says the count, so shards of another count never mix."""
    width = len(str(n - 1))
    return f"{shard:0{width}d}-of-{n}"


def shard_keys(n: int) -> list[str]:
    """Every shard's name, in shard order."""
    return [shard_key(k, n) for k in range(check_count(n))]


def parse_shard_key(key: str) -> tuple[int, int]:
    """``(shard, n)`` of a name made by :func:`shard_key`; raises ValueError for another."""
    shard, sep, n = key.partition("-of-")
    if not (sep and shard.isdigit() and n.isdigit() and 1 <= int(n) <= MAX_SHARDS
            and int(shard) < int(n) and key == shard_key(int(shard), int(n))):
        raise ValueError(f"{key!r} is not a shard name like '03-of-16'")
    return int(shard), int(n)


class ShardNames:
    """Every shard name (:func:`shard_key`), as a collection that answers ``in``: the names a
    folder of one folder per shard holds."""

    def __contains__(self, name: object) -> bool:
        try:
            parse_shard_key(name)
        except (TypeError, ValueError, AttributeError):
            return False
        return True


def shards_from_environment() -> int:
    """The shard count ``ANIMAL_ASSETS_SHARDS`` names (1 when unset or empty).

    Raises
    ------
    ValueError
        When it is not a whole number from 1 to :data:`MAX_SHARDS`; the message names it.
    """
    text = os.environ.get(SHARDS_VARIABLE, "").strip()
    if not text:
        return 1
    try:
        return check_count(int(text))
    except ValueError:
        raise ValueError(f"{SHARDS_VARIABLE}={text!r}: must be a whole number from 1 to {MAX_SHARDS}") from None


class ShardsBehind(ValueError):
    """A shard is missing or was computed from another materialization of raw_images (another
    version of the input): the merge waits until every shard has been computed again."""


def checked_shards(handles: Mapping[str, object], version: str, what: str, *,
                   upstream: str = "raw_images materialization") -> list:
    """The shard handles (each with ``shard``, ``shards`` and ``raw_version``) in shard order,
    checked to be every shard of one count, all computed from the ``upstream`` of ``version``
    (a raw_images materialization, or for the shards of raw_images a version of the input).

    Raises
    ------
    ShardsBehind
        When a shard is missing or was computed from another raw_images.
    """
    shards = sorted(handles.values(), key=lambda s: s.shard)
    if not shards:
        raise ShardsBehind(f"{what}: no shard has been computed yet")
    n = shards[0].shards
    present = {s.shard for s in shards if s.shards == n}
    if present != set(range(n)) or len(shards) != n:
        missing = [shard_key(k, n) for k in range(n) if k not in present]
        raise ShardsBehind(f"{what}: shards {missing} of {n} are missing")
    behind = [shard_key(s.shard, n) for s in shards if s.raw_version != version]
    if behind:
        raise ShardsBehind(f"{what}: shards {behind} were computed from another {upstream}; "
                           "they run again first")
    return shards

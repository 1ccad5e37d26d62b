"""Stage ``raw_images``: every image of the input decoded once, with a manifest and the
format rules checked (:mod:`animal_assets.core.ingest` reads folders and archives)."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from animal_assets.core.ingest import (
    MIN_USABLE_IMAGES,
    DatasetError,
    RawImages,
    RawImageShard,
    dataset_fingerprint,
    merge_raw_shards,
    read_dataset,
    read_dataset_shard,
    summary,
)
from animal_assets.core.preflight import claim_asset_folder
from animal_assets.core.shards import ShardsBehind, checked_shards, shard_key
from animal_assets.core.stages.base import FileRef, Json, RunContext, Table

NAME = "raw_images"
#: The output folder of the shards of the input (one subfolder per shard, e.g. ``03-of-16``).
SHARDS_NAME = "raw_image_shards"


@dataclass(frozen=True)
class RawImagesConfig:
    # strict: a broken file name or label stops the graph; quarantine: the file is set aside.
    format_policy: Literal["strict", "quarantine"] = "strict"
    # quarantine: an image that is not a 64x64 RGB JPEG is set aside; strict: it stops the graph.
    decode_policy: Literal["strict", "quarantine"] = "quarantine"


def run(config: RawImagesConfig, ctx: RunContext) -> RawImages:
    """Read and check ``ctx.dataset``; too few usable images stop the stage before the previous
    result is replaced. A broken format rule does not raise here: the checks report it and
    :func:`require_conforming` keeps the stages below from running."""
    if not ctx.dataset:
        raise ValueError("raw_images: no dataset given")
    return read_dataset(ctx.dataset, ctx.folder(NAME), format_policy=config.format_policy,
                        decode_policy=config.decode_policy, minimum=MIN_USABLE_IMAGES)


def run_shard(config: RawImagesConfig | None, ctx: RunContext, *, shard: int,
              shards: int) -> RawImageShard:
    """Read and decode the images of shard ``shard`` of ``shards`` into
    ``raw_image_shards/<shard>`` (:func:`~animal_assets.core.ingest.read_dataset_shard`). The
    format policies are applied by :func:`merge`, so the shards take no settings."""
    if not ctx.dataset:
        raise ValueError("raw_images: no dataset given")
    part = read_dataset_shard(ctx.dataset, ctx.folder(SHARDS_NAME, shard_key(shard, shards)),
                              shard=shard, shards=shards)
    claim_asset_folder(ctx.output, SHARDS_NAME)  # marks the folder when this shard created it
    return part


def merge(config: RawImagesConfig, ctx: RunContext, *,
          raw_image_shards: Mapping[str, RawImageShard]) -> RawImages:
    """:func:`run`'s result from every shard, byte for byte, with ``config``'s policies applied.
    Raises :class:`~animal_assets.core.shards.ShardsBehind` while a shard is missing or read
    another input (or another version of it) than ``ctx.dataset`` holds now."""
    if not ctx.dataset:
        raise ValueError("raw_images: no dataset given")
    source = Path(ctx.dataset).expanduser().resolve()
    parts = checked_shards(raw_image_shards, dataset_fingerprint(source), NAME,
                           upstream="version of the input")
    moved = [shard_key(p.shard, p.shards) for p in parts if p.source != str(source)]
    if moved:
        raise ShardsBehind(f"{NAME}: shards {moved} read another input than {source}; they run "
                           "again first")
    return merge_raw_shards(parts, ctx.folder(NAME), format_policy=config.format_policy,
                            decode_policy=config.decode_policy, minimum=MIN_USABLE_IMAGES)


def describe_shard(part: RawImageShard, ctx: RunContext, **_) -> dict:
    return {
        "shard": shard_key(part.shard, part.shards), "n_rows": part.n_rows,
        "n_usable": part.n_usable, "n_violations": part.n_violations,
        "images_per_s": round(part.n_rows / max(part.seconds, 1e-9), 1),
        "folder": FileRef(part.root),
    }


def require_conforming(raw: RawImages) -> None:
    """Raise :class:`DatasetError` when the input broke a blocking format rule."""
    if raw.blocking:
        raise DatasetError(
            f"raw_images breaks the format rules (see its checks and {raw.violations_path}); "
            "fix the input or use format_policy: quarantine"
        )


def raw_version(raw: RawImages) -> str:
    """A short hash of the manifest: rows of derived tables align with this RawImages only."""
    return hashlib.sha256(Path(raw.manifest_path).read_bytes()).hexdigest()[:16]


def check_aligned(raw: RawImages, *derived) -> None:
    """Raise when a derived handle was computed from another materialization of raw_images."""
    version = raw_version(raw)
    for handle in derived:
        if handle.raw_version != version:
            raise ValueError(
                f"{type(handle).__name__} was computed from another raw_images "
                "materialization; rematerialize it (materialize unsynced) first"
            )


def describe(raw: RawImages, ctx: RunContext, **_) -> dict:
    info = summary(raw)
    violations = json.loads(Path(raw.violations_path).read_text())
    ctx.log(f"read {raw.n_input_files} files from {ctx.dataset}: {raw.n_usable} usable")
    empty = info.get("empty_classes", [])
    if empty:
        ctx.warn(f"classes {empty} have no usable image; the graph runs on the others")
    return {
        "source": FileRef(str(ctx.dataset)),
        "n_input_files": raw.n_input_files,
        "n_usable": raw.n_usable,
        "n_exif_transposed": raw.n_exif_transposed,
        "n_violations": len(violations),
        "num_classes": raw.num_classes,
        "counts_per_class": Json(info.get("counts_per_class", {})),
        "empty_classes": Json(empty),
        "status_counts": Json(info.get("status_counts", {})),
        "image_summary": Json(info.get("images", {})),
        "violations": Table(pd.DataFrame(violations, columns=["file", "rule", "message"])),
        "manifest": FileRef(raw.manifest_path),
    }

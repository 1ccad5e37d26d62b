"""Stage ``image_quality``: a score and a flag per image for each quality kind (dark, light, low
information, blurry, grayscale, padded; :mod:`animal_assets.core.image_quality`). Under the
``drop`` policy ``clean_labels`` drops the flagged images with the reason ``quality``; under
``report`` (the default) they are only reported."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from animal_assets.core.atomic import atomic_path
from animal_assets.core.image_quality import Thresholds
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.shards import (
    check_count,
    checked_shards,
    shard_assignment,
    shard_key,
    shard_rows,
)
from animal_assets.core.stages.base import FileRef, Json, Pictures, RunContext, Table
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "image_quality"


@dataclass(frozen=True)
class ImageQualityConfig:
    # "report": flag and show the images only; "drop": clean_labels also drops every flagged
    # image (reason "quality") and leaves it out of the label probe's training.
    policy: Literal["report", "drop"] = "report"
    # dark: the 95th percentile of an image's luma (0-1) is below this
    dark_below: float = Thresholds.dark_below
    # light: the 5th percentile of an image's luma (0-1) is above this
    light_above: float = Thresholds.light_above
    # low information: luma histogram entropy (bits, 0-8) below this
    low_information_below: float = Thresholds.low_information_below
    # blurry: share of the luma's variance in its finest detail below this
    blurry_below: float = Thresholds.blurry_below
    # grayscale: 99th percentile of the RGB channel spread (0-255) below this
    grayscale_below: float = Thresholds.grayscale_below
    # padded: share of the image in letterbox or pillarbox bands above this
    padded_above: float = Thresholds.padded_above

    def thresholds(self) -> Thresholds:
        return Thresholds(**{f.name: getattr(self, f.name) for f in fields(Thresholds)})


@dataclass(frozen=True)
class ImageQuality:
    """Quality scores and flags per usable image of :class:`RawImages` (same order)."""

    path: str  # CSV: id, given, per kind its score and {kind}_flag, issues, drop
    raw_version: str
    policy: str
    counts: dict  # kind -> images flagged
    n_flagged: int  # images with at least one flag
    n_drop: int  # images clean_labels drops (0 under "report")


def run(config: ImageQualityConfig, ctx: RunContext, *, raw_images: RawImages) -> ImageQuality:
    return score_quality(raw_images, ctx.folder(NAME), config)


def score_quality(raw: RawImages, out_dir: str | Path, config: ImageQualityConfig) -> ImageQuality:
    """Score every usable image and write the table (see the module docstring)."""
    return _write(raw, _score_table(raw, None, config), Path(out_dir), config.policy)


def _score_table(raw: RawImages, rows: np.ndarray | None,
                 config: ImageQualityConfig) -> pd.DataFrame:
    """The table of the usable images at ``rows`` (None: all): scores, flags, issues, drop."""
    from animal_assets.core import image_quality

    images, manifest = load_raw_images(raw, mmap=True)
    if rows is not None:
        images, manifest = images[rows], manifest.iloc[rows]
    scores = image_quality.score_images(images)
    flags = config.thresholds().flags(scores)
    table = pd.DataFrame({"id": manifest["id"].to_numpy(), "given": manifest["given"].to_numpy()})
    for kind in image_quality.KINDS:
        table[kind] = scores[kind].to_numpy()
        table[f"{kind}_flag"] = flags[kind].to_numpy()
    table["issues"] = image_quality.issues(flags).to_numpy()
    any_flag = flags.to_numpy(dtype=bool).any(axis=1)
    table["drop"] = any_flag & (config.policy == "drop")
    return table


def _write(raw: RawImages, table: pd.DataFrame, out_dir: Path, policy: str) -> ImageQuality:
    from animal_assets.core import image_quality

    path = out_dir / "image_quality.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    flags = table[[f"{kind}_flag" for kind in image_quality.KINDS]].to_numpy(dtype=bool)
    return ImageQuality(
        path=str(path), raw_version=raw_version(raw), policy=policy,
        counts={kind: int(flags[:, i].sum()) for i, kind in enumerate(image_quality.KINDS)},
        n_flagged=int(flags.any(axis=1).sum()), n_drop=int(table["drop"].sum()),
    )


# -- shards: the same scores cut by image id (ANIMAL_ASSETS_SHARDS), merged back in row order --


@dataclass(frozen=True)
class ImageQualityShard:
    """The quality table of one shard's usable images (:mod:`animal_assets.core.shards`)."""

    path: str  # the shard's rows of the table, as :func:`score_quality` writes it
    raw_version: str
    shard: int
    shards: int
    policy: str
    n: int


def run_shard(config: ImageQualityConfig, ctx: RunContext, *, raw_images: RawImages, shard: int,
              shards: int) -> ImageQualityShard:
    """Score the usable images of shard ``shard`` of ``shards``."""
    check_count(shards)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    _, manifest = load_raw_images(raw_images, mmap=True)
    rows = shard_rows(manifest["id"].tolist(), shard, shards)
    table = _score_table(raw_images, rows, config)
    path = ctx.folder(NAME, "shards", shard_key(shard, shards)) / "image_quality.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    return ImageQualityShard(path=str(path), raw_version=raw_version(raw_images), shard=shard,
                             shards=shards, policy=config.policy, n=len(table))


def merge(config: ImageQualityConfig | None, ctx: RunContext, *, raw_images: RawImages,
          image_quality_shards: Mapping[str, ImageQualityShard]) -> ImageQuality:
    """One table from every shard, in the order of ``raw_images``: the same file as one
    unsharded step. Raises :class:`~animal_assets.core.shards.ShardsBehind` while a shard is
    missing or was scored from another raw_images."""
    from animal_assets.core import image_quality

    shards = checked_shards(image_quality_shards, raw_version(raw_images), NAME)
    if len({s.policy for s in shards}) > 1:
        raise ValueError(f"{NAME}: the shards were scored under different policies")
    _, manifest = load_raw_images(raw_images, mmap=True)
    ids = manifest["id"].tolist()
    parts, order = [], []
    assignment = shard_assignment(ids, shards[0].shards)
    for s in shards:
        part = pd.read_csv(s.path, keep_default_na=False)  # pandas 3 reads floats back exactly
        rows = np.flatnonzero(assignment == s.shard)
        if len(part) != len(rows) or part["id"].tolist() != [ids[i] for i in rows]:
            raise ValueError(f"{s.path}: its rows are not the images of shard "
                             f"{shard_key(s.shard, s.shards)}")
        parts.append(part)
        order.append(rows)
    table = pd.concat(parts, ignore_index=True)
    table = table.iloc[np.argsort(np.concatenate(order), kind="stable")].reset_index(drop=True)
    for kind in image_quality.KINDS:
        table[f"{kind}_flag"] = table[f"{kind}_flag"].astype(bool)
    table["drop"] = table["drop"].astype(bool)
    return _write(raw_images, table, ctx.folder(NAME), shards[0].policy)


def describe_shard(shard: ImageQualityShard, ctx: RunContext, **_) -> dict:
    return {"shard": shard_key(shard.shard, shard.shards), "n": shard.n, "policy": shard.policy,
            "scores_file": FileRef(shard.path)}


def read_drops(quality: ImageQuality) -> np.ndarray:
    """(N,) bool: the images ``clean_labels`` drops for their quality."""
    return pd.read_csv(quality.path, usecols=["drop"])["drop"].to_numpy(dtype=bool)


def describe(quality: ImageQuality, ctx: RunContext, *, raw_images: RawImages, **_) -> dict:
    from animal_assets.core import image_quality, media

    check_aligned(raw_images, quality)
    table = pd.read_csv(quality.path, keep_default_na=False)
    images, _ = load_raw_images(raw_images, mmap=True)
    pictures = Pictures(Path(quality.path).parent)
    pictures.add("gallery_quality_issues", "quality_issues.jpg", media.quality_gallery(
        images, table, ctx.names(raw_images.num_classes), kinds=image_quality.KINDS,
    ), alt="flagged images, by kind", caption="kind and score, given label, id")
    counts = pd.DataFrame({
        "kind": list(image_quality.KINDS),
        "flagged": [quality.counts[k] for k in image_quality.KINDS],
        "share": [round(quality.counts[k] / max(len(table), 1), 4) for k in image_quality.KINDS],
    })
    flagged = table[table["issues"] != ""]
    return {
        "policy": quality.policy, "n_flagged": quality.n_flagged, "n_drop": quality.n_drop,
        "flags_by_kind": Table(counts, len(counts)),
        "flagged_preview": Table(flagged[["id", "issues", *image_quality.KINDS]], 15),
        "counts": Json(quality.counts),
        **pictures.entries(),
        "scores_file": FileRef(quality.path),
    }

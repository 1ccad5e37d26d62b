"""Stage ``near_duplicates``: groups of near-copies (the same photograph re-encoded, resized,
shifted, cropped or recoloured) from the nearest neighbours of the embeddings and of small
thumbnails, and a perceptual hash
(:mod:`animal_assets.core.near_duplicates`). ``val_split`` keeps each group on one side: no
validation image has a near-copy in training."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.atomic import atomic_path
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.stages.base import FileRef, Pictures, RunContext, Table
from animal_assets.core.stages.neighbours import Neighbours
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "near_duplicates"


@dataclass(frozen=True)
class NearDuplicatesConfig:
    threshold: float = 0.95  # cosine similarity of the head features from which two images are near-copies
    thumb_threshold: float = 0.97  # correlation of the 12x12 grayscale thumbnails from which two images are near-copies
    k: int = 5  # nearest neighbours looked at per image, in the features (at most neighbours.k) and in the thumbnails
    mirror: bool = False  # also group an image with the mirror image of another (a flipped copy)


@dataclass(frozen=True)
class NearDuplicates:
    """Near-copy group per usable image of :class:`RawImages` (same order)."""

    path: str  # CSV: id, group, dhash (hex)
    pairs_path: str  # CSV: a, b (ids), similarity, by (embedding, thumbnail, hash, bytes)
    groups_path: str  # CSV: one row per group of two or more (see near_duplicates.group_table)
    raw_version: str
    n_groups: int  # groups of two or more images
    n_grouped: int  # images in them
    n_conflicting: int  # groups whose images carry different given labels


def run(config: NearDuplicatesConfig, ctx: RunContext, *, raw_images: RawImages,
        neighbours: Neighbours) -> NearDuplicates:
    return find_groups(raw_images, neighbours, ctx.folder(NAME), config, device=ctx.device)


def find_groups(raw: RawImages, neighbours: Neighbours, out_dir: str | Path,
                config: NearDuplicatesConfig, *, device: str = "cpu") -> NearDuplicates:
    """Group the near-copies and write the tables (see the module docstring)."""
    from animal_assets.core import near_duplicates
    from animal_assets.core.stages.neighbours import read

    check_aligned(raw, neighbours)
    images, manifest = load_raw_images(raw, mmap=True)
    nearest = read(neighbours, min(config.k, len(manifest) - 1), reader="near_duplicates (k)")
    hashes = near_duplicates.dhash(images)
    thumbs = near_duplicates.thumbnails(images)
    mirrored = near_duplicates.thumbnails(images, mirror=True)
    cropped = tuple(near_duplicates.thumbnails(images, margin=m) for m in near_duplicates.SEARCH_MARGINS)
    near = near_duplicates.find_near_copies(
        nearest, thumbs, hashes, manifest["sha256"].tolist(), threshold=config.threshold,
        thumb_threshold=config.thumb_threshold, k=config.k, device=device, mirrored=mirrored,
        mirror=config.mirror, cropped=cropped,
        approximate=neighbours.method == "approximate")  # past the exact search's size, as neighbours
    ids = manifest["id"].to_numpy()
    given = manifest["given"].to_numpy()
    groups = near_duplicates.group_table(near, ids, given)
    out_dir = Path(out_dir)
    paths = {name: out_dir / f"{name}.csv" for name in ("near_duplicates", "pairs", "groups")}
    with atomic_path(paths["near_duplicates"]) as tmp:
        pd.DataFrame({"id": ids, "group": near.group,
                      "dhash": [f"{int(h):016x}" for h in hashes]}).to_csv(tmp, index=False)
    with atomic_path(paths["pairs"]) as tmp:
        pd.DataFrame({"a": ids[near.pairs["a"].to_numpy()], "b": ids[near.pairs["b"].to_numpy()],
                      "similarity": near.pairs["similarity"].round(5), "by": near.pairs["by"]}
                     ).to_csv(tmp, index=False)
    with atomic_path(paths["groups"]) as tmp:
        groups.to_csv(tmp, index=False)
    return NearDuplicates(
        path=str(paths["near_duplicates"]), pairs_path=str(paths["pairs"]),
        groups_path=str(paths["groups"]), raw_version=raw_version(raw),
        n_groups=len(groups), n_grouped=int(groups["size"].sum()) if len(groups) else 0,
        n_conflicting=int(groups["conflict"].sum()) if len(groups) else 0,
    )


def read_groups(near: NearDuplicates) -> np.ndarray:
    """(N,) int64: the near-copy group of each image (a singleton's group holds it alone)."""
    return pd.read_csv(near.path, usecols=["group"])["group"].to_numpy(dtype=np.int64)


def read_hashes(near: NearDuplicates) -> np.ndarray:
    """(N,) uint64: the perceptual hash (dHash) of each image."""
    hexes = pd.read_csv(near.path, usecols=["dhash"], dtype={"dhash": str})["dhash"]
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def describe(near: NearDuplicates, ctx: RunContext, *, raw_images: RawImages, **_) -> dict:
    from animal_assets.core import media

    check_aligned(raw_images, near)
    images, manifest = load_raw_images(raw_images, mmap=True)
    groups = pd.read_csv(near.groups_path)
    pairs = pd.read_csv(near.pairs_path)
    names = ctx.names(raw_images.num_classes)
    pictures = Pictures(Path(near.path).parent)
    index_of = {image_id: i for i, image_id in enumerate(manifest["id"].tolist())}
    pictures.add("gallery_near_copies", "near_copies.jpg", media.near_copy_gallery(
        images, groups, index_of, names,
    ), alt="near-copy groups, conflicting first", caption="group, given label, id")
    detectors = pairs["by"].str.split(",").explode().value_counts() if len(pairs) else pd.Series(dtype=int)
    top = groups.sort_values(["conflict", "size", "group"], ascending=[False, False, True], kind="stable")
    return {
        "n_groups": near.n_groups, "n_grouped": near.n_grouped, "n_conflicting": near.n_conflicting,
        "n_pairs": len(pairs),
        "pairs_by_detector": Table(pd.DataFrame({"detector": detectors.index.astype(str),
                                                 "pairs": detectors.to_numpy(dtype=np.int64)}), 5),
        "top_groups": Table(top, 15),
        **pictures.entries(),
        "groups_file": FileRef(near.groups_path),
    }

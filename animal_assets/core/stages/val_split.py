"""Stage ``val_split``: a clean, class-balanced validation set of trustworthy originals without
copies or near-copies in the input, exported as DS801 (the choice of images is
:func:`animal_assets.core.split.select_val`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from animal_assets.core.atomic import atomic_dir
from animal_assets.core.export import Split, export_split, relocate
from animal_assets.core.ingest import RawImages
from animal_assets.core.stages.base import FileRef, Json, RunContext
from animal_assets.core.stages.clean_labels import CleanLabels, read_decisions
from animal_assets.core.stages.near_duplicates import NearDuplicates, read_groups
from animal_assets.core.stages.raw_images import check_aligned

NAME = "val_split"


@dataclass(frozen=True)
class ValSplitConfig:
    per_class: int = 100  # validation images per class, as the course's validation sets had
    max_fraction: float = 0.2  # never more than this share of a class's trustworthy images
    seed: int = 0  # tie-break among equally trustworthy images


def original_jpeg(raw: RawImages, image_id: str) -> bytes:
    """The input's bytes of one usable image."""
    return (Path(raw.files_dir) / f"{image_id}.jpg").read_bytes()


def run(config: ValSplitConfig, ctx: RunContext, *, raw_images: RawImages,
        clean_labels: CleanLabels, near_duplicates: NearDuplicates) -> Split:
    return make_val_split(raw_images, clean_labels, ctx.folder(NAME), config,
                          near_duplicates=near_duplicates)


def make_val_split(
    raw: RawImages, clean: CleanLabels, out_dir: str | Path, params: ValSplitConfig, *,
    near_duplicates: NearDuplicates | None = None,
) -> Split:
    """Hold out a clean, class-balanced validation set from the most trustworthy originals
    without a copy or (given ``near_duplicates``) a near-copy in the input."""
    from animal_assets.core import split

    check_aligned(raw, clean, *([near_duplicates] if near_duplicates else []))
    decisions = read_decisions(clean)
    is_val = split.select_val(
        decisions, decisions["confidence"].to_numpy(dtype=float),
        dup_group=decisions["dup_group"].to_numpy(), num_classes=raw.num_classes,
        per_class=params.per_class, max_fraction=params.max_fraction, seed=params.seed,
        near_group=read_groups(near_duplicates) if near_duplicates else None,
    )
    rows = decisions[is_val].sort_values("id")
    ids = rows["id"].tolist()
    with atomic_dir(out_dir) as tmp:
        result = export_split(
            tmp, ids=ids, labels=rows["label"].astype(int).tolist(),
            jpegs=[original_jpeg(raw, i) for i in ids], source_ids=ids,
            generated=[False] * len(ids), num_classes=raw.num_classes,
        )
    return relocate(result, tmp, Path(out_dir))


def describe(val: Split, ctx: RunContext, **_) -> dict:
    # select_val refuses a class that has images but too few trustworthy ones, so a class
    # without validation images is one without any image
    empty = [k for k, count in enumerate(val.counts) if count == 0]
    warning = {}
    if empty:
        warning["warning"] = (
            f"classes {empty} have no images: they get no validation or training images, "
            "and their recall is undefined in eval_report"
        )
        ctx.warn(warning["warning"])
    return {
        **warning, "empty_classes": Json(empty),
        "n": sum(val.counts), "counts_per_class": Json(list(val.counts)),
        "export": FileRef(val.dir),
    }

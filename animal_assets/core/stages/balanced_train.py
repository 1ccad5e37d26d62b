"""Stage ``balanced_train``: the cleaned training set with minority classes oversampled by
augmented copies, exported as DS801 ``train/`` plus ``val/`` and one zip of both (the plan and
the augmentation are :mod:`animal_assets.core.split`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from animal_assets.core import ds801
from animal_assets.core.atomic import atomic_dir
from animal_assets.core.export import Split, export_split, relocate, zip_tree
from animal_assets.core.ingest import RawImages, load_raw_images, read_manifest
from animal_assets.core.stages.base import FileRef, Json, Pictures, RunContext
from animal_assets.core.stages.clean_labels import CleanLabels, read_decisions
from animal_assets.core.stages.near_duplicates import NearDuplicates, read_groups
from animal_assets.core.stages.raw_images import check_aligned
from animal_assets.core.stages.val_split import original_jpeg

NAME = "balanced_train"


@dataclass(frozen=True)
class BalancedTrainConfig:
    max_factor: float = 3.0  # a class grows by oversampling to at most this multiple of itself
    rotate_deg: float = 10.0  # largest rotation of a generated copy, in degrees
    translate: int = 4  # largest shift of a generated copy, in pixels
    seed: int = 0  # which images are copied and how each copy is augmented
    # Near-copies (near_duplicates' groups) in the training set. "keep_all": every image is
    # exported, but a group counts as one image when the classes are balanced, and a photograph
    # with copies is repeated no more often than one without; "keep_one": only the first image
    # of each group (within a class) is exported.
    near_copies: Literal["keep_all", "keep_one"] = "keep_all"


@dataclass(frozen=True)
class BalancedTrain:
    train: Split
    val_dir: str
    zip_path: str  # train/ and val/ in one archive, the deliverable
    n_generated: int
    counts_before: tuple[int, ...]
    # per class, the training images with each near-copy group counted once
    distinct_before: tuple[int, ...] = ()
    n_left_out: int = 0  # near-copies left out of the export (keep_one)


def run(config: BalancedTrainConfig, ctx: RunContext, *, raw_images: RawImages,
        clean_labels: CleanLabels, val_split: Split, near_duplicates: NearDuplicates) -> BalancedTrain:
    return make_balanced_train(raw_images, clean_labels, val_split, ctx.folder(NAME), config,
                               near=near_duplicates)


def make_balanced_train(
    raw: RawImages, clean: CleanLabels, val: Split, out_dir: str | Path, params: BalancedTrainConfig,
    *, near: NearDuplicates | None = None,
) -> BalancedTrain:
    """Export the cleaned training set with minority classes oversampled by augmented copies.

    ``near``: the near-copy groups, handled as ``params.near_copies`` says; without it every image
    is a photograph of its own."""
    from animal_assets.core import split

    check_aligned(raw, clean, *([near] if near is not None else []))
    decisions = read_decisions(clean)
    val_ids = set(pd.read_csv(val.ids_path)["id"])
    train_mask = (decisions["label"].to_numpy() >= 0) & ~decisions["id"].isin(val_ids).to_numpy()
    train_labels = np.where(train_mask, decisions["label"].to_numpy(), -1).astype(np.int64)
    counts_before = tuple(
        int(c) for c in np.bincount(train_labels[train_mask], minlength=raw.num_classes)
    )
    group = read_groups(near) if near is not None else np.arange(len(train_labels))
    source_idx, generated = split.balance_plan(
        train_labels, num_classes=raw.num_classes, max_factor=params.max_factor, group=group,
        keep_one=params.near_copies == "keep_one", seed=params.seed,
    )
    distinct = split.distinct_counts(train_labels, group, num_classes=raw.num_classes)
    n_left_out = int(train_mask.sum() - (~generated).sum())
    images, _ = load_raw_images(raw)
    pixels = split.make_balanced_images(
        images, source_idx, generated, seed=params.seed, rotate_deg=params.rotate_deg,
        translate=params.translate,
    )
    all_ids = decisions["id"].to_numpy()
    # every id of the input (quarantined files included) and of the validation set is taken, so
    # the graph can run on its own exported deliverable
    taken = set(read_manifest(raw.manifest_path)["id"].astype(str)) | {str(i) for i in val_ids}
    copies: dict[str, int] = {}
    ids, jpegs = [], []
    for j, (i, gen) in enumerate(zip(source_idx, generated)):
        if gen:
            source = str(all_ids[i])
            copies[source] = copies.get(source, -1) + 1
            ids.append(ds801.derived_image_id(source, copies[source], seed=params.seed, taken=taken))
            jpegs.append(ds801.encode_jpeg(pixels[j]))
        else:
            ids.append(str(all_ids[i]))
            jpegs.append(original_jpeg(raw, str(all_ids[i])))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        train = export_split(
            tmp / "train", ids=ids, labels=train_labels[source_idx].tolist(), jpegs=jpegs,
            source_ids=[str(all_ids[i]) for i in source_idx], generated=list(map(bool, generated)),
            num_classes=raw.num_classes,
        )
        zip_tree(tmp / "ds801-clean.zip", {"train": Path(train.dir), "val": Path(val.dir)})
    train = relocate(train, tmp, out_dir)
    return BalancedTrain(
        train=train, val_dir=val.dir, zip_path=str(out_dir / "ds801-clean.zip"),
        n_generated=int(np.sum(generated)), counts_before=counts_before,
        distinct_before=tuple(int(c) for c in distinct), n_left_out=n_left_out,
    )


def describe(bal: BalancedTrain, ctx: RunContext, *, raw_images: RawImages, **_) -> dict:
    from animal_assets.core import media, plots

    names = ctx.names(raw_images.num_classes)
    pictures = Pictures(Path(bal.zip_path).parent)
    pictures.add("gallery_generated", "generated.jpg", media.generated_gallery(
        np.load(bal.train.images_path, mmap_mode="r"), pd.read_csv(bal.train.ids_path), names,
    ), alt="generated training images", caption="augmented copies of minority-class images")
    pictures.add("plot_class_counts", "class_counts.png", plots.class_counts_plot({
        "cleaned (train part)": list(bal.counts_before), "after balancing": list(bal.train.counts),
    }, names, title="training images per class"), alt="training images per class")
    return {
        "n": sum(bal.train.counts), "n_generated": bal.n_generated,
        "n_near_copies_left_out": bal.n_left_out,
        "counts_before": Json(list(bal.counts_before)),
        "distinct_before": Json(list(bal.distinct_before)),
        "counts_after": Json(list(bal.train.counts)),
        **pictures.entries(),
        "export": FileRef(bal.train.dir),
        "zip": FileRef(bal.zip_path),
    }

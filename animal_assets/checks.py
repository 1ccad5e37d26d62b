"""Asset checks: the DS801 format rules on the input and on everything the graph exports, that
a person's review is applied as written, and quality bars on what the stages made.

The format checks on ``raw_images`` are blocking: a failure at ERROR severity stops everything
downstream in that run, and the downstream assets themselves refuse a ``raw_images`` whose
format rules failed in any later run. Under the quarantine policies a violation is reported at
WARN severity, which blocks nothing, and the offending files are left out instead.

The quality checks (:mod:`animal_assets.core.quality`) report at WARN: a class the cleaning
mostly dropped, a training set balancing could not even out, a model below its accuracy floor.

A check's name does not repeat its asset's: Dagster shows it under the asset, and its step is
``{asset}_{check}``.
"""

import hashlib
import json
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from animal_assets.assets import (
    balanced_train,
    clean_labels,
    eval_report,
    near_duplicates,
    raw_images,
    table_metadata,
    val_split,
)
from animal_assets.core import quality, review
from animal_assets.core.export import Split, validate_ds801_folder
from animal_assets.core.stages.balanced_train import BalancedTrain
from animal_assets.core.stages.clean_labels import CleanLabels, read_decisions
from animal_assets.core.formats import RULE_GROUPS
from animal_assets.core.ingest import RawImages
from animal_assets.core.stages.near_duplicates import NearDuplicates, read_hashes
from animal_assets.resources import DatasetResource

MAX_LISTED = 50  # offending files listed in a check's metadata; the full list is on disk


def _violations_result(
    violations: list[dict], *, strict: bool, full_list: str, what: str,
) -> dg.AssetCheckResult:
    table = pd.DataFrame(violations, columns=["file", "rule", "message"])
    metadata: dict = {
        "n_violations": len(table),
        "files": dg.MetadataValue.json(table["file"].head(MAX_LISTED).tolist()),
        "rules": dg.MetadataValue.json(table["rule"].value_counts().to_dict()),
        "full_list": dg.MetadataValue.path(full_list),
    }
    if len(table):
        shown = table.head(MAX_LISTED).to_markdown(index=False)
        metadata["violations"] = dg.MetadataValue.md(shown)
        metadata["first"] = table["message"].iloc[0]
    return dg.AssetCheckResult(
        passed=table.empty,
        severity=dg.AssetCheckSeverity.ERROR if strict else dg.AssetCheckSeverity.WARN,
        description=(
            f"{what}: ok" if table.empty else
            f"{what}: {len(table)} violation(s), first: {table['message'].iloc[0]}"
        ),
        metadata=metadata,
    )


def _raw_violations(raw: RawImages, rules: frozenset[str]) -> list[dict]:
    every = json.loads(Path(raw.violations_path).read_text())
    return [v for v in every if v["rule"] in rules]


def _raw_check(name: str, rules: frozenset[str], policy_field: str, what: str):
    @dg.asset_check(asset=raw_images, name=name, blocking=True, description=(
        f"{what}. Blocks what is below under the strict policy ({policy_field}: strict, the "
        "default); under quarantine it reports at WARN and the files are left out."))
    def _check(raw_images: RawImages) -> dg.AssetCheckResult:
        strict = getattr(raw_images, policy_field) == "strict"
        return _violations_result(
            _raw_violations(raw_images, rules), strict=strict,
            full_list=raw_images.violations_path, what=what,
        )

    return _check


raw_images_filenames_follow_rule = _raw_check(
    "filenames_follow_rule", RULE_GROUPS["paths_and_names"], "format_policy",
    "every file is imgs/img_{uuid}.jpg with a canonical lower-case uuid, a regular file inside "
    "the dataset",
)
raw_images_labels_are_one_hot = _raw_check(
    "labels_are_one_hot", RULE_GROUPS["labels"], "format_policy",
    "data-labels.json is one object with unique img_{uuid} keys; labels are K JSON integers "
    "0/1 with exactly one 1, the same K everywhere",
)
raw_images_images_and_labels_pair_up = _raw_check(
    "images_and_labels_pair_up", RULE_GROUPS["pairing"], "format_policy",
    "every image has a label and every label an image",
)
raw_images_decode_as_64x64_rgb = _raw_check(
    "decode_as_64x64_rgb", RULE_GROUPS["images"], "decode_policy",
    "every image decodes as a 64x64 RGB JPEG",
)


def _export_result(folder: str, what: str) -> dg.AssetCheckResult:
    violations = [
        {"file": v.file, "rule": v.rule, "message": v.message}
        for v in validate_ds801_folder(folder)
    ]
    return _violations_result(violations, strict=True, full_list=folder, what=what)


@dg.asset_check(asset=val_split, name="export_follows_format", blocking=True)
def val_split_export_follows_format(val_split: Split) -> dg.AssetCheckResult:
    """The exported validation folder passes every DS801 rule."""
    return _export_result(val_split.dir, "val_split export follows the DS801 rules")


@dg.asset_check(asset=balanced_train, name="export_follows_format", blocking=True)
def balanced_train_export_follows_format(
    balanced_train: BalancedTrain,
) -> dg.AssetCheckResult:
    """The exported train folder passes every DS801 rule, and the zip holds exactly train/ and
    val/ as exported."""
    result = _export_result(balanced_train.train.dir, "balanced_train export follows the DS801 rules")
    expected = {
        f"{prefix}/{f.relative_to(folder).as_posix()}": f.stat().st_size
        for prefix, folder in (("train", Path(balanced_train.train.dir)),
                               ("val", Path(balanced_train.val_dir)))
        for f in folder.rglob("*") if f.is_file()
    }
    with zipfile.ZipFile(balanced_train.zip_path) as zf:
        bad_crc = zf.testzip()
        in_zip = {i.filename: i.file_size for i in zf.infolist() if not i.is_dir()}
    mismatched = sorted(set(expected.items()) ^ set(in_zip.items()))
    if bad_crc or mismatched:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.ERROR,
            description=f"{balanced_train.zip_path}: does not match the exported folders",
            metadata={"corrupt_member": str(bad_crc),
                      "mismatched": dg.MetadataValue.json([m[0] for m in mismatched[:MAX_LISTED]])},
        )
    return result


def _content_hashes(folder: str) -> dict[str, str]:
    return {
        hashlib.sha256(f.read_bytes()).hexdigest(): f.name
        for f in sorted(Path(folder, "imgs").glob("*.jpg"))
    }


@dg.asset_check(asset=balanced_train, name="shares_nothing_with_val_split", blocking=True,
                additional_ins={"val_split": dg.AssetIn()})
def balanced_train_shares_nothing_with_val_split(
    balanced_train: BalancedTrain, val_split: Split,
) -> dg.AssetCheckResult:
    """No image is in both exports (by id, by source image and by content), and no uuid is
    used twice."""
    train = pd.read_csv(balanced_train.train.ids_path)
    val = pd.read_csv(val_split.ids_path)
    problems = []
    dup_ids = train["id"][train["id"].duplicated()].tolist()
    problems += [f"{i}: uuid used twice in train" for i in dup_ids]
    problems += [f"{i}: in both train and val" for i in sorted(set(train["id"]) & set(val["id"]))]
    problems += [
        f"{i}: val image is the source of a generated train image"
        for i in sorted(set(train["source_id"]) & set(val["id"]))
    ]
    train_h, val_h = _content_hashes(balanced_train.train.dir), _content_hashes(val_split.dir)
    problems += [
        f"{val_h[h]}: byte-identical to train image {train_h[h]}"
        for h in sorted(set(train_h) & set(val_h))
    ]
    return dg.AssetCheckResult(
        passed=not problems,
        description="train and val are disjoint" if not problems else problems[0],
        metadata={"n_problems": len(problems),
                  "problems": dg.MetadataValue.json(problems[:MAX_LISTED])},
    )


@dg.asset_check(asset=clean_labels, name="follows_the_review")
def clean_labels_follow_the_review(
    clean_labels: CleanLabels, dataset: DatasetResource,
) -> dg.AssetCheckResult:
    """Every decision of the review file is in the final decisions, marked ``source = review``,
    and no other row is; a review file edited since the materialization is reported (WARN)."""
    d = read_decisions(clean_labels)
    applied = clean_labels.summary.get("review_version", review.NO_REVIEW)
    current = review.review_version(dataset.review_path or None)
    if current != applied:
        return dg.AssetCheckResult(
            passed=False, severity=dg.AssetCheckSeverity.WARN,
            description="the review file changed since clean_labels was materialized; observe "
                        "review_file and materialize the unsynced assets",
            metadata={"applied_version": applied, "current_version": current},
        )
    k = len(clean_labels.summary["per_class"])
    wanted = review.empty_review() if current == review.NO_REVIEW else review.read_review(
        dataset.review_path, known_ids=d["id"].astype(str).tolist(),
        given=d["given"].to_numpy(), num_classes=k, class_names=dataset.names(k),
    )
    got = d[d["source"] == "review"].set_index("id")
    problems = sorted(set(got.index) ^ set(wanted["id"]))
    for row in wanted.itertuples():
        if row.id in got.index and (got.at[row.id, "action"] != row.action
                                    or int(got.at[row.id, "label"]) != row.label):
            problems.append(row.id)
    return dg.AssetCheckResult(
        passed=not problems,
        description=(f"{len(wanted)} review decision(s) applied" if not problems else
                     f"{len(problems)} review decision(s) not applied, first {problems[0]}"),
        metadata={"n_reviewed": len(wanted), "review_version": current,
                  "not_applied": dg.MetadataValue.json(problems[:MAX_LISTED])},
    )


def _verdict(verdict: quality.Verdict, **metadata) -> dg.AssetCheckResult:
    if not verdict.table.empty:
        metadata["table"] = table_metadata(verdict.table, max_rows=100)
    return dg.AssetCheckResult(passed=verdict.passed, severity=dg.AssetCheckSeverity.WARN,
                               description=verdict.description, metadata=metadata)


@dg.asset_check(asset=clean_labels, name="no_class_mostly_dropped", description=(
    f"no class loses more than {quality.MAX_DROP_SHARE:.0%} of its given images to drops"))
def clean_labels_no_class_mostly_dropped(
    clean_labels: CleanLabels, dataset: DatasetResource,
) -> dg.AssetCheckResult:
    per_class = clean_labels.summary["per_class"]
    verdict = quality.drop_shares([c["given"] for c in per_class], [c["dropped"] for c in per_class],
                                  dataset.names(len(per_class)))
    return _verdict(verdict, max_share=quality.MAX_DROP_SHARE)


@dg.asset_check(asset=balanced_train, name="class_sizes_within_bounds", description=(
    f"after balancing, the largest training class holds at most {quality.MAX_CLASS_RATIO:g} "
    "times the images of the smallest"))
def balanced_train_class_sizes_within_bounds(
    balanced_train: BalancedTrain, dataset: DatasetResource,
) -> dg.AssetCheckResult:
    k = len(balanced_train.counts_before)
    labels = pd.read_csv(balanced_train.train.ids_path)["label"].to_numpy()
    counts = [int(n) for n in np.bincount(labels, minlength=k)]
    verdict = quality.class_size_ratio(counts, dataset.names(k))
    return _verdict(verdict, max_ratio=quality.MAX_CLASS_RATIO)


@dg.asset_check(asset=eval_report, name="val_accuracy_above_floor", description=(
    "val_split's balanced accuracy is at least the report's min_val_balanced_accuracy"))
def eval_report_val_accuracy_above_floor(eval_report: dict) -> dg.AssetCheckResult:
    accuracy = float(eval_report["val_split"]["balanced_accuracy"])
    floor = float(eval_report["min_val_balanced_accuracy"])
    return _verdict(quality.accuracy_floor(accuracy, floor),
                    val_balanced_accuracy=round(accuracy, 4), floor=floor)


@dg.asset_check(asset=near_duplicates, name="test_set_not_in_the_data",
                additional_ins={"raw_images": dg.AssetIn()}, description=(
                    "no image of the configured test set has a near-copy (thumbnail or its mirror "
                    "image, perceptual hash) in the input, where the exports come from"))
def near_duplicates_test_set_not_in_the_data(
    near_duplicates: NearDuplicates, raw_images: RawImages, dataset: DatasetResource,
) -> dg.AssetCheckResult:
    """A test image with a copy in the data scores what the model saw in training: WARN with the
    ids of each test image and its copy, and a gallery of the pairs."""
    import tempfile

    from animal_assets.core import media
    from animal_assets.core.ingest import load_raw_images, read_dataset
    from animal_assets.core.near_duplicates import contamination

    if not dataset.test_set:
        return dg.AssetCheckResult(passed=True, metadata={"test_set": "none configured"})
    images, manifest = load_raw_images(raw_images, mmap=True)
    with tempfile.TemporaryDirectory(prefix="animal-assets-test-set-") as tmp:
        test_raw = read_dataset(dataset.test_set, Path(tmp) / "raw")
        test_images, test_manifest = load_raw_images(test_raw)
    found = contamination(test_images, images, hashes=read_hashes(near_duplicates))
    table = pd.DataFrame({
        "test_image": test_manifest["id"].to_numpy()[found["test"].to_numpy()],
        "input_image": manifest["id"].to_numpy()[found["match"].to_numpy()],
        "correlation": found["correlation"].round(4), "by": found["by"],
    })
    metadata: dict = {"test_set": dataset.test_set, "n_test_images": len(test_images),
                      "n_with_a_copy": len(table),
                      "share_with_a_copy": round(len(table) / max(len(test_images), 1), 4),
                      "pairs": table_metadata(table.head(MAX_LISTED), max_rows=MAX_LISTED)}
    if len(table):
        shown = found.head(8)
        pictures = [img for t, m in zip(shown["test"], shown["match"])
                    for img in (test_images[t], np.asarray(images[m]))]
        captions = [c for t, m in zip(table["test_image"].head(8), table["input_image"].head(8))
                    for c in (f"test\n{t[4:12]}", f"input\n{m[4:12]}")]
        metadata["gallery_pairs"] = dg.MetadataValue.md(media.image_markdown(
            media.gallery(np.stack(pictures), captions), alt="test images beside their copies"))
    return dg.AssetCheckResult(
        passed=table.empty, severity=dg.AssetCheckSeverity.WARN, metadata=metadata,
        description=None if table.empty else (
            f"{len(table)} of {len(test_images)} test images have a copy in the input, e.g. "
            f"{table['test_image'].iloc[0]} ~ {table['input_image'].iloc[0]}"))


ALL_CHECKS = [
    raw_images_filenames_follow_rule,
    raw_images_labels_are_one_hot,
    raw_images_images_and_labels_pair_up,
    raw_images_decode_as_64x64_rgb,
    val_split_export_follows_format,
    balanced_train_export_follows_format,
    balanced_train_shares_nothing_with_val_split,
    clean_labels_follow_the_review,
    clean_labels_no_class_mostly_dropped,
    balanced_train_class_sizes_within_bounds,
    eval_report_val_accuracy_above_floor,
    near_duplicates_test_set_not_in_the_data,
]

"""The asset graph. Each asset reads its config, calls one core step and describes what it made.

input_dataset ─▶ raw_images ─▶ embeddings ─▶ ood_scores ─▶ clean_labels ─▶ val_split
                                                                  └────────▶ balanced_train
                                       resnet34_model ◀─ (balanced_train, val_split)
                                       eval_report ◀─ (resnet34_model, val_split, clean_labels, ood_scores)
                                       ablation_report ◀─ (resnet34_model's trainer on each recipe of
                                                           raw_images, clean_labels, balanced_train; val_split)

review_file ─▶ clean_labels, val_split, balanced_train, resnet34_model, eval_report, ablation_report

Every asset also depends on ``input_dataset`` directly: Dagster marks an asset unsynced only
when a direct upstream changed, so this edge makes an observed change of the input mark the
whole graph unsynced at once, and "Materialize unsynced" reruns it in one go. ``review_file``
(a person's review of the cleaning decisions) is a direct upstream of ``clean_labels`` and of
everything below it for the same reason: an observed edit of the review marks exactly those
assets unsynced.

Galleries and plots are written beside each asset's outputs and embedded in its metadata
(:mod:`animal_assets.core.media`), so the Dagster UI shows what each step did.
"""

import json
import math
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from animal_assets.configs import (
    AblationConfig,
    BalancedTrainConfig,
    CleanLabelsConfig,
    EmbeddingsConfig,
    OodScoresConfig,
    RawImagesConfig,
    Resnet34Config,
    ValSplitConfig,
)
from animal_assets.core import media, review, steps
from animal_assets.core.ingest import (
    MIN_USABLE_IMAGES,
    RawImages,
    dataset_fingerprint,
    load_raw_images,
    read_dataset,
    summary,
)
from animal_assets.core.profiling import measure
from animal_assets.resources import DatasetResource, DeviceResource, StorageResource

GROUP = "animal_assets"


def _observe_input(dataset: DatasetResource, storage: StorageResource) -> dg.DataVersion:
    """Data version = hash of the labels file and the image listing of the input."""
    path, _ = dataset.resolve(storage)
    return dg.DataVersion(dataset_fingerprint(path))


with warnings.catch_warnings():
    # Observable source assets are marked beta; they are the documented way to version an input.
    warnings.simplefilter("ignore", dg.BetaWarning)
    input_dataset = dg.observable_source_asset(
        name="input_dataset", group_name=GROUP,
        description="The input dataset (folder or archive), as configured.",
    )(_observe_input)


def _observe_review(dataset: DatasetResource) -> dg.DataVersion:
    """Data version = hash of the review file's bytes, or a fixed "no-review" version."""
    return dg.DataVersion(review.review_version(dataset.review_path or None))


with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    review_file = dg.observable_source_asset(
        name="review_file", group_name=GROUP,
        description=(
            "A person's review of the cleaning decisions (CSV: id, action keep/relabel/drop, "
            "label, note), from the dataset resource's review_path. Its decisions overrule the "
            "automatic ones in clean_labels."
        ),
    )(_observe_review)

#: Upstream edges of the assets that a review changes (see the module docstring).
REVIEWED = [input_dataset, review_file]

GALLERY_CAPTIONS = {
    "relabelled": "given -> new label, probability of the new label; framed: a reviewer's decision",
    "dropped": "reason, given label, id; framed: a reviewer's decision",
    "duplicate_conflicts": "byte-identical copies with different given labels: group, given "
                           "label, what it became (drop (copy): a copy of the kept image)",
}


def _md_table(df: pd.DataFrame, max_rows: int = 20) -> dg.MetadataValue:
    shown = df.head(max_rows)
    more = f"\n\n… {len(df) - max_rows} more" if len(df) > max_rows else ""
    return dg.MetadataValue.md(shown.to_markdown(index=False) + more)


def _stats_metadata(stats) -> dict:
    return {"wall_seconds": round(stats.seconds, 2), "peak_rss_mb": round(stats.peak_rss_mb, 1)}


class _Media:
    """Pictures of one materialization: each is written beside the asset's outputs and embedded
    in its metadata as an inline image."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.metadata: dict = {}
        self.n_bytes = 0

    def add(self, key: str, filename: str, data: bytes | None, *, alt: str, caption: str = "") -> None:
        if data is None:
            # nothing to show this time: a picture from an earlier run would mislead
            (self.folder / filename).unlink(missing_ok=True)
            return
        media.write_image(self.folder / filename, data)
        md = media.image_markdown(data, alt=alt, caption=caption)
        self.n_bytes += len(md)
        self.metadata[key] = dg.MetadataValue.md(md)

    def entries(self) -> dict:
        return {**self.metadata, "media_kb": round(self.n_bytes / 1024, 1)}


def _progress(context: dg.AssetExecutionContext, what: str, *, every: int = 10):
    """A ``callback(done, total)`` that logs ``what done/total (pct%)`` each time the share done
    passes a multiple of ``every`` percent, so long steps show progress live in the run log."""
    last = [-1]

    def report(done: int, total: int) -> None:
        pct = 100 * done // max(total, 1)
        if pct // every != last[0] or done >= total:
            last[0] = pct // every
            context.log.info(f"{what} {done}/{total} ({pct}%)")

    return report


def _training_progress(context: dg.AssetExecutionContext, epochs: int, *, per_epoch: int = 4):
    """``(on_epoch, on_batch)`` callbacks of the trainer that log one line per epoch and about
    ``per_epoch`` lines of optimiser steps within each epoch."""

    def on_epoch(row: dict) -> None:
        acc = row.get("val_balanced_acc")
        context.log.info(
            f"epoch {row['epoch']}/{epochs} ({100 * row['epoch'] // epochs}%): "
            f"loss {row['train_loss']:.4f}, val balanced acc "
            f"{'n/a' if acc is None else f'{acc:.4f}'}, {row['images_per_s']:.0f} img/s"
        )

    chunk = [-1]

    def on_batch(done: int, total: int) -> None:
        steps_per_epoch = max(1, total // epochs)
        now = per_epoch * done // steps_per_epoch
        if now != chunk[0]:
            chunk[0] = now
            context.log.info(
                f"training step {done}/{total} ({100 * done // max(total, 1)}%), "
                f"epoch {min(epochs, math.ceil(done / steps_per_epoch))}/{epochs}"
            )

    return on_epoch, on_batch


def _guard(raw: RawImages) -> None:
    """Refuse to build on a raw_images result whose blocking checks failed (in any run)."""
    if raw.blocking:
        raise dg.Failure(
            description=(
                "raw_images breaks the format rules (see its checks and "
                f"{raw.violations_path}); fix the input or use format_policy: quarantine"
            )
        )


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1", kinds={"python"})
def raw_images(
    context: dg.AssetExecutionContext, config: RawImagesConfig, dataset: DatasetResource,
    storage: StorageResource,
) -> dg.Output[RawImages]:
    """Every image decoded once into a uint8 array, with a manifest of ids, labels and hashes.

    Every input of the run is validated first (:mod:`animal_assets.core.preflight`), so a run
    launched from the UI is refused with the same line as one from the command line; too few
    usable images stop the graph here.
    """
    dataset.check(storage)
    path, _ = dataset.resolve(storage)
    with measure() as stats:
        # too few usable images stop the step before the previous raw_images is replaced;
        # with a broken format rule the blocking checks speak instead
        raw = read_dataset(
            path, storage.path("raw_images"), format_policy=config.format_policy,
            decode_policy=config.decode_policy, minimum=MIN_USABLE_IMAGES,
        )
    info = summary(raw)
    violations = json.loads(Path(raw.violations_path).read_text())
    context.log.info(f"read {raw.n_input_files} files from {path}: {raw.n_usable} usable")
    empty = info.get("empty_classes", [])
    if empty:
        context.log.warning(f"classes {empty} have no usable image; the graph runs on the others")
    return dg.Output(raw, metadata={
        "source": dg.MetadataValue.path(path),
        "n_input_files": raw.n_input_files,
        "n_usable": raw.n_usable,
        "n_exif_transposed": raw.n_exif_transposed,
        "n_violations": len(violations),
        "num_classes": raw.num_classes,
        "counts_per_class": dg.MetadataValue.json(info.get("counts_per_class", {})),
        "empty_classes": dg.MetadataValue.json(empty),
        "status_counts": dg.MetadataValue.json(info.get("status_counts", {})),
        "image_summary": dg.MetadataValue.json(info.get("images", {})),
        "violations": _md_table(pd.DataFrame(violations, columns=["file", "rule", "message"])),
        "manifest": dg.MetadataValue.path(raw.manifest_path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="2", kinds={"pytorch"})
def embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingsConfig, raw_images: RawImages,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[steps.Embeddings]:
    """EfficientNet-Lite0 ImageNet features of every usable image, stored as .npy: the 1,280 head
    features, then every block's pooled mean and the deeper blocks' pooled std (4,592 in all;
    1,280 with ``stages: false``)."""
    _guard(raw_images)

    with measure() as stats:
        emb = steps.compute_embeddings(
            raw_images, storage.path("embeddings"), config.to_core(), device=compute.device,
            on_progress=_progress(context, "embedded images"),
        )
    storage.mark("embeddings")
    return dg.Output(emb, metadata={
        "n": emb.n, "dim": emb.dim, "head_dim": emb.head_dim, "image_size": emb.image_size,
        "device": emb.device, "precision": emb.precision,
        "images_per_s": round(emb.n / max(emb.seconds, 1e-9), 1),
        "embeddings_file": dg.MetadataValue.path(emb.path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
def ood_scores(
    config: OodScoresConfig, raw_images: RawImages, embeddings: steps.Embeddings,
    dataset: DatasetResource, storage: StorageResource,
) -> dg.Output[steps.OodScores]:
    """Out-of-distribution score per image (mean cosine distance to its k nearest neighbours)."""
    _guard(raw_images)
    with measure() as stats:
        scores = steps.score_outliers(
            raw_images, embeddings, storage.path("ood_scores"), config.to_core()
        )
    storage.mark("ood_scores")
    table = pd.read_csv(scores.path)
    images, manifest = load_raw_images(raw_images, mmap=True)
    names = dataset.names(raw_images.num_classes)
    pictures = _Media(Path(scores.path).parent)
    pictures.add("gallery_most_outlying", "most_outlying.jpg", media.outlier_gallery(
        images, table, manifest["given"].to_numpy(), names,
    ), alt="most outlying images", caption="rank and score, given label, id")
    pictures.add("plot_scores", "scores.png", media.score_histogram(
        table["score"].to_numpy(), scores.threshold, title="outlier scores",
    ), alt="histogram of outlier scores")
    return dg.Output(scores, metadata={
        "method": scores.method, "k": scores.k, "n_flagged": scores.n_flagged,
        "share_flagged": float(round(scores.fraction, 4)),
        "share": "estimated from the scores" if scores.estimated else "fixed by the config",
        "threshold": float(round(scores.threshold, 5)),
        "most_outlying": _md_table(table.sort_values("rank")[["id", "score"]], 15),
        **pictures.entries(),
        "scores_file": dg.MetadataValue.path(scores.path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="2")
def clean_labels(
    context: dg.AssetExecutionContext, config: CleanLabelsConfig, raw_images: RawImages,
    embeddings: steps.Embeddings, ood_scores: steps.OodScores, dataset: DatasetResource,
    storage: StorageResource,
) -> dg.Output[steps.CleanLabels]:
    """Keep, relabel or drop each image: a cross-validated probe under an estimated noise model,
    class floors; then a person's review, which overrules the automatic decision of every image
    it lists."""
    _guard(raw_images)
    names = dataset.names(raw_images.num_classes)
    with measure() as stats:
        auto = steps.clean_label_decisions(
            raw_images, embeddings, ood_scores, storage.path("clean_labels", "auto"),
            config.to_core(),
        )
        clean, d, version = review.reviewed_clean_labels(
            auto, dataset.review_path or None, storage.path("clean_labels"),
            num_classes=raw_images.num_classes, class_names=names,
        )
    storage.mark("clean_labels")
    changed = d[d["action"] != "keep"].sort_values("confidence", ascending=False)
    reviewed = d[d["source"] == "review"]
    context.log.info(
        f"decisions: {d['action'].value_counts().to_dict()}; {len(reviewed)} from the review "
        f"({version})"
    )
    images, _ = load_raw_images(raw_images, mmap=True)
    pictures = _Media(Path(clean.path).parent)
    galleries = media.decision_galleries(images, d, names)
    for key in ("relabelled", "dropped", "duplicate_conflicts"):
        pictures.add(f"gallery_{key}", f"{key}.jpg", galleries.get(key), alt=key.replace("_", " "),
                     caption=GALLERY_CAPTIONS[key])
    k = raw_images.num_classes
    label = d["label"].to_numpy()
    pictures.add("plot_class_counts", "class_counts.png", media.class_counts_plot({
        "given": np.bincount(d["given"].to_numpy(), minlength=k).tolist(),
        "after cleaning": np.bincount(label[label >= 0], minlength=k).tolist(),
    }, names, title="images per class"), alt="images per class, given and after cleaning")
    review_rows = reviewed.assign(auto=reviewed["auto_action"] + " " + reviewed["auto_label"].astype(str),
                                  review=reviewed["action"] + " " + reviewed["label"].astype(str))
    return dg.Output(clean, metadata={
        "actions": dg.MetadataValue.json(d["action"].value_counts().to_dict()),
        "reasons": dg.MetadataValue.json(d[d["reason"] != ""]["reason"].value_counts().to_dict()),
        "summary": dg.MetadataValue.json(clean.summary),
        "changed_preview": _md_table(
            changed[["id", "given", "label", "action", "reason", "confidence", "source"]], 20
        ),
        "n_reviewed": len(reviewed),
        "review_version": version,
        "review": _md_table(review_rows[["id", "auto", "review", "review_note"]], 50),
        **pictures.entries(),
        "decisions_file": dg.MetadataValue.path(clean.path),
        "review_template": dg.MetadataValue.path(str(Path(clean.path).parent / "review_template.csv")),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="1")
def val_split(
    context: dg.AssetExecutionContext, config: ValSplitConfig, raw_images: RawImages,
    clean_labels: steps.CleanLabels, storage: StorageResource,
) -> dg.Output[steps.Split]:
    """A clean, class-balanced validation set of trustworthy originals, exported as DS801."""
    _guard(raw_images)
    with measure() as stats:
        val = steps.make_val_split(
            raw_images, clean_labels, storage.path("val_split"), config.to_core()
        )
    # select_val refuses a class that has images but too few trustworthy ones, so a class
    # without validation images is one without any image
    empty = [k for k, count in enumerate(val.counts) if count == 0]
    warning = {}
    if empty:
        warning["warning"] = (
            f"classes {empty} have no images: they get no validation or training images, "
            "and their recall is undefined in eval_report"
        )
        context.log.warning(warning["warning"])
    return dg.Output(val, metadata={
        **warning, "empty_classes": dg.MetadataValue.json(empty),
        "n": sum(val.counts), "counts_per_class": dg.MetadataValue.json(list(val.counts)),
        "export": dg.MetadataValue.path(val.dir),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="2")
def balanced_train(
    config: BalancedTrainConfig, raw_images: RawImages, clean_labels: steps.CleanLabels,
    val_split: steps.Split, dataset: DatasetResource, storage: StorageResource,
) -> dg.Output[steps.BalancedTrain]:
    """The cleaned training set, minority classes oversampled with augmented copies; exported
    as DS801 ``train/`` plus ``val/`` and one zip of both."""
    _guard(raw_images)
    with measure() as stats:
        bal = steps.make_balanced_train(
            raw_images, clean_labels, val_split, storage.path("balanced_train"),
            config.to_core(),
        )
    names = dataset.names(raw_images.num_classes)
    pictures = _Media(Path(bal.zip_path).parent)
    pictures.add("gallery_generated", "generated.jpg", media.generated_gallery(
        np.load(bal.train.images_path, mmap_mode="r"), pd.read_csv(bal.train.ids_path), names,
    ), alt="generated training images", caption="augmented copies of minority-class images")
    pictures.add("plot_class_counts", "class_counts.png", media.class_counts_plot({
        "cleaned (train part)": list(bal.counts_before), "after balancing": list(bal.train.counts),
    }, names, title="training images per class"), alt="training images per class")
    return dg.Output(bal, metadata={
        "n": sum(bal.train.counts), "n_generated": bal.n_generated,
        "counts_before": dg.MetadataValue.json(list(bal.counts_before)),
        "counts_after": dg.MetadataValue.json(list(bal.train.counts)),
        **pictures.entries(),
        "export": dg.MetadataValue.path(bal.train.dir),
        "zip": dg.MetadataValue.path(bal.zip_path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="1", kinds={"pytorch"})
def resnet34_model(
    context: dg.AssetExecutionContext, config: Resnet34Config, raw_images: RawImages,
    balanced_train: steps.BalancedTrain, val_split: steps.Split, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[steps.Resnet34Model]:
    """torchvision resnet34(weights=None) trained from scratch on balanced_train."""
    _guard(raw_images)

    on_epoch, on_batch = _training_progress(context, config.epochs)
    with measure() as stats:
        model = steps.train_model(
            balanced_train, val_split, storage.path("resnet34_model"),
            config.to_core(device=compute.device), num_classes=raw_images.num_classes,
            on_epoch=on_epoch, on_batch=on_batch,
        )
    storage.mark("resnet34_model")
    history = pd.DataFrame(list(model.history))
    last = model.history[-1] if model.history else {}
    pictures = _Media(Path(model.checkpoint_path).parent)
    if model.history:
        pictures.add("plot_training_curves", "training_curves.png",
                     media.training_curves(model.history), alt="training curves")
    return dg.Output(model, metadata={
        "device": model.device, "precision": model.precision, "epochs": len(model.history),
        "train_seconds": round(model.seconds, 1),
        "val_balanced_accuracy": float("nan") if last.get("val_balanced_acc") is None
        else float(last["val_balanced_acc"]),
        "history": _md_table(history.round(4), 100),
        **pictures.entries(),
        "checkpoint": dg.MetadataValue.path(model.checkpoint_path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="1")
def eval_report(
    resnet34_model: steps.Resnet34Model, val_split: steps.Split,
    clean_labels: steps.CleanLabels, ood_scores: steps.OodScores, dataset: DatasetResource,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[dict]:
    """Balanced accuracy on val_split and on an external test set; cleaning scores vs truth."""
    from animal_assets.core.evaluate import to_markdown
    from animal_assets.core.scoring import scores_markdown

    _, truth = dataset.resolve(storage)
    names = dataset.names(resnet34_model.num_classes)
    with measure() as stats:
        report = steps.evaluate(
            resnet34_model, val_split, clean_labels, ood_scores, storage.path("eval_report"),
            device=compute.device, class_names=names,
            test_set=dataset.test_set or None, truth_path=truth,
        )
    storage.mark("eval_report")
    md = ["## val_split", to_markdown(report["val_split"])]
    metadata = {"val_balanced_accuracy": float(report["val_split"]["balanced_accuracy"])}
    pictures = _Media(Path(report["path"]).parent)
    for part, title in (("val_split", "val_split"), ("test_set", "external test set")):
        if part in report:
            pictures.add(f"plot_confusion_{part}", f"confusion_{part}.png", media.confusion_plot(
                report[part]["confusion_matrix"], names, title=f"confusion matrix, {title}",
            ), alt=f"confusion matrix on {title}")
    if "test_set" in report:
        md += ["## external test set", to_markdown(report["test_set"])]
        metadata["test_balanced_accuracy"] = float(report["test_set"]["balanced_accuracy"])
    by_source = clean_labels.summary.get("by_source", {})
    if by_source.get("review"):
        md += ["## review", f"{by_source['review']} decisions were made by a reviewer and "
               f"overrule the automatic ones ({clean_labels.summary.get('review_version')}); "
               "they are marked `source = review` in clean_labels' decisions.csv."]
    if "cleaning" in report:
        md += ["## cleaning vs truth", scores_markdown(report["cleaning"], class_names=names,
                                                         estimated=clean_labels.summary)]
        if "ood" in report["cleaning"]:
            metadata["ood_auroc"] = float(report["cleaning"]["ood"]["auroc"])
        metadata["label_issue_f1"] = float(report["cleaning"]["label_issues"]["f1"])
    metadata["report"] = dg.MetadataValue.md("\n\n".join(md))
    metadata.update(pictures.entries())
    metadata["report_file"] = dg.MetadataValue.path(report["path"])
    return dg.Output(report, metadata={**metadata, **_stats_metadata(stats)})


# The lowest priority among the steps ready to run (every Dagster executor orders them by the
# dagster/priority tag): eval_report, ready at the same time, is written before the long
# ablation starts.
@dg.asset(group_name=GROUP, deps=REVIEWED, code_version="1", kinds={"pytorch"},
          op_tags={"dagster/priority": "-1"})
def ablation_report(
    context: dg.AssetExecutionContext, config: AblationConfig, raw_images: RawImages,
    clean_labels: steps.CleanLabels, val_split: steps.Split, balanced_train: steps.BalancedTrain,
    resnet34_model: steps.Resnet34Model, dataset: DatasetResource, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[dict]:
    """Which step buys how much: resnet34_model's trainer retrained on each preprocessing recipe
    (raw, OOD removed, labels corrected, full), all scored on val_split and the test set."""
    import dataclasses

    from animal_assets.core.train import TrainConfig, load_checkpoint

    _guard(raw_images)
    _, meta = load_checkpoint(resnet34_model.checkpoint_path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    trainer = TrainConfig(**{k: v for k, v in meta["config"].items() if k in known})
    trainer = dataclasses.replace(trainer, device=compute.device)
    with measure() as stats:
        result = steps.ablate(
            raw_images, clean_labels, val_split, balanced_train, storage.path("ablation_report"),
            config.to_core(), trainer, test_set=dataset.test_set or None, model=resnet34_model,
            log=context.log.info,
        )
    storage.mark("ablation_report")
    recipes = result["recipes"]
    pictures = _Media(Path(result["path"]).parent)
    for part, title in (("val_balanced_accuracy", "val_split"), ("test_balanced_accuracy", "test set")):
        rows = [(name, e[part]) for name, e in recipes.items() if part in e]
        if rows:
            pictures.add(f"plot_{part}", f"{part}.png", media.comparison_plot(
                [name for name, _ in rows], [v["mean"] for _, v in rows], [v["std"] for _, v in rows],
                metric=f"balanced accuracy on {title}", title=f"ablation: balanced accuracy, {title}",
            ), alt=f"ablation on {title}")
    metadata = {f"{name}_val_balanced_accuracy": float(e["val_balanced_accuracy"]["mean"])
                for name, e in recipes.items()}
    return dg.Output(result, metadata={
        "table": dg.MetadataValue.md(result["markdown"]), **metadata,
        "runs": dg.MetadataValue.json(result["runs"]), **pictures.entries(),
        "report_file": dg.MetadataValue.path(result["path"]), **_stats_metadata(stats),
    })


PIPELINE_ASSETS = [
    raw_images, embeddings, ood_scores, clean_labels, val_split, balanced_train,
    resnet34_model, eval_report, ablation_report,
]

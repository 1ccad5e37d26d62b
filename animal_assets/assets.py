"""The asset graph. Each asset reads its config, calls one core step and describes what it made.

input_dataset ─▶ raw_images ─▶ embeddings ─▶ ood_scores ─▶ clean_labels ─▶ val_split
                                                                  └────────▶ balanced_train
                                       resnet34_model ◀─ (balanced_train, val_split)
                                       eval_report ◀─ (resnet34_model, val_split, clean_labels, ood_scores)

Every asset also depends on ``input_dataset`` directly: Dagster marks an asset unsynced only
when a direct upstream changed, so this edge makes an observed change of the input mark the
whole graph unsynced at once, and "Materialize unsynced" reruns it in one go.
"""

import json
import warnings
from pathlib import Path

import dagster as dg
import pandas as pd

from animal_assets.configs import (
    BalancedTrainConfig,
    CleanLabelsConfig,
    EmbeddingsConfig,
    OodScoresConfig,
    RawImagesConfig,
    Resnet34Config,
    ValSplitConfig,
)
from animal_assets.core import steps
from animal_assets.core.ingest import RawImages, dataset_fingerprint, read_dataset, summary
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


def _md_table(df: pd.DataFrame, max_rows: int = 20) -> dg.MetadataValue:
    shown = df.head(max_rows)
    more = f"\n\n… {len(df) - max_rows} more" if len(df) > max_rows else ""
    return dg.MetadataValue.md(shown.to_markdown(index=False) + more)


def _stats_metadata(stats) -> dict:
    return {"wall_seconds": round(stats.seconds, 2), "peak_rss_mb": round(stats.peak_rss_mb, 1)}


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
    """Every image decoded once into a uint8 array, with a manifest of ids, labels and hashes."""
    path, _ = dataset.resolve(storage)
    with measure() as stats:
        raw = read_dataset(
            path, storage.path("raw_images"), format_policy=config.format_policy,
            decode_policy=config.decode_policy,
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


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1", kinds={"pytorch"})
def embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingsConfig, raw_images: RawImages,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[steps.Embeddings]:
    """EfficientNet-Lite0 ImageNet features (1280-d) of every usable image, stored as .npy."""
    _guard(raw_images)

    def progress(done: int, total: int) -> None:
        context.log.debug(f"embedded {done}/{total} images")

    with measure() as stats:
        emb = steps.compute_embeddings(
            raw_images, storage.path("embeddings"), config.to_core(), device=compute.device,
            on_progress=progress,
        )
    return dg.Output(emb, metadata={
        "n": emb.n, "dim": emb.dim, "image_size": emb.image_size, "device": emb.device,
        "images_per_s": round(emb.n / max(emb.seconds, 1e-9), 1),
        "path": dg.MetadataValue.path(emb.path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
def ood_scores(
    config: OodScoresConfig, raw_images: RawImages, embeddings: steps.Embeddings,
    storage: StorageResource,
) -> dg.Output[steps.OodScores]:
    """Out-of-distribution score per image (mean cosine distance to its k nearest neighbours)."""
    _guard(raw_images)
    with measure() as stats:
        scores = steps.score_outliers(
            raw_images, embeddings, storage.path("ood_scores"), config.to_core()
        )
    table = pd.read_csv(scores.path).sort_values("rank")
    return dg.Output(scores, metadata={
        "k": scores.k, "n_flagged": scores.n_flagged,
        "threshold": float(round(scores.threshold, 5)),
        "most_outlying": _md_table(table[["id", "score"]], 15),
        "path": dg.MetadataValue.path(scores.path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
def clean_labels(
    context: dg.AssetExecutionContext, config: CleanLabelsConfig, raw_images: RawImages,
    embeddings: steps.Embeddings, ood_scores: steps.OodScores, storage: StorageResource,
) -> dg.Output[steps.CleanLabels]:
    """Keep, relabel or drop each image: cross-validated probe + cleanlab, class floors."""
    _guard(raw_images)
    with measure() as stats:
        clean = steps.clean_label_decisions(
            raw_images, embeddings, ood_scores, storage.path("clean_labels"), config.to_core(),
        )
    d = steps.read_decisions(clean)
    changed = d[d["action"] != "keep"].sort_values("confidence", ascending=False)
    context.log.info(f"decisions: {d['action'].value_counts().to_dict()}")
    return dg.Output(clean, metadata={
        "actions": dg.MetadataValue.json(d["action"].value_counts().to_dict()),
        "reasons": dg.MetadataValue.json(d[d["reason"] != ""]["reason"].value_counts().to_dict()),
        "summary": dg.MetadataValue.json(clean.summary),
        "changed_preview": _md_table(
            changed[["id", "given", "label", "action", "reason", "confidence"]], 20
        ),
        "path": dg.MetadataValue.path(clean.path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
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


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
def balanced_train(
    config: BalancedTrainConfig, raw_images: RawImages, clean_labels: steps.CleanLabels,
    val_split: steps.Split, storage: StorageResource,
) -> dg.Output[steps.BalancedTrain]:
    """The cleaned training set, minority classes oversampled with augmented copies; exported
    as DS801 ``train/`` plus ``val/`` and one zip of both."""
    _guard(raw_images)
    with measure() as stats:
        bal = steps.make_balanced_train(
            raw_images, clean_labels, val_split, storage.path("balanced_train"),
            config.to_core(),
        )
    return dg.Output(bal, metadata={
        "n": sum(bal.train.counts), "n_generated": bal.n_generated,
        "counts_before": dg.MetadataValue.json(list(bal.counts_before)),
        "counts_after": dg.MetadataValue.json(list(bal.train.counts)),
        "export": dg.MetadataValue.path(bal.train.dir),
        "zip": dg.MetadataValue.path(bal.zip_path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1", kinds={"pytorch"})
def resnet34_model(
    context: dg.AssetExecutionContext, config: Resnet34Config, raw_images: RawImages,
    balanced_train: steps.BalancedTrain, val_split: steps.Split, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[steps.Resnet34Model]:
    """torchvision resnet34(weights=None) trained from scratch on balanced_train."""
    _guard(raw_images)

    def on_epoch(row: dict) -> None:
        context.log.info(
            "epoch {epoch}: loss {train_loss:.4f}, val balanced acc {val_balanced_acc:.4f}, "
            "{images_per_s:.0f} img/s".format(**row)
        )

    with measure() as stats:
        model = steps.train_model(
            balanced_train, val_split, storage.path("resnet34_model"),
            config.to_core(device=compute.device), num_classes=raw_images.num_classes,
            on_epoch=on_epoch,
        )
    history = pd.DataFrame(list(model.history))
    last = model.history[-1] if model.history else {}
    return dg.Output(model, metadata={
        "device": model.device, "epochs": len(model.history),
        "train_seconds": round(model.seconds, 1),
        "val_balanced_accuracy": float(last.get("val_balanced_acc", float("nan"))),
        "history": _md_table(history.round(4), 100),
        "checkpoint": dg.MetadataValue.path(model.checkpoint_path),
        **_stats_metadata(stats),
    })


@dg.asset(group_name=GROUP, deps=[input_dataset], code_version="1")
def eval_report(
    resnet34_model: steps.Resnet34Model, val_split: steps.Split,
    clean_labels: steps.CleanLabels, ood_scores: steps.OodScores, dataset: DatasetResource,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[dict]:
    """Balanced accuracy on val_split and on an external test set; cleaning scores vs truth."""
    from animal_assets.core.evaluate import to_markdown
    from animal_assets.core.scoring import scores_markdown

    _, truth = dataset.resolve(storage)
    with measure() as stats:
        report = steps.evaluate(
            resnet34_model, val_split, clean_labels, ood_scores, storage.path("eval_report"),
            device=compute.device, class_names=dataset.names(resnet34_model.num_classes),
            test_set=dataset.test_set or None, truth_path=truth,
        )
    md = ["## val_split", to_markdown(report["val_split"])]
    metadata = {"val_balanced_accuracy": float(report["val_split"]["balanced_accuracy"])}
    if "test_set" in report:
        md += ["## external test set", to_markdown(report["test_set"])]
        metadata["test_balanced_accuracy"] = float(report["test_set"]["balanced_accuracy"])
    if "cleaning" in report:
        md += ["## cleaning vs truth", scores_markdown(report["cleaning"])]
        if "ood" in report["cleaning"]:
            metadata["ood_auroc"] = float(report["cleaning"]["ood"]["auroc"])
        metadata["label_issue_f1"] = float(report["cleaning"]["label_issues"]["f1"])
    metadata["report"] = dg.MetadataValue.md("\n\n".join(md))
    metadata["path"] = dg.MetadataValue.path(report["path"])
    return dg.Output(report, metadata={**metadata, **_stats_metadata(stats)})


PIPELINE_ASSETS = [
    raw_images, embeddings, ood_scores, clean_labels, val_split, balanced_train,
    resnet34_model, eval_report,
]

"""The asset graph. Each asset reads its config, calls one core step and describes what it made.

input_dataset ─▶ raw_images ─▶ embeddings ─▶ neighbours ─▶ ood_scores ─▶ clean_labels ─▶ val_split
       raw_images ─▶ image_quality ─▶ clean_labels
       raw_images, neighbours ─▶ near_duplicates ─▶ clean_labels, val_split, balanced_train
       raw_images ─▶ ood_scores, clean_labels, val_split, balanced_train, resnet34_model, ablation_report
       embeddings ─▶ clean_labels          review_file ─▶ clean_labels
       clean_labels, val_split ─▶ balanced_train ─▶ resnet34_model ─▶ eval_report, ablation_report

Every edge means "reads the data of": ``input_dataset`` (an observable source: the input folder or
archive) feeds ``raw_images`` alone, and ``review_file`` (a person's review of the cleaning
decisions) feeds ``clean_labels`` alone. A change travels down the graph the Dagster way: an
observed new data version of a source makes its one reader unsynced, and the assets from
``raw_images`` to ``balanced_train`` carry :data:`RERUN` (declarative automation), so the
automation sensor (:mod:`animal_assets.definitions`) reruns the part of the graph below the
change in one run. Training, the report and the ablation take hours on a CPU on a real dataset:
they are materialized on request only.

Each asset is one row of the stage table (:data:`animal_assets.core.stages.STAGES`): its config
in, one call of the stage's ``run()``, the stage's ``describe()`` out as metadata. Galleries and
plots are written beside each asset's outputs and embedded in its metadata, so the Dagster UI
shows what each stage did.
"""

import math
import warnings
from pathlib import Path

import dagster as dg

from animal_assets.cluster import SHARD_POD
from animal_assets.configs import (
    CONFIGS,
    AblationConfig,
    BalancedTrainConfig,
    CleanLabelsConfig,
    EmbeddingsConfig,
    EvalReportConfig,
    ImageQualityConfig,
    NearDuplicatesConfig,
    NeighboursConfig,
    OodScoresConfig,
    RawImagesConfig,
    Resnet34Config,
    ValSplitConfig,
)
from animal_assets.core import review
from animal_assets.core.export import Split
from animal_assets.core.ingest import DatasetError, RawImages, dataset_fingerprint
from animal_assets.core.profiling import measure
from animal_assets.core.stages import BY_NAME, STAGES, RunContext
from animal_assets.core.stages.balanced_train import BalancedTrain
from animal_assets.core.stages.base import FileRef, Json, Markdown, Table
from animal_assets.core.stages.clean_labels import CleanLabels
from animal_assets.core.stages.embeddings import Embeddings
from animal_assets.core.stages.image_quality import ImageQuality
from animal_assets.core.stages.near_duplicates import NearDuplicates
from animal_assets.core.stages.neighbours import Neighbours
from animal_assets.core.stages.ood_scores import OodScores
from animal_assets.core.stages.raw_images import require_conforming
from animal_assets.core.stages.resnet34_model import Resnet34Model
from animal_assets.resources import DatasetResource, DeviceResource, StorageResource

GROUP = "animal_assets"


def _observe_input(dataset: DatasetResource, storage: StorageResource) -> dg.ObserveResult:
    """Data version = hash of the labels file and the image listing of the input (of the bytes
    of an archive)."""
    path, _ = dataset.resolve(storage)
    path = Path(path)
    version = dataset_fingerprint(path)
    if path.is_file():
        shape = {"kind": "archive", "bytes": path.stat().st_size}
    else:
        shape = {"kind": "folder", "jpg_files": sum(1 for _ in path.rglob("*.jpg"))}
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata={
        "path": dg.MetadataValue.path(str(path)), **shape, "fingerprint": version[:16]})


with warnings.catch_warnings():
    # Observable source assets are marked beta; they are the documented way to version an input.
    warnings.simplefilter("ignore", dg.BetaWarning)
    input_dataset = dg.observable_source_asset(
        name="input_dataset", group_name=GROUP,
        description="The input dataset (folder or archive), as configured.",
    )(_observe_input)


def _observe_review(dataset: DatasetResource) -> dg.ObserveResult:
    """Data version = hash of the review file's bytes, or a fixed "no-review" version."""
    version = review.review_version(dataset.review_path or None)
    metadata = {"version": version}
    if dataset.review_path:
        path = Path(dataset.review_path).expanduser()
        rows = max(0, len(path.read_text(encoding="utf-8", errors="replace").splitlines()) - 1)
        metadata.update(path=dg.MetadataValue.path(str(path)), rows=rows)
    return dg.ObserveResult(data_version=dg.DataVersion(version), metadata=metadata)


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

#: When an asset reruns by itself: once a dependency has a new data version (a new observation
#: of a source, or a new materialization), as soon as no dependency is missing or in progress.
#: Dagster's ``eager`` condition, with its first branch (a missing asset is materialized) left
#: out: the first materialization of a graph is a person's choice of dataset and config.
RERUN = (
    dg.AutomationCondition.in_latest_time_window()
    & dg.AutomationCondition.any_deps_updated().since_last_handled()
    & ~dg.AutomationCondition.any_deps_missing()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("rerun when an upstream asset changes")

def _part(part: str) -> dict[str, str]:
    """The asset's tag: which part of the work it is (select e.g. ``tag:part=cleaning``)."""
    return {"part": part}


def _column_type(dtype) -> str:
    kind = getattr(dtype, "kind", "O")
    return {"i": "int", "u": "int", "f": "float", "b": "bool"}.get(kind, "string")


def _cell(value):
    if hasattr(value, "item"):  # a numpy scalar
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None
    return value if isinstance(value, (int, float, bool, str)) or value is None else str(value)


def _table(table: Table) -> dg.TableMetadataValue:
    return table_metadata(table.frame, max_rows=table.max_rows)


def table_metadata(frame, *, max_rows: int) -> dg.TableMetadataValue:
    """A table the UI renders with its column schema (its first ``max_rows`` rows)."""
    frame = frame.head(max_rows)
    schema = dg.TableSchema(columns=[dg.TableColumn(str(c), _column_type(frame[c].dtype))
                                     for c in frame.columns])
    records = [dg.TableRecord({str(c): _cell(v) for c, v in row.items()})
               for row in frame.to_dict("records")]
    return dg.MetadataValue.table(records, schema=schema)


#: Significant digits of a float shown in the UI (the files keep every digit).
FLOAT_DIGITS = 4


def _metadata_value(value):
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, Markdown):
        return dg.MetadataValue.md(value.text)
    if isinstance(value, Table):
        return _table(value)
    if isinstance(value, Json):
        return dg.MetadataValue.json(value.value)
    if isinstance(value, FileRef):
        return dg.MetadataValue.path(value.path)
    return value


def _guard(raw: RawImages) -> None:
    """Refuse to build on a raw_images result whose blocking checks failed (in any run)."""
    try:
        require_conforming(raw)
    except DatasetError as err:
        raise dg.Failure(description=str(err)) from None


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


def _run_context(context: dg.AssetExecutionContext, dataset: DatasetResource,
                 storage: StorageResource, compute: DeviceResource | None = None) -> RunContext:
    path, truth = dataset.resolve(storage)
    return RunContext(
        output=storage.root, dataset=path, device=compute.device if compute else "cpu",
        class_names=tuple(dataset.class_names), test_set=dataset.test_set or None,
        truth_path=truth, review=dataset.review_path or None,
        log=context.log.info, warn=context.log.warning,
        progress=lambda what: _progress(context, what),
        training_progress=lambda epochs: _training_progress(context, epochs),
    )


def _materialize(name: str, config, ctx: RunContext, storage: StorageResource, *, run=None,
                 describe=None, folder: str | None = None, **inputs) -> dg.Output:
    """Run the stage ``name`` on ``inputs`` and return its handle with its description
    (``run`` and ``describe``: the stage's shard or merge functions instead of its own;
    ``folder``: the output folder they write, when not the stage's)."""
    if "raw_images" in inputs:
        _guard(inputs["raw_images"])
    stage = BY_NAME[name]
    with measure() as stats:
        handle = (run or stage.run)(None if config is None else config.to_core(), ctx, **inputs)
    storage.mark(folder or name)
    described = (describe or stage.describe)(handle, ctx, **inputs)
    return dg.Output(handle, metadata={
        # where this asset's files are (Dagster's own "path" is the stored handle's pickle)
        "outputs": dg.MetadataValue.path(str(storage.path(folder or name))),
        **{key: _metadata_value(value) for key, value in described.items()},
        "wall_seconds": round(stats.seconds, 2), "peak_rss_mb": round(stats.peak_rss_mb, 1),
    })


@dg.asset(group_name=GROUP, tags=_part("input"), deps=[input_dataset],
          code_version="1", kinds={"python"},
          automation_condition=RERUN)
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
    return _materialize("raw_images", config, _run_context(context, dataset, storage), storage)


@dg.asset(group_name=GROUP, tags=_part("input"),
          code_version="1", kinds={"python"}, automation_condition=RERUN)
def image_quality(
    context: dg.AssetExecutionContext, config: ImageQualityConfig, raw_images: RawImages,
    dataset: DatasetResource, storage: StorageResource,
) -> dg.Output[ImageQuality]:
    """A score and a flag per image for each quality kind: dark, light, low information, blurry,
    grayscale, padded (letterboxed). Reported only by default; under ``policy: drop``
    ``clean_labels`` drops the flagged images with the reason ``quality``."""
    return _materialize("image_quality", config, _run_context(context, dataset, storage), storage,
                        raw_images=raw_images)


@dg.asset(group_name=GROUP, tags=_part("cleaning"),
          code_version="2", kinds={"pytorch"}, automation_condition=RERUN)
def embeddings(
    context: dg.AssetExecutionContext, config: EmbeddingsConfig, raw_images: RawImages,
    dataset: DatasetResource, storage: StorageResource, compute: DeviceResource,
) -> dg.Output[Embeddings]:
    """EfficientNet-Lite0 ImageNet features of every usable image, stored as .npy: the 1,280 head
    features, then every block's pooled mean and the deeper blocks' pooled std (4,592 in all;
    1,280 with ``stages: false``)."""
    return _materialize("embeddings", config, _run_context(context, dataset, storage, compute),
                        storage, raw_images=raw_images)


@dg.asset(group_name=GROUP, tags=_part("cleaning"),
          code_version="1", kinds={"pytorch"}, automation_condition=RERUN)
def neighbours(
    context: dg.AssetExecutionContext, config: NeighboursConfig, raw_images: RawImages,
    embeddings: Embeddings, dataset: DatasetResource, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[Neighbours]:
    """Each image's nearest neighbours by the cosine similarity of its head features (exact),
    searched once for ``ood_scores`` and ``near_duplicates``."""
    return _materialize("neighbours", config, _run_context(context, dataset, storage, compute),
                        storage, raw_images=raw_images, embeddings=embeddings)


@dg.asset(group_name=GROUP, tags=_part("cleaning"),
          code_version="2", kinds={"python"}, automation_condition=RERUN)
def ood_scores(
    context: dg.AssetExecutionContext, config: OodScoresConfig, raw_images: RawImages,
    embeddings: Embeddings, neighbours: Neighbours, dataset: DatasetResource,
    storage: StorageResource,
) -> dg.Output[OodScores]:
    """Out-of-distribution score per image (neighbour-label entropy or mean cosine distance to
    its k nearest neighbours, sharpened by self-training); the top share is flagged."""
    return _materialize("ood_scores", config, _run_context(context, dataset, storage), storage,
                        raw_images=raw_images, embeddings=embeddings, neighbours=neighbours)


@dg.asset(group_name=GROUP, tags=_part("cleaning"),
          code_version="2", kinds={"python"}, automation_condition=RERUN)
def near_duplicates(
    context: dg.AssetExecutionContext, config: NearDuplicatesConfig, raw_images: RawImages,
    neighbours: Neighbours, dataset: DatasetResource, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[NearDuplicates]:
    """Groups of near-copies (re-encoded, resized, shifted, cropped or recoloured): nearest
    neighbours of the head features and of small thumbnails (whole and cut at the edges) above
    their thresholds, equal perceptual hashes and byte-identical files; each group with its
    members, similarity and given labels."""
    return _materialize("near_duplicates", config,
                        _run_context(context, dataset, storage, compute), storage,
                        raw_images=raw_images, neighbours=neighbours)


@dg.asset(group_name=GROUP, tags=_part("cleaning"), deps=[review_file],
          code_version="3", kinds={"python"},
          automation_condition=RERUN)
def clean_labels(
    context: dg.AssetExecutionContext, config: CleanLabelsConfig, raw_images: RawImages,
    image_quality: ImageQuality, embeddings: Embeddings, ood_scores: OodScores,
    near_duplicates: NearDuplicates, dataset: DatasetResource, storage: StorageResource,
) -> dg.Output[CleanLabels]:
    """Keep, relabel or drop each image: a cross-validated probe under an estimated noise model,
    class floors, one decision per group of copies (byte-identical or ``near_duplicates``');
    images ``image_quality`` drops under its ``drop`` policy; then a person's review, which
    overrules the automatic decision of every image it lists."""
    return _materialize("clean_labels", config, _run_context(context, dataset, storage), storage,
                        raw_images=raw_images, image_quality=image_quality, embeddings=embeddings,
                        ood_scores=ood_scores, near_duplicates=near_duplicates)


@dg.asset(group_name=GROUP, tags=_part("export"),
          code_version="2", kinds={"python"}, automation_condition=RERUN)
def val_split(
    context: dg.AssetExecutionContext, config: ValSplitConfig, raw_images: RawImages,
    clean_labels: CleanLabels, near_duplicates: NearDuplicates, dataset: DatasetResource,
    storage: StorageResource,
) -> dg.Output[Split]:
    """A clean, class-balanced validation set of trustworthy originals, none with a copy or a
    near-copy in the input, exported as DS801."""
    return _materialize("val_split", config, _run_context(context, dataset, storage), storage,
                        raw_images=raw_images, clean_labels=clean_labels,
                        near_duplicates=near_duplicates)


@dg.asset(group_name=GROUP, tags=_part("export"),
          code_version="3", kinds={"python"}, automation_condition=RERUN)
def balanced_train(
    context: dg.AssetExecutionContext, config: BalancedTrainConfig, raw_images: RawImages,
    clean_labels: CleanLabels, val_split: Split, near_duplicates: NearDuplicates,
    dataset: DatasetResource, storage: StorageResource,
) -> dg.Output[BalancedTrain]:
    """The cleaned training set, minority classes oversampled with augmented copies (a group of
    near-copies counted as one image); exported as DS801 ``train/`` plus ``val/`` and one zip of
    both."""
    return _materialize("balanced_train", config, _run_context(context, dataset, storage), storage,
                        raw_images=raw_images, clean_labels=clean_labels, val_split=val_split,
                        near_duplicates=near_duplicates)


@dg.asset(group_name=GROUP, tags=_part("training"), code_version="1", kinds={"pytorch"})
def resnet34_model(
    context: dg.AssetExecutionContext, config: Resnet34Config, raw_images: RawImages,
    balanced_train: BalancedTrain, val_split: Split, dataset: DatasetResource,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[Resnet34Model]:
    """torchvision resnet34(weights=None) trained from scratch on balanced_train."""
    return _materialize("resnet34_model", config,
                        _run_context(context, dataset, storage, compute), storage,
                        raw_images=raw_images, balanced_train=balanced_train, val_split=val_split)


@dg.asset(group_name=GROUP, tags=_part("evaluation"), code_version="2", kinds={"python"})
def eval_report(
    context: dg.AssetExecutionContext, config: EvalReportConfig, resnet34_model: Resnet34Model,
    val_split: Split, clean_labels: CleanLabels, ood_scores: OodScores, dataset: DatasetResource,
    storage: StorageResource, compute: DeviceResource,
) -> dg.Output[dict]:
    """Balanced accuracy on val_split and on an external test set; cleaning scores vs truth."""
    return _materialize("eval_report", config, _run_context(context, dataset, storage, compute),
                        storage, resnet34_model=resnet34_model, val_split=val_split,
                        clean_labels=clean_labels, ood_scores=ood_scores)


# The lowest priority among the steps ready to run (every Dagster executor orders them by the
# dagster/priority tag): eval_report, ready at the same time, is written before the long
# ablation starts.
@dg.asset(group_name=GROUP, tags=_part("evaluation"), code_version="1", kinds={"pytorch"},
          op_tags={"dagster/priority": "-1"})
def ablation_report(
    context: dg.AssetExecutionContext, config: AblationConfig, raw_images: RawImages,
    clean_labels: CleanLabels, val_split: Split, balanced_train: BalancedTrain,
    resnet34_model: Resnet34Model, dataset: DatasetResource, storage: StorageResource,
    compute: DeviceResource,
) -> dg.Output[dict]:
    """Which step buys how much: resnet34_model's trainer retrained on each preprocessing recipe
    (raw, OOD removed, labels corrected, full), all scored on val_split and the test set."""
    return _materialize("ablation_report", config,
                        _run_context(context, dataset, storage, compute), storage,
                        raw_images=raw_images, clean_labels=clean_labels, val_split=val_split,
                        balanced_train=balanced_train, resnet34_model=resnet34_model)


PIPELINE_ASSETS = [
    raw_images, image_quality, embeddings, neighbours, ood_scores, near_duplicates, clean_labels, val_split,
    balanced_train, resnet34_model, eval_report, ablation_report,
]


# -- shards ------------------------------------------------------------------------------------

def sharded_assets(shards: int) -> dict[str, list[dg.AssetsDefinition]]:
    """For each stage that can run in shards (``raw_images``, ``image_quality``, ``embeddings``):
    its per-shard asset, partitioned by shard (static partitions, one per shard of
    :mod:`animal_assets.core.shards`), and the stage's own asset, which merges every shard back
    into the one result the assets below read. Each keeps the kinds, tags and code version of
    the stage's unsharded asset; a shard of a stage that uses the device asks Kubernetes for a
    GPU. ``raw_image_shards`` reads the input (each shard's files); ``raw_images`` takes the
    format policies and applies them to the merged whole.

    Each shard is its own run (a backfill of the partitions, or ``animal-assets run``), so shards
    run side by side as Dagster runs: as processes here, as pods under the ``K8sRunLauncher``.
    Declarative automation does not request a partitioned asset in the run of an unpartitioned
    parent or child (Dagster's ``executable_in_same_run``: the partitions definitions must
    match), so after a new observation of the input the automation sensor reruns the graph one
    layer per tick: the input's shards, then ``raw_images`` and what lies below it, then the
    other shards, then their merges and the rest. Until its shards are all recomputed, a merge
    skips (materializes nothing, and the assets below it in that run are skipped too) and
    reruns as soon as they are.
    """
    from animal_assets.core.shards import ShardsBehind, parse_shard_key, shard_keys

    partitions = dg.StaticPartitionsDefinition(shard_keys(shards))
    unsharded = {a.key.to_user_string(): a for a in PIPELINE_ASSETS}

    def shard_asset(stage, plain: dg.AssetsDefinition) -> dg.AssetsDefinition:
        sharding = stage.sharding
        device = "compute" in plain.required_resource_keys
        spec = plain.specs_by_key[plain.key]

        @dg.asset(name=sharding.asset, group_name=GROUP, tags=_part(spec.tags["part"]),
                  partitions_def=partitions, code_version="1", kinds=spec.kinds,
                  automation_condition=RERUN,
                  op_tags={"dagster-k8s/config": SHARD_POD} if device else None,
                  description=f"What {stage.name} computes, for the usable images of one shard "
                              f"(images by a stable hash of their id); {stage.name} merges the "
                              "shards.")
        def per_shard(
            context: dg.AssetExecutionContext, config: CONFIGS[stage.name],
            raw_images: RawImages, dataset: DatasetResource, storage: StorageResource,
            compute: DeviceResource,
        ) -> dg.Output:
            shard, n = parse_shard_key(context.partition_key)
            ctx = _run_context(context, dataset, storage, compute if device else None)
            return _materialize(stage.name, config, ctx, storage,
                                run=lambda cfg, ctx, **inputs: sharding.run_shard(
                                    cfg, ctx, shard=shard, shards=n, **inputs),
                                describe=sharding.describe_shard, raw_images=raw_images)

        return per_shard

    def input_shard_asset(stage, plain: dg.AssetsDefinition) -> dg.AssetsDefinition:
        sharding = stage.sharding

        @dg.asset(name=sharding.asset, group_name=GROUP, tags=_part("input"), deps=[input_dataset],
                  partitions_def=partitions, code_version="1", kinds={"python"},
                  automation_condition=RERUN,
                  description="The files of the input that fall in one shard (by a stable hash "
                              "of the name without .jpg: an image's id), read, checked and "
                              "decoded; raw_images merges the shards and applies the format "
                              "policies to the whole input.")
        def per_shard(context: dg.AssetExecutionContext, dataset: DatasetResource,
                      storage: StorageResource) -> dg.Output:
            shard, n = parse_shard_key(context.partition_key)
            dataset.check(storage)
            return _materialize(stage.name, None, _run_context(context, dataset, storage), storage,
                                run=lambda cfg, ctx: sharding.run_shard(cfg, ctx, shard=shard, shards=n),
                                describe=sharding.describe_shard, folder=sharding.asset)

        return per_shard

    def merge_decorator(stage, plain: dg.AssetsDefinition, how: str):
        """The asset of the stage's own name that merges its shards (``how``: in what order)."""
        spec = plain.specs_by_key[plain.key]
        first_line = " ".join(spec.description.split("\n\n")[0].split())
        return dg.asset(name=stage.name, group_name=GROUP, tags=_part(spec.tags["part"]),
                        ins={"shards": dg.AssetIn(stage.sharding.asset)},
                        code_version=spec.code_version, kinds={"python"},
                        automation_condition=RERUN, output_required=False,
                        description=f"{first_line} Merged from {stage.sharding.asset}{how}: the "
                                    "same result as unsharded.")

    def merge_or_wait(context, stage, config, dataset, storage, **inputs):
        """The merge's output, or nothing while a shard is missing or behind."""
        try:
            yield _materialize(stage.name, config, _run_context(context, dataset, storage),
                               storage, run=stage.sharding.merge, **inputs)
        except ShardsBehind as waiting:
            context.log.info(f"{waiting}; nothing materialized")

    def merge_asset(stage, plain: dg.AssetsDefinition) -> dg.AssetsDefinition:
        @merge_decorator(stage, plain, " in the order of raw_images")
        def merged(context: dg.AssetExecutionContext, raw_images: RawImages, shards: dict,
                   dataset: DatasetResource, storage: StorageResource):
            yield from merge_or_wait(context, stage, None, dataset, storage, raw_images=raw_images,
                                     **{stage.sharding.asset: shards})

        return merged

    def input_merge_asset(stage, plain: dg.AssetsDefinition) -> dg.AssetsDefinition:
        @merge_decorator(stage, plain, ", the format policies applied to the whole input")
        def merged(context: dg.AssetExecutionContext, config: CONFIGS[stage.name], shards: dict,
                   dataset: DatasetResource, storage: StorageResource):
            dataset.check(storage)
            yield from merge_or_wait(context, stage, config, dataset, storage,
                                     **{stage.sharding.asset: shards})

        return merged

    def pair(stage) -> list[dg.AssetsDefinition]:
        plain = unsharded[stage.name]
        if stage.inputs:
            return [shard_asset(stage, plain), merge_asset(stage, plain)]
        return [input_shard_asset(stage, plain), input_merge_asset(stage, plain)]

    return {stage.name: pair(stage) for stage in STAGES if stage.sharding}


def pipeline_assets(shards: int = 1) -> list[dg.AssetsDefinition]:
    """The graph's assets; with ``shards`` > 1, ``raw_images``, ``image_quality`` and
    ``embeddings`` are computed per shard (:func:`sharded_assets`)."""
    if shards == 1:
        return list(PIPELINE_ASSETS)
    sharded = sharded_assets(shards)
    out = []
    for asset in PIPELINE_ASSETS:
        out.extend(sharded.get(asset.key.to_user_string(), [asset]))
    return out

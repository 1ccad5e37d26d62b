"""The table of stages: each stage is one module with its config dataclass, its ``run()``, its
result handle and its ``describe()`` (see :mod:`.base`). The Dagster assets, the dagster-free
runner (:mod:`animal_assets.core.pipeline`) and the benchmark family all run from
:data:`STAGES`, in its order.

| stage | reads |
|---|---|
| raw_images | the input (``ctx.dataset``) |
| image_quality | raw_images |
| embeddings | raw_images |
| neighbours | raw_images, embeddings |
| ood_scores | raw_images, embeddings, neighbours |
| near_duplicates | raw_images, neighbours |
| clean_labels | raw_images, image_quality, embeddings, ood_scores, near_duplicates (and ``ctx.review``) |
| val_split | raw_images, clean_labels, near_duplicates |
| balanced_train | raw_images, clean_labels, val_split, near_duplicates |
| resnet34_model | raw_images, balanced_train, val_split |
| eval_report | resnet34_model, val_split, clean_labels, ood_scores |
| ablation_report | raw_images, clean_labels, val_split, balanced_train, resnet34_model |

``raw_images``, ``image_quality`` and ``embeddings`` are per image: with ``ANIMAL_ASSETS_SHARDS`` > 1
each runs per shard as its ``sharding.asset`` (``raw_image_shards``, ``image_quality_shards``,
``embedding_shards``), which the stage's own asset merges.
"""
from __future__ import annotations

from animal_assets.core.ablation import AblationConfig
from animal_assets.core.cleaning import CleaningConfig
from animal_assets.core.stages import (
    ablation_report,
    balanced_train,
    clean_labels,
    embeddings,
    eval_report,
    image_quality,
    near_duplicates,
    neighbours,
    ood_scores,
    raw_images,
    resnet34_model,
    val_split,
)
from animal_assets.core.stages.base import RunContext, Sharding, Stage
from animal_assets.core.train import TrainConfig

STAGES: tuple[Stage, ...] = (
    Stage("raw_images", (), raw_images.RawImagesConfig, raw_images.run, raw_images.describe,
          gate=raw_images.require_conforming,
          sharding=Sharding(raw_images.SHARDS_NAME, raw_images.run_shard, raw_images.merge,
                            raw_images.describe_shard, settings_on_merge=True)),
    Stage("image_quality", ("raw_images",), image_quality.ImageQualityConfig, image_quality.run,
          image_quality.describe,
          sharding=Sharding("image_quality_shards", image_quality.run_shard, image_quality.merge,
                            image_quality.describe_shard)),
    Stage("embeddings", ("raw_images",), embeddings.EmbeddingsConfig, embeddings.run,
          embeddings.describe,
          sharding=Sharding("embedding_shards", embeddings.run_shard, embeddings.merge,
                            embeddings.describe_shard)),
    Stage("neighbours", ("raw_images", "embeddings"), neighbours.NeighboursConfig, neighbours.run,
          neighbours.describe),
    Stage("ood_scores", ("raw_images", "embeddings", "neighbours"), ood_scores.OodScoresConfig,
          ood_scores.run, ood_scores.describe),
    Stage("near_duplicates", ("raw_images", "neighbours"), near_duplicates.NearDuplicatesConfig,
          near_duplicates.run, near_duplicates.describe),
    Stage("clean_labels", ("raw_images", "image_quality", "embeddings", "ood_scores", "near_duplicates"),
          CleaningConfig, clean_labels.run, clean_labels.describe),
    Stage("val_split", ("raw_images", "clean_labels", "near_duplicates"), val_split.ValSplitConfig,
          val_split.run, val_split.describe),
    Stage("balanced_train", ("raw_images", "clean_labels", "val_split", "near_duplicates"),
          balanced_train.BalancedTrainConfig, balanced_train.run, balanced_train.describe),
    Stage("resnet34_model", ("raw_images", "balanced_train", "val_split"), TrainConfig,
          resnet34_model.run, resnet34_model.describe),
    Stage("eval_report", ("resnet34_model", "val_split", "clean_labels", "ood_scores"),
          eval_report.EvalReportConfig, eval_report.run, eval_report.describe),
    Stage("ablation_report",
          ("raw_images", "clean_labels", "val_split", "balanced_train", "resnet34_model"),
          AblationConfig, ablation_report.run, ablation_report.describe, optional=True),
)

BY_NAME = {stage.name: stage for stage in STAGES}
#: The partitioned asset of each stage that can run in shards, by stage name.
SHARD_ASSETS = {stage.name: stage.sharding.asset for stage in STAGES if stage.sharding}


def upto(name: str) -> tuple[Stage, ...]:
    """The stages from the first to ``name``, in order."""
    names = [stage.name for stage in STAGES]
    return STAGES[: names.index(name) + 1]


__all__ = ["BY_NAME", "SHARD_ASSETS", "STAGES", "RunContext", "Stage", "upto"]

"""Dagster run config of each asset, built from the stages' config dataclasses, each field
described by the comment beside it there.

The defaults are the full recipe; ``run_configs/demo.yaml`` is the small one. Dagster does not
track run config in staleness: after changing a value, rematerialize the asset together with its
downstream assets (see the README).
"""
from __future__ import annotations

import dataclasses
import typing

import dagster as dg
import pydantic

from animal_assets.core.config import field_docs, step_params

# Chosen by the DeviceResource, not per asset.
_NOT_RUN_CONFIG = {"device"}


def _config_class(name: str, params: type) -> type[dg.Config]:
    hints = typing.get_type_hints(params)
    docs = field_docs(params)
    fields = {
        f.name: (hints[f.name], pydantic.Field(default=f.default, description=docs[f.name])
                 if f.default is not dataclasses.MISSING
                 else pydantic.Field(default_factory=f.default_factory, description=docs[f.name]))
        for f in dataclasses.fields(params)
        if f.name not in _NOT_RUN_CONFIG
    }
    cls = pydantic.create_model(name, __base__=dg.Config, __module__=__name__, **fields)
    cls.__doc__ = f"Run config of the stage, mirroring :class:`{params.__module__}.{params.__name__}`."

    def to_core(self, **extra):
        return params(**self.model_dump(), **extra)

    cls.to_core = to_core
    return cls


_PARAMS = step_params()
RawImagesConfig = _config_class("RawImagesConfig", _PARAMS["raw_images"])
ImageQualityConfig = _config_class("ImageQualityConfig", _PARAMS["image_quality"])
EmbeddingsConfig = _config_class("EmbeddingsConfig", _PARAMS["embeddings"])
NeighboursConfig = _config_class("NeighboursConfig", _PARAMS["neighbours"])
OodScoresConfig = _config_class("OodScoresConfig", _PARAMS["ood_scores"])
CleanLabelsConfig = _config_class("CleanLabelsConfig", _PARAMS["clean_labels"])
NearDuplicatesConfig = _config_class("NearDuplicatesConfig", _PARAMS["near_duplicates"])
ValSplitConfig = _config_class("ValSplitConfig", _PARAMS["val_split"])
BalancedTrainConfig = _config_class("BalancedTrainConfig", _PARAMS["balanced_train"])
Resnet34Config = _config_class("Resnet34Config", _PARAMS["resnet34_model"])
EvalReportConfig = _config_class("EvalReportConfig", _PARAMS["eval_report"])
AblationConfig = _config_class("AblationConfig", _PARAMS["ablation_report"])


#: Each stage's run config class, by stage name.
CONFIGS = {
    "raw_images": RawImagesConfig, "image_quality": ImageQualityConfig,
    "embeddings": EmbeddingsConfig, "neighbours": NeighboursConfig, "ood_scores": OodScoresConfig,
    "clean_labels": CleanLabelsConfig, "near_duplicates": NearDuplicatesConfig,
    "val_split": ValSplitConfig, "balanced_train": BalancedTrainConfig,
    "resnet34_model": Resnet34Config, "eval_report": EvalReportConfig,
    "ablation_report": AblationConfig,
}

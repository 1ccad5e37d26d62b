"""The code location: assets, checks, jobs and resources, wired together."""
from __future__ import annotations

import dagster as dg

from animal_assets.assets import input_dataset, pipeline_assets, review_file
from animal_assets.checks import ALL_CHECKS
from animal_assets.cluster import executor_from_environment, sharded_run_config
from animal_assets.core.shards import shards_from_environment
from animal_assets.core.config import load_run_config
from animal_assets.loggers import console_logger
from animal_assets.resources import default_resources

#: The code location's name, as ``workspace.yaml`` names it; the UI lists a job's runs by it.
LOCATION = "animal_assets"
#: The job of a run, by the name of its run config; any other config runs as ``pipeline``.
JOB_OF_CONFIG = {"demo": "demo_pipeline"}


def build_defs(resources: dict | None = None, assets: list | None = None,
               shards: int | None = None) -> dg.Definitions:
    """The Definitions, with resources from the environment unless given, the executor
    ``ANIMAL_ASSETS_EXECUTOR`` names and the per-image work in ``shards`` shards (default:
    ``ANIMAL_ASSETS_SHARDS``, else 1) (:mod:`animal_assets.cluster`)."""
    shards = shards_from_environment() if shards is None else shards
    assets = assets or pipeline_assets(shards)
    return dg.Definitions(
        assets=[input_dataset, review_file, *assets],
        asset_checks=ALL_CHECKS,
        jobs=[
            dg.define_asset_job(
                "observe_sources", selection=[input_dataset.key, review_file.key],
                description="Record the data versions of the input dataset and the review file.",
            ),
            dg.define_asset_job(
                "pipeline", selection=dg.AssetSelection.assets(*assets),
                description="The whole graph with the default (full, GPU-sized) config.",
            ),
            dg.define_asset_job(
                "demo_pipeline", selection=dg.AssetSelection.assets(*assets),
                config=sharded_run_config(load_run_config("demo"), shards),
                description="The whole graph with the small, CPU-friendly demo config.",
            ),
        ],
        sensors=[dg.AutomationConditionSensorDefinition(
            "rerun_downstream", target=dg.AssetSelection.assets(*assets),
            default_status=dg.DefaultSensorStatus.RUNNING,
            description=(
                "Reruns raw_images to balanced_train below a change: a new observation of the "
                "input or of the review, or a new materialization upstream. Training, the report "
                "and the ablation are materialized on request only."),
        )],
        resources=resources or default_resources(),
        loggers={"console": console_logger},
        executor=executor_from_environment(),
    )


defs = build_defs()

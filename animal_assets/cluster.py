"""Which Dagster executor runs the jobs' steps, chosen when the definitions load, and what a
sharded graph changes in a run config and in a shard's pod.

``ANIMAL_ASSETS_EXECUTOR`` unset or empty: Dagster's default for the code location (each step a
process on this machine). ``k8s``: dagster-k8s's ``k8s_job_executor``, each step a Kubernetes
job (``pip install "animal-assets[k8s]"``); the pods' image, volumes and per-step resources
(a GPU for ``embeddings`` and ``resnet34_model``) come from the run config's ``execution``
section, as in ``deploy/k8s/run_config.yaml``. README, "Scaling out", has the deployment.

``ANIMAL_ASSETS_SHARDS`` (:func:`animal_assets.core.shards.shards_from_environment`) > 1 makes
each per-image stage a partitioned asset merged by the stage's own
(:func:`animal_assets.assets.sharded_assets`).
"""
from __future__ import annotations

import os

import dagster as dg

from animal_assets.core.stages import BY_NAME, SHARD_ASSETS

#: Environment variable: the executor of every job ("" for Dagster's default, or "k8s").
EXECUTOR_VARIABLE = "ANIMAL_ASSETS_EXECUTOR"
EXECUTORS = ("", "k8s")


def executor_from_environment() -> dg.ExecutorDefinition | None:
    """The executor ``ANIMAL_ASSETS_EXECUTOR`` names; None for Dagster's default.

    Raises
    ------
    ValueError
        For another name, or for ``k8s`` without dagster-k8s installed; the message says which.
    """
    name = os.environ.get(EXECUTOR_VARIABLE, "").strip()
    if name not in EXECUTORS:
        raise ValueError(f"{EXECUTOR_VARIABLE}={name!r}: must be unset or one of {[n for n in EXECUTORS if n]}")
    if not name:
        return None
    try:
        from dagster_k8s import k8s_job_executor
    except ImportError:
        raise ValueError(f"{EXECUTOR_VARIABLE}=k8s needs dagster-k8s: pip install 'animal-assets[k8s]'") from None
    return k8s_job_executor


def sharded_run_config(run_config: dict, shards: int) -> dict:
    """``run_config`` for a graph of ``shards`` shards: the settings of a sharded stage, written
    under its name as for one shard (``embeddings``, ``image_quality``), belong to its per-shard
    asset (``embedding_shards``, ``image_quality_shards``), whose merge has none; those of
    ``raw_images`` stay with its merge, which applies the format policies to the whole input."""
    ops = dict(run_config.get("ops") or {})
    if shards == 1 or not set(SHARD_ASSETS) & set(ops):
        return run_config
    for stage, per_shard in SHARD_ASSETS.items():
        if stage in ops and not BY_NAME[stage].sharding.settings_on_merge:
            ops[per_shard] = ops.pop(stage)
    return {**run_config, "ops": ops}


#: The Kubernetes resources of a shard's step (read by dagster-k8s from the op's tags, so a
#: backfill of the shards, which takes no run config, asks for them too): one GPU for the encoder.
SHARD_POD = {"container_config": {"resources": {
    "requests": {"cpu": "4", "memory": "16Gi"},
    "limits": {"memory": "32Gi", "nvidia.com/gpu": 1},
}}}

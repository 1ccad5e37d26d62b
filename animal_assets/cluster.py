"""Which Dagster executor runs the jobs' steps, chosen when the definitions load.

``ANIMAL_ASSETS_EXECUTOR`` unset or empty: Dagster's default for the code location (each step a
process on this machine). ``k8s``: dagster-k8s's ``k8s_job_executor``, each step a Kubernetes
job (``pip install "animal-assets[k8s]"``); the pods' image, volumes and per-step resources
(a GPU for ``embeddings`` and ``resnet34_model``) come from the run config's ``execution``
section, as in ``deploy/k8s/run_config.yaml``. README, "Scaling out", has the deployment.
"""
from __future__ import annotations

import os

import dagster as dg

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

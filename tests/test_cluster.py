"""The jobs on Kubernetes (animal_assets.cluster, deploy/k8s/): the definitions load with
dagster-k8s's executor and the shipped run config resolves against the job, no cluster needed."""
from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
import yaml

from animal_assets.cluster import EXECUTOR_VARIABLE, executor_from_environment
from animal_assets.definitions import build_defs

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "k8s"


def test_without_the_variable_the_jobs_keep_dagsters_default_executor(monkeypatch):
    monkeypatch.delenv(EXECUTOR_VARIABLE, raising=False)
    assert executor_from_environment() is None
    assert build_defs().resolve_job_def("pipeline").executor_def.name != "k8s"


def test_an_unknown_executor_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(EXECUTOR_VARIABLE, "slurm")
    with pytest.raises(ValueError, match=f"{EXECUTOR_VARIABLE}='slurm': must be unset or one of"):
        build_defs()


def test_every_job_resolves_with_the_kubernetes_executor_and_the_shipped_run_config(monkeypatch):
    monkeypatch.setenv(EXECUTOR_VARIABLE, "k8s")
    defs = build_defs()
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())
    for name in ("pipeline", "demo_pipeline", "observe_sources"):
        assert defs.resolve_job_def(name).executor_def.name == "k8s", name
    job = defs.resolve_job_def("pipeline")
    resolved = dg.validate_run_config(job, run_config)["execution"]["k8s"]
    assert resolved["job_namespace"] == "dagster" and resolved["per_step_k8s_config"]["embeddings"]
    per_step = run_config["execution"]["config"]["per_step_k8s_config"]
    assert set(per_step) <= {node.name for node in job.graph.node_defs}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, {"execution": {"config": {"no_such_field": 1}}})


@pytest.mark.parametrize("step, gpus", [("embeddings", 1), ("resnet34_model", 1), ("raw_images", 0)])
def test_a_step_pod_mounts_the_shared_volume_and_asks_for_its_gpu(step, gpus):
    """The pod spec the executor builds for a step, from the run config's step-wide and
    per-step sections merged as the executor merges them."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())["execution"]["config"]
    context = K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["step_k8s_config"]))
    context = context.merge(K8sContainerContext(
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config["per_step_k8s_config"].get(step, {}))))
    job_config = DagsterK8sJobConfig(job_image="animal-assets:test", dagster_home="/opt/dagster/dagster_home")
    job = construct_dagster_k8s_job(job_config, args=["dagster", "api", "execute_step"],
                                    job_name=f"dagster-step-{step.replace('_', '-')}",
                                    user_defined_k8s_config=context.run_k8s_config)
    pod = job.spec.template.spec
    container = pod.containers[0]
    assert {v.name: v.persistent_volume_claim.claim_name for v in pod.volumes if v.persistent_volume_claim} == {
        "shared": "animal-assets-shared"}
    assert {m.mount_path for m in container.volume_mounts} >= {"/shared", "/opt/dagster/dagster_home/storage"}
    assert {e.name: e.value for e in container.env}["ANIMAL_ASSETS_EXECUTOR"] == "k8s"
    assert int((container.resources.limits or {}).get("nvidia.com/gpu", 0)) == gpus


def test_the_helm_values_run_the_code_location_with_the_kubernetes_executor():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "animal_assets.definitions"]
    assert {e["name"]: e["value"] for e in deployment["env"]}[EXECUTOR_VARIABLE] == "k8s"
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_a_sharded_graph_resolves_with_the_kubernetes_executor_and_each_shard_asks_for_a_gpu(monkeypatch):
    """ANIMAL_ASSETS_SHARDS=16 on the cluster: a backfill of embedding_shards runs each shard as a
    run of its own (a pod under the K8sRunLauncher); the shard's step asks for its GPU through
    its op tags, which dagster-k8s reads for runs that carry no run config (a backfill's)."""
    from dagster_k8s.job import USER_DEFINED_K8S_CONFIG_KEY, get_user_defined_k8s_config

    monkeypatch.setenv(EXECUTOR_VARIABLE, "k8s")
    monkeypatch.setenv("ANIMAL_ASSETS_SHARDS", "16")
    defs = build_defs()
    job = defs.resolve_job_def("pipeline")
    assert job.executor_def.name == "k8s"
    assert len(job.partitions_def.get_partition_keys()) == 16
    run_config = yaml.safe_load((DEPLOY / "run_config.yaml").read_text())
    dg.validate_run_config(job, run_config)
    shard_step = job.graph.node_named("embedding_shards")
    config = get_user_defined_k8s_config(shard_step.tags)
    assert USER_DEFINED_K8S_CONFIG_KEY in shard_step.tags
    assert int(config.container_config["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert "dagster-k8s/config" not in job.graph.node_named("embeddings").tags  # the merge: no GPU
    assert "dagster-k8s/config" not in job.graph.node_named("raw_image_shards").tags  # decoding
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert {e["name"]: e["value"] for e in deployment["env"]}["ANIMAL_ASSETS_SHARDS"] == "16"
    coordinator = values["dagsterDaemon"]["runCoordinator"]
    assert coordinator["type"] == "QueuedRunCoordinator"
    assert coordinator["config"]["queuedRunCoordinator"]["maxConcurrentRuns"] >= 4

"""The lineage: every edge of the graph is a data edge, and a change reruns what is below it.

The expected edges are written out here by hand from what each stage reads, not derived from the
definitions under test. The reruns are Dagster's own: the assets' automation conditions are
evaluated on a real instance (``dagster.evaluate_automation_conditions``, what the automation
sensor runs each tick) after an observed change of the input or of the review.
"""
from __future__ import annotations

import json

import dagster as dg
import pytest

from animal_assets import runner
from animal_assets.definitions import build_defs
from animal_assets.resources import DatasetResource, DeviceResource, StorageResource
from tests.fixtures import cli_in_process, make_dataset
from tests.graph import TINY, fork, sqlite_instance

#: (upstream, downstream): downstream reads the data of upstream.
DATA_EDGES = {
    ("input_dataset", "raw_images"),
    ("review_file", "clean_labels"),
    ("raw_images", "image_quality"),
    ("image_quality", "clean_labels"),
    ("raw_images", "embeddings"),
    ("raw_images", "neighbours"),
    ("embeddings", "neighbours"),
    ("raw_images", "ood_scores"),
    ("embeddings", "ood_scores"),
    ("neighbours", "ood_scores"),
    ("raw_images", "clean_labels"),
    ("embeddings", "clean_labels"),
    ("ood_scores", "clean_labels"),
    ("near_duplicates", "clean_labels"),
    ("raw_images", "near_duplicates"),
    ("neighbours", "near_duplicates"),
    ("near_duplicates", "val_split"),
    ("raw_images", "val_split"),
    ("clean_labels", "val_split"),
    ("raw_images", "balanced_train"),
    ("clean_labels", "balanced_train"),
    ("val_split", "balanced_train"),
    ("near_duplicates", "balanced_train"),
    ("raw_images", "resnet34_model"),
    ("balanced_train", "resnet34_model"),
    ("val_split", "resnet34_model"),
    ("resnet34_model", "eval_report"),
    ("val_split", "eval_report"),
    ("clean_labels", "eval_report"),
    ("ood_scores", "eval_report"),
    ("raw_images", "ablation_report"),
    ("clean_labels", "ablation_report"),
    ("val_split", "ablation_report"),
    ("balanced_train", "ablation_report"),
    ("resnet34_model", "ablation_report"),
}
#: Rerun by the automation sensor below a change; training and what needs it are on request.
AUTOMATIC = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "near_duplicates",
             "clean_labels", "val_split", "balanced_train"]
ON_REQUEST = ["resnet34_model", "eval_report", "ablation_report"]


def _edges(defs: dg.Definitions) -> set[tuple[str, str]]:
    graph = defs.resolve_asset_graph()
    return {(parent.to_user_string(), key.to_user_string())
            for key in graph.get_all_asset_keys() for parent in graph.get(key).parent_keys}


def test_the_graph_draws_only_the_data_edges():
    assert _edges(build_defs()) == DATA_EDGES


def test_only_the_assets_before_training_rerun_by_themselves():
    defs = build_defs()
    for name in AUTOMATIC:
        assert defs.resolve_assets_def(name).automation_conditions_by_key[dg.AssetKey(name)], name
    for name in ON_REQUEST:
        assert defs.resolve_assets_def(name).automation_conditions_by_key.get(dg.AssetKey(name)) is None
    sensors = [s for s in defs.sensors if isinstance(s, dg.AutomationConditionSensorDefinition)]
    assert [s.default_status for s in sensors] == [dg.DefaultSensorStatus.RUNNING]


def _requested(defs, instance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    names = [n for n in [*AUTOMATIC, *ON_REQUEST] if result.get_num_requested(dg.AssetKey(n))]
    return sorted(names), result.cursor


def _latest_runs(instance, names):
    return {n: instance.get_latest_materialization_event(dg.AssetKey(n)).run_id for n in names}


@pytest.mark.slow
def test_an_observed_input_change_reruns_everything_below_it_up_to_training(
    tiny_graph, tmp_path,
):
    graph = fork(tiny_graph, tmp_path / "graph")
    instance, defs = graph.instance, graph.defs
    requested, cursor = _requested(defs, instance, None)
    assert requested == []  # a synced graph: nothing to do

    # an image and its label leave the input
    labels_path = graph.dataset / "data-labels.json"
    labels = json.loads(labels_path.read_text())
    gone = sorted(labels)[0]
    del labels[gone]
    labels_path.write_text(json.dumps(labels))
    (graph.dataset / "imgs" / f"{gone}.jpg").unlink()
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == []  # not observed yet

    runner.observe(instance, defs)
    observed = instance.fetch_observations(dg.AssetKey("input_dataset"), limit=1).records[0]
    metadata = observed.asset_observation.metadata
    assert metadata["path"].value == str(graph.dataset) and metadata["kind"].value == "folder"
    assert metadata["jpg_files"].value == len(labels)
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == sorted(AUTOMATIC)
    assert runner.sync_status(instance, defs)["raw_images"] == "unsynced"

    before = _latest_runs(instance, ON_REQUEST)
    summary = runner.run(config=TINY, instance=instance, defs=defs, select=requested,
                         observe_first=False)
    assert sorted(summary["assets"]) == sorted(AUTOMATIC)
    # every image left was embedded by the first run: read from the stage's feature cache
    embedded = instance.get_latest_materialization_event(dg.AssetKey("embeddings")).asset_materialization
    assert embedded.metadata["n_from_cache"].value == embedded.metadata["n"].value == len(labels)
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == []  # the rerun settled it
    runner.observe(instance, defs)  # observed again, unchanged (as each command-line run does)
    requested, cursor = _requested(defs, instance, cursor)
    assert requested == []
    status = runner.sync_status(instance, defs)
    assert [status[n] for n in AUTOMATIC] == ["synced"] * len(AUTOMATIC)
    assert status["resnet34_model"] == "unsynced"  # its inputs changed; it waits to be asked
    assert _latest_runs(instance, ON_REQUEST) == before


@pytest.mark.slow
def test_an_observed_review_reruns_the_label_stage_and_below_only(tiny_graph, tmp_path):
    graph = fork(tiny_graph, tmp_path / "graph")
    review_path = tmp_path / "review.csv"
    review_path.write_text("id,action,label,note\n")
    defs = build_defs({
        "storage": StorageResource(root=str(graph.tmp / "out")),
        "dataset": DatasetResource(path=str(graph.dataset), review_path=str(review_path)),
        "compute": DeviceResource(device="cpu"),
    })
    instance = sqlite_instance(graph.tmp)
    _, cursor = _requested(defs, instance, None)
    review_path.write_text("id,action,label,note\n" + "".join(
        f"{i},drop,,blurred\n" for i in sorted(json.loads(
            (graph.dataset / "data-labels.json").read_text()))[:2]))
    runner.observe(instance, defs)
    observed = instance.fetch_observations(dg.AssetKey("review_file"), limit=1).records[0]
    assert observed.asset_observation.metadata["rows"].value == 2
    requested, _ = _requested(defs, instance, cursor)
    assert requested == ["balanced_train", "clean_labels", "val_split"]


def test_the_demo_runs_as_its_job_and_a_part_of_the_graph_as_pipeline():
    assert runner.job_name("demo") == "demo_pipeline"
    assert runner.job_name("demo", whole=False) == "pipeline"  # a subset drops the job's config
    assert runner.job_name("default") == runner.job_name({"ops": {}}) == "pipeline"


def test_a_command_line_run_is_tagged_with_its_config_and_code_location(tmp_path):
    dataset = make_dataset(tmp_path, n=12, k=3)
    instance = sqlite_instance(tmp_path)
    done = cli_in_process(tmp_path, tmp_path / "dagster_home", "run", "--config", "demo",
                          "--dataset", str(dataset), "--output", str(tmp_path / "out"),
                          "--select", "raw_images", "--device", "cpu", "--no-progress")
    assert done.returncode == 0, done.stderr
    runs = {run.job_name: run for run in instance.get_runs()}
    assert sorted(runs) == ["observe_sources", "pipeline"]
    for run in runs.values():  # the UI lists each on its job's page by this tag
        assert run.tags[".dagster/repository"] == "__repository__@animal_assets"
    tags = runs["pipeline"].tags
    assert tags["animal_assets/config"] == "demo" and tags["animal_assets/dataset"] == str(dataset)
    assert tags["animal_assets/device"] == "cpu"

"""Shards: the per-image work cut by a stable hash of the image id, one Dagster partition per
shard, merged back for the assets that read every image.

The graph runs on the tiny demo set once unsharded and once in four shards on two processes;
the merged features must be the unsharded ones bit for bit, and the rerun loop (an observed
input change, the automation's requests, ``--unsynced``) must hold on the sharded graph.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from animal_assets import runner
from animal_assets.cluster import sharded_run_config
from animal_assets.core.atomic import OWNER_MARKER
from animal_assets.core.shards import (
    MAX_SHARDS,
    SHARDS_VARIABLE,
    check_count,
    parse_shard_key,
    shard_key,
    shard_keys,
    shard_of,
    shard_rows,
    shards_from_environment,
)
from animal_assets.definitions import build_defs
from tests.fixtures import tree_hashes
from tests.graph import TINY, make_defs, sqlite_instance

#: The assets the automation reruns below an input change (the shards are added by the run).
BEFORE_TRAINING = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores",
                   "near_duplicates", "clean_labels", "val_split", "balanced_train"]
#: The per-shard assets of a sharded graph.
PER_SHARD = ["raw_image_shards", "image_quality_shards", "embedding_shards"]


def _shard_runs(keys) -> list[str]:
    return sorted(f"{name}[{k}]" for name in PER_SHARD for k in keys)


# -- which image goes where ----------------------------------------------------------------------


def test_an_image_keeps_its_shard_and_every_image_is_in_exactly_one():
    ids = [f"img_{k:05d}" for k in range(4000)]
    rows = [shard_rows(ids, k, 4) for k in range(4)]
    assert sorted(np.concatenate(rows).tolist()) == list(range(4000))
    assert all(900 < len(r) < 1100 for r in rows), [len(r) for r in rows]  # about N / 4 each
    # more images: the old ones stay in their shard, at their old positions
    grown = ids + [f"img_new_{k}" for k in range(500)]
    for k in range(4):
        again = shard_rows(grown, k, 4)
        assert again[again < 4000].tolist() == rows[k].tolist()


def test_an_image_id_hashes_the_same_in_every_process():
    # Python's own hash() is salted per process; the shard must not be. Pinned: the first 8
    # bytes of sha256(id) as a big-endian integer, modulo the count.
    assert shard_of("img_0a1b2c3d-0000-4000-8000-000000000000", 16) == 0
    assert [shard_of("img_00000", n) for n in (1, 2, 3, 4, 16)] == [0, 0, 1, 2, 10]


def test_shard_names_sort_in_order_and_say_the_count():
    assert shard_keys(4) == ["0-of-4", "1-of-4", "2-of-4", "3-of-4"]
    assert shard_keys(16)[:2] == ["00-of-16", "01-of-16"] and shard_key(15, 16) == "15-of-16"
    assert sorted(shard_keys(16)) == shard_keys(16)
    assert [parse_shard_key(k) for k in shard_keys(3)] == [(0, 3), (1, 3), (2, 3)]
    for bad in ("3", "4-of-4", "1-of-x", "01-of-4", "0-of-0"):
        with pytest.raises(ValueError, match="not a shard name"):
            parse_shard_key(bad)
    for bad in (0, -1, MAX_SHARDS + 1, 2.0, True):
        with pytest.raises(ValueError, match="whole number"):
            check_count(bad)


def test_the_shard_count_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(SHARDS_VARIABLE, raising=False)
    assert shards_from_environment() == 1
    monkeypatch.setenv(SHARDS_VARIABLE, " 8 ")
    assert shards_from_environment() == 8
    for bad in ("0", "two", "1.5", str(MAX_SHARDS + 1)):
        monkeypatch.setenv(SHARDS_VARIABLE, bad)
        with pytest.raises(ValueError, match=f"{SHARDS_VARIABLE}='{bad}': must be a whole number"):
            shards_from_environment()


def test_the_settings_of_a_sharded_stage_go_to_its_shards():
    config = {"ops": {"embeddings": {"config": {"image_size": 64}}, "val_split": {"config": {}},
                      "image_quality": {"config": {"policy": "drop"}},
                      "raw_images": {"config": {"format_policy": "quarantine"}}}}
    assert sharded_run_config(config, 1) == config
    # the format policies apply to the whole input: they stay with raw_images, the merge
    assert sharded_run_config(config, 4) == {"ops": {
        "embedding_shards": {"config": {"image_size": 64}}, "val_split": {"config": {}},
        "image_quality_shards": {"config": {"policy": "drop"}},
        "raw_images": {"config": {"format_policy": "quarantine"}}}}


def test_the_unsharded_graph_has_no_partitions_and_the_sharded_one_draws_the_merges():
    plain = build_defs(shards=1).resolve_asset_graph()
    assert not any(plain.get(k).is_partitioned for k in plain.get_all_asset_keys())
    assert {k.to_user_string() for k in plain.get_all_asset_keys()}.isdisjoint(PER_SHARD)
    graph = build_defs(shards=4).resolve_asset_graph()
    # the input is read in shards; raw_images merges them and reads nothing else
    shards = graph.get(dg.AssetKey("raw_image_shards"))
    assert shards.partitions_def.get_partition_keys() == shard_keys(4)
    assert set(shards.parent_keys) == {dg.AssetKey("input_dataset")}
    assert set(graph.get(dg.AssetKey("raw_images")).parent_keys) == {dg.AssetKey("raw_image_shards")}
    assert set(graph.get(dg.AssetKey("raw_images")).child_keys) == {
        *plain.get(dg.AssetKey("raw_images")).child_keys, *map(dg.AssetKey, PER_SHARD[1:])}
    for stage, per_shard in zip(("image_quality", "embeddings"), PER_SHARD[1:]):
        shards = graph.get(dg.AssetKey(per_shard))
        assert shards.partitions_def.get_partition_keys() == shard_keys(4)
        assert set(shards.parent_keys) == {dg.AssetKey("raw_images")}
        assert set(graph.get(dg.AssetKey(stage)).parent_keys) == {
            dg.AssetKey("raw_images"), dg.AssetKey(per_shard)}
        # what read the stage reads the merge, as unsharded
        assert {k.to_user_string() for k in graph.get(dg.AssetKey(stage)).child_keys} == {
            k.to_user_string() for k in plain.get(dg.AssetKey(stage)).child_keys}
    assert sorted(k.to_user_string() for k in graph.get_all_asset_keys()
                  if graph.get(k).is_partitioned) == sorted(PER_SHARD)


# -- the sharded graph -----------------------------------------------------------------------------


@dataclass
class Graph:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    out: Path
    dataset: Path


def _graph(tmp: Path, dataset: Path, truth: Path, shards: int) -> Graph:
    tmp.mkdir(parents=True, exist_ok=True)
    defs = make_defs(tmp, str(dataset), truth=str(truth), shards=shards)
    return Graph(sqlite_instance(tmp), defs, tmp / "out", dataset)


@pytest.fixture(scope="module")
def graphs(tiny_graph, tmp_path_factory):
    """The session's tiny graph (unsharded), and its input in four shards on two processes up to
    balanced_train."""
    tmp = tmp_path_factory.mktemp("shards")
    one = Graph(tiny_graph.instance, tiny_graph.defs, tiny_graph.tmp / "out", tiny_graph.dataset)
    truth = next((tiny_graph.tmp / "demo").rglob("truth.json"))
    four = _graph(tmp / "four", tiny_graph.dataset, truth, 4)
    summary = runner.run(config=TINY, instance=four.instance, defs=four.defs,
                         select=BEFORE_TRAINING, parallel_shards=2)
    return one, four, summary, tmp, truth


@pytest.mark.slow
def test_four_shards_on_two_processes_embed_bit_for_bit_as_one(graphs):
    one, four, summary, _, _ = graphs
    assert sorted(n for n in summary["assets"] if "[" in n) == _shard_runs(shard_keys(4))
    # each shard of the input, raw_images, each shard of the per-image stages, what lies below
    assert len(summary["run_ids"]) == 4 + 1 + 4 + 1
    # the input read in shards is the input read whole, byte for byte
    for name in ("images.npy", "manifest.csv", "violations.json"):
        assert (four.out / "raw_images" / name).read_bytes() == (one.out / "raw_images" / name).read_bytes()
    assert tree_hashes(four.out / "raw_images" / "files") == tree_hashes(one.out / "raw_images" / "files")
    for k in shard_keys(4):
        assert (four.out / "raw_image_shards" / k / "rows.json").is_file()
    # the shards' folder is the tool's, and holds only the shards
    assert sorted(p.name for p in (four.out / "raw_image_shards").iterdir()) == sorted(
        [OWNER_MARKER, *shard_keys(4)])
    whole = np.load(one.out / "embeddings" / "embeddings.npy")
    merged = np.load(four.out / "embeddings" / "embeddings.npy")
    assert merged.dtype == whole.dtype == np.float32 and merged.shape == whole.shape
    assert merged.tobytes() == whole.tobytes()
    # each shard holds its own images' rows, no more
    ids = pd.read_csv(four.out / "raw_images" / "manifest.csv").query("status == 'ok'") \
        .sort_values("index")["id"].tolist()
    for k in range(4):
        part = np.load(four.out / "embeddings" / "shards" / shard_key(k, 4) / "embeddings.npy")
        assert part.tobytes() == whole[shard_rows(ids, k, 4)].tobytes()
    # so what is computed from them is the same: the quality table, decisions, validation set
    for path in ("image_quality/image_quality.csv", "clean_labels/decisions.csv",
                 "val_split/ids.csv"):
        assert (four.out / path).read_bytes() == (one.out / path).read_bytes(), path
    # each shard's run is a run of the pipeline job with its partition: one reads the input's
    # shard, one computes the shard of the per-image stages
    runs = four.instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": shard_key(2, 4)}))
    assert [r.dagster_run.job_name for r in runs] == ["pipeline", "pipeline"]
    assert {r.dagster_run.status for r in runs} == {dg.DagsterRunStatus.SUCCESS}
    status = runner.sync_status(four.instance, four.defs)
    assert [status[n] for n in [*PER_SHARD, *BEFORE_TRAINING]] == ["synced"] * 12


@pytest.mark.slow
def test_the_merge_waits_for_shards_behind_raw_images(graphs):
    """What the automation sensor's runs after an input change meet while the shards are behind:
    a merge skips (its shards read another version of the input, or were computed from another
    raw_images), and the assets below it in that run are skipped, not failed."""
    _, four, _, tmp, truth = graphs
    copy = tmp / "behind"
    shutil.copytree(four.out.parent, copy)
    dataset = tmp / "behind-input"
    shutil.copytree(four.dataset, dataset)
    _remove_one_image(dataset)
    graph = _graph(copy, dataset, truth, 4)
    runner.observe(graph.instance, graph.defs)
    job = graph.defs.resolve_job_def("pipeline").get_subset(asset_selection={
        dg.AssetKey(n) for n in ("raw_images", "embeddings", "neighbours")})

    def run_and_log():
        result = job.execute_in_process(instance=graph.instance, raise_on_error=False,
                                        run_config={"ops": {}})
        assert result.success
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
        logged = " ".join(e.user_message for e in graph.instance.all_logs(result.run_id))
        return done, skipped, logged

    done, skipped, logged = run_and_log()
    # the checks of raw_images (steps raw_images_<check>) have nothing to check either
    assert done == set() and {s for s in skipped if not s.startswith("raw_images_")} == {
        "embeddings", "neighbours"} and len(skipped) == 2 + 4
    assert "raw_images: shards ['0-of-4', '1-of-4', '2-of-4', '3-of-4'] were computed from " \
        "another version of the input" in logged
    assert runner.sync_status(graph.instance, graph.defs)["raw_image_shards"] == "unsynced"

    # a run of raw_images reads the input's shards first when they are behind the input
    summary = runner.run(config=TINY, instance=graph.instance, defs=graph.defs,
                         select=["raw_images"], observe_first=False)
    assert sorted(summary["assets"]) == sorted(
        ["raw_images", *(f"raw_image_shards[{k}]" for k in shard_keys(4))])
    done, skipped, logged = run_and_log()
    assert (done, skipped) == ({"raw_images"}, {"neighbours"})
    assert "embeddings: shards ['0-of-4', '1-of-4', '2-of-4', '3-of-4'] were computed from " \
        "another raw_images materialization" in logged
    assert runner.sync_status(graph.instance, graph.defs)["embedding_shards"] == "unsynced"


def _remove_one_image(dataset: Path) -> int:
    """Take the first image and its label out of ``dataset``; the images left."""
    labels_path = dataset / "data-labels.json"
    labels = json.loads(labels_path.read_text())
    gone = sorted(labels)[0]
    del labels[gone]
    labels_path.write_text(json.dumps(labels))
    (dataset / "imgs" / f"{gone}.jpg").unlink()
    return len(labels)


def _requested(defs, instance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    names = [k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()
             if result.get_num_requested(k)]
    return sorted(names), result.cursor


@pytest.mark.slow
def test_the_rerun_loop_and_unsynced_hold_on_the_sharded_graph(graphs):
    _, four, _, tmp, truth = graphs
    copy = tmp / "loop"
    shutil.copytree(four.out.parent, copy)
    dataset = tmp / "loop-input"
    shutil.copytree(four.dataset, dataset)
    graph = _graph(copy, dataset, truth, 4)
    requested, cursor = _requested(graph.defs, graph.instance, None)
    assert requested == []  # synced

    _remove_one_image(dataset)
    runner.observe(graph.instance, graph.defs)
    requested, cursor = _requested(graph.defs, graph.instance, cursor)
    # the input's shards read the change first (Dagster requests a partitioned asset's children
    # of other partitions on a later tick: see assets.sharded_assets)
    assert requested == ["raw_image_shards"]
    summary = runner.run(config=TINY, instance=graph.instance, defs=graph.defs, select=requested,
                         observe_first=False)
    assert sorted(summary["assets"]) == [f"raw_image_shards[{k}]" for k in shard_keys(4)]
    requested, cursor = _requested(graph.defs, graph.instance, cursor)
    # then raw_images and everything below it; a run of this selection adds the shards of the
    # stages between raw_images and what reads them (not the input's: they are synced)
    assert requested == sorted(BEFORE_TRAINING)
    summary = runner.run(config=TINY, instance=graph.instance, defs=graph.defs, select=requested,
                         observe_first=False)
    assert sorted(summary["assets"]) == sorted([
        *BEFORE_TRAINING, *(n for n in _shard_runs(shard_keys(4)) if "raw_image_shards" not in n)])
    for k in shard_keys(4):  # every image left was read from its shard's feature cache
        event = graph.instance.fetch_materializations(dg.AssetRecordsFilter(
            asset_key=dg.AssetKey("embedding_shards"), asset_partitions=[k]), limit=1).records[0]
        md = event.asset_materialization.metadata
        assert md["n_from_cache"].value == md["n"].value > 0
    requested, cursor = _requested(graph.defs, graph.instance, cursor)
    assert requested == []  # the rerun settled it
    status = runner.sync_status(graph.instance, graph.defs)
    assert [status[n] for n in [*PER_SHARD, *BEFORE_TRAINING]] == ["synced"] * 12

    # another change, rerun with --unsynced: the shards are found unsynced and run first
    left = _remove_one_image(dataset)
    summary = runner.run(config=TINY, instance=graph.instance, defs=graph.defs, unsynced=True)
    # everything: what the change made unsynced, and the training assets, never materialized
    assert sorted(summary["assets"]) == sorted([*BEFORE_TRAINING, *_shard_runs(shard_keys(4)),
                                                "resnet34_model", "eval_report", "ablation_report"])
    status = runner.sync_status(graph.instance, graph.defs)
    assert [status[n] for n in [*PER_SHARD, *BEFORE_TRAINING]] == ["synced"] * 12
    merged = np.load(copy / "out" / "embeddings" / "embeddings.npy")
    assert merged.shape[0] == left
    requested, cursor = _requested(graph.defs, graph.instance, cursor)
    assert requested == []


@pytest.mark.slow
def test_the_dagster_free_runner_runs_the_same_shards(tiny_graph, tmp_path):
    """The stage functions the sharded graph calls, called by the runner without dagster: three
    shards in turn give the unsharded graph's manifest, features and quality table."""
    from animal_assets.core.config import params_from_run_config
    from animal_assets.core.pipeline import run_stages
    from animal_assets.core.stages import RunContext, upto

    ctx = RunContext(output=tmp_path / "out", dataset=str(tiny_graph.dataset), device="cpu",
                     log=lambda line: None, warn=lambda line: None)
    results = run_stages(ctx, params_from_run_config(TINY), stages=upto("embeddings"), shards=3,
                         describe=False)
    assert sorted(p.name for p in (tmp_path / "out" / "embeddings" / "shards").iterdir()) == shard_keys(3)
    assert sorted(p.name for p in (tmp_path / "out" / "raw_image_shards").iterdir()) == sorted(
        [OWNER_MARKER, *shard_keys(3)])
    whole = tiny_graph.tmp / "out"
    assert Path(results["raw_images"].manifest_path).read_bytes() == (
        whole / "raw_images" / "manifest.csv").read_bytes()
    assert Path(results["embeddings"].path).read_bytes() == (whole / "embeddings" / "embeddings.npy").read_bytes()
    assert Path(results["image_quality"].path).read_bytes() == (
        whole / "image_quality" / "image_quality.csv").read_bytes()

"""The whole asset graph on a real (SQLite) Dagster instance: materialization, checks across
runs, staleness after an input or code change, and the real DS801 archive."""
from __future__ import annotations

import json
import tarfile
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from animal_assets import runner
from animal_assets.assets import PIPELINE_ASSETS, resnet34_model
from animal_assets.core.export import validate_ds801_folder
from tests.fixtures import REAL_DS801, image_bytes, make_dataset
from tests.graph import NAMES, TINY, fork, make_defs, sqlite_instance


@pytest.fixture(scope="module")
def forked(tiny_graph, tmp_path_factory):
    """A copy of the tiny graph that the tests below change, in order."""
    return fork(tiny_graph, tmp_path_factory.mktemp("graph-fork"))


def test_whole_graph_materializes_with_every_check_passing(tiny_graph):
    tmp, instance, _, dataset, summary = tiny_graph
    assert sorted(summary["assets"]) == sorted(NAMES)
    assert summary["checks"] and all(v == "passed" for v in summary["checks"].values()), summary
    assert 0.0 <= summary["val_balanced_accuracy"] <= 1.0
    assert 0.5 <= summary["cleaning"]["ood"]["auroc"] <= 1.0
    report = json.loads(Path(summary["report_path"]).read_text())
    assert report["val_split"]["balanced_accuracy"] == summary["val_balanced_accuracy"]
    for name in NAMES:
        assert instance.get_latest_materialization_event(dg.AssetKey(name)) is not None


def test_tables_show_their_columns_and_the_decisions_their_row_count(tiny_graph):
    """Previews are Dagster tables with a column schema, so the UI renders them as tables."""
    instance = tiny_graph.instance

    def metadata(name: str) -> dict:
        return instance.get_latest_materialization_event(dg.AssetKey(name)).asset_materialization.metadata

    clean, raw = metadata("clean_labels"), metadata("raw_images")
    decisions = pd.read_csv(tiny_graph.tmp / "out" / "clean_labels" / "decisions.csv")
    assert clean["dagster/row_count"].value == len(decisions) == raw["n_usable"].value
    assert clean["outputs"].value == str(tiny_graph.tmp / "out" / "clean_labels")
    preview = clean["decisions_preview"]
    assert isinstance(preview, dg.TableMetadataValue)
    assert {c.name: c.type for c in preview.schema.columns} == {
        "id": "string", "given": "string", "label": "string", "action": "string",
        "reason": "string", "confidence": "float", "source": "string"}
    rows = pd.DataFrame([r.data for r in preview.records])
    # every kind of decision shows, at most five of each, with class names and "dropped"
    kinds = decisions.groupby(["action", decisions["reason"].fillna("-"), "source"]).size()
    assert len(rows) == sum(min(5, n) for n in kinds) and len(rows.groupby(
        ["action", "reason", "source"])) == len(kinds) > 3
    names = [str(k) for k in range(10)]  # the tiny graph names no classes
    assert set(rows["given"]) <= set(names) and set(rows["label"]) <= {*names, "dropped"}
    assert (rows["label"] == "dropped").sum() == (rows["action"] == "drop").sum() > 0
    counts = clean["class_counts"]
    assert [c.name for c in counts.schema.columns] == [
        "class", "given", "kept", "relabelled_out", "relabelled_in", "dropped", "after"]
    after = sum(r.data["after"] for r in counts.records)
    assert clean["n_kept"].value + clean["n_relabelled"].value == after
    assert clean["n_dropped"].value == (decisions["action"] == "drop").sum()
    pairs = [r.data for r in clean["relabels_by_pair"].records]
    assert sum(p["images"] for p in pairs) == clean["n_relabelled"].value
    noise = clean["noise_matrix"]
    assert [c.name for c in noise.schema.columns] == ["true", *(f"given {n}" for n in names)]
    for record in noise.records:  # each row a distribution over the given labels
        assert abs(sum(v for k, v in record.data.items() if k != "true") - 1) < 0.01
    assert abs(sum(r.data["prior"] for r in clean["class_prior"].records) - 1) < 0.01
    assert [c.name for c in raw["violations"].schema.columns] == ["file", "rule", "message"]
    outlying = metadata("ood_scores")["most_outlying"]
    assert [c.type for c in outlying.schema.columns] == ["string", "float"] and len(outlying.records) == 15


def test_every_asset_folder_is_marked_and_holds_only_the_names_the_tool_writes(tiny_graph):
    """The names are what adopts an unmarked folder of an earlier version: they must cover all
    that the graph writes, or an earlier run's folder would be refused."""
    from animal_assets.core.atomic import OWNER_MARKER
    from animal_assets.core.preflight import OUTPUT_FOLDERS

    out = tiny_graph.tmp / "out"
    assert not (out / "raw_image_shards").exists()  # a sharded graph's (tests/test_shards.py)
    for name, known in OUTPUT_FOLDERS.items():
        if name == "raw_image_shards":
            continue
        names = {p.name for p in (out / name).iterdir()}
        assert OWNER_MARKER in names, name
        assert names - {OWNER_MARKER} <= known, (name, names - known)
    assert OWNER_MARKER not in {p.name for p in (out / "val_split" / "ds801").iterdir()}


def test_the_report_is_written_before_the_ablation_starts(tiny_graph):
    _, instance, _, _, summary = tiny_graph
    order = [(e.dagster_event.event_type_value, e.step_key)
             for e in instance.all_logs(summary["run_id"]) if e.dagster_event is not None]
    report_done = order.index(("STEP_SUCCESS", "eval_report"))
    ablation_start = order.index(("STEP_START", "ablation_report"))
    assert report_done < ablation_start


def test_exports_pass_the_format_rules_and_add_up(tiny_graph):
    tmp, *_ = tiny_graph
    out = tmp / "out"
    train, val = out / "balanced_train" / "train" / "ds801", out / "val_split" / "ds801"
    assert validate_ds801_folder(train) == []
    assert validate_ds801_folder(val) == []
    train_ids = set(json.loads((train / "data-labels.json").read_text()))
    val_ids = set(json.loads((val / "data-labels.json").read_text()))
    assert train_ids and val_ids and not train_ids & val_ids
    decisions = pd.read_csv(out / "clean_labels" / "decisions.csv")
    manifest = pd.read_csv(out / "raw_images" / "manifest.csv")
    # every input file is accounted for exactly once: usable (keep/relabel/drop) or quarantined
    assert len(decisions) == (manifest["status"] == "ok").sum()
    assert set(decisions["action"]) <= {"keep", "relabel", "drop"}
    kept = decisions[decisions["action"] != "drop"]
    originals = pd.read_csv(out / "balanced_train" / "train" / "ids.csv")
    originals = originals[~originals["generated"]]
    assert set(originals["id"]) | val_ids == set(kept["id"])


def _bumped_model_defs(tmp: Path, dataset: Path):
    """The same definitions with a new code version of resnet34_model."""
    bumped = resnet34_model.map_asset_specs(lambda s: s.replace_attributes(code_version="2"))
    assets = [bumped if a is resnet34_model else a for a in PIPELINE_ASSETS]
    return make_defs(tmp, str(dataset), assets=assets)


def test_changing_only_the_model_code_leaves_cleaning_synced(forked):
    tmp, instance, defs, dataset, _ = forked
    bumped = _bumped_model_defs(tmp, dataset)
    status = runner.sync_status(instance, bumped)
    assert status["resnet34_model"] == "unsynced"
    assert status["eval_report"] == "upstream unsynced"
    assert status["ablation_report"] == "upstream unsynced"
    cleaning = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "clean_labels",
                "near_duplicates", "val_split", "balanced_train"]
    assert all(status[name] == "synced" for name in cleaning), status
    before = {n: instance.get_latest_materialization_event(dg.AssetKey(n)).run_id
              for n in cleaning}

    # --unsynced with --select: only what is not synced of the selection
    summary = runner.run(config=TINY, instance=instance, defs=bumped, unsynced=True,
                         select=["clean_labels", "val_split"])
    assert summary == {"assets": {}, "message": "every selected asset is synced; nothing to do"}
    summary = runner.run(config=TINY, instance=instance, defs=bumped, unsynced=True,
                         select=["clean_labels", "eval_report"])
    assert sorted(summary["assets"]) == ["eval_report"]
    assert runner.sync_status(instance, bumped)["eval_report"] == "upstream unsynced"

    summary = runner.run(config=TINY, instance=instance, defs=bumped, unsynced=True)
    assert sorted(summary["assets"]) == ["ablation_report", "eval_report", "resnet34_model"]
    after = {n: instance.get_latest_materialization_event(dg.AssetKey(n)).run_id
             for n in cleaning}
    assert after == before  # nothing upstream was recomputed
    assert set(runner.sync_status(instance, bumped).values()) == {"synced"}


def test_changing_the_labels_file_marks_raw_images_unsynced_and_all_below_it(forked):
    tmp, instance, _, dataset, _ = forked
    defs = _bumped_model_defs(tmp, dataset)
    summary = runner.run(config=TINY, instance=instance, defs=defs, unsynced=True)  # after the test above
    assert summary == {"assets": {}, "message": "every asset is synced; nothing to do"}
    assert set(runner.sync_status(instance, defs).values()) == {"synced"}
    labels_file = dataset / "data-labels.json"
    labels = json.loads(labels_file.read_text())
    first = sorted(labels)[0]
    labels[first] = labels[first][1:] + labels[first][:1]  # move the 1 to another class
    labels_file.write_text(json.dumps(labels))
    assert set(runner.sync_status(instance, defs).values()) == {"synced"}  # not observed yet
    runner.observe(instance, defs)
    assert runner.sync_status(instance, defs) == {
        name: "unsynced" if name == "raw_images" else "upstream unsynced" for name in NAMES}


def _broken_dataset(tmp_path: Path) -> Path:
    folder = make_dataset(tmp_path, n=12, k=3, seed=3)
    labels = json.loads((folder / "data-labels.json").read_text())
    ids = sorted(labels)
    (folder / "imgs" / f"{ids[0]}.jpg").rename(folder / "imgs" / "IMG_bad-name.jpg")
    labels["IMG_bad-name"] = labels.pop(ids[0])
    labels[ids[1]] = [1, 1, 0]  # not one-hot
    del labels[ids[2]]  # an image without a label
    (folder / "data-labels.json").write_text(json.dumps(labels))
    return folder


def test_broken_input_fails_the_right_checks_and_blocks_downstream_across_runs(tmp_path):
    folder = _broken_dataset(tmp_path)
    ids = sorted(json.loads((folder / "data-labels.json").read_text()))
    instance = sqlite_instance(tmp_path)
    defs = make_defs(tmp_path, str(folder))
    with pytest.raises(runner.RunFailed) as err:
        runner.run(config=TINY, instance=instance, defs=defs)
    message = str(err.value)
    assert "raw_images.filenames_follow_rule" in message
    assert "raw_images.labels_are_one_hot" in message
    assert "raw_images.images_and_labels_pair_up" in message
    evaluations = {runner.check_label(e): e for e in err.value.result.get_asset_check_evaluations()}
    files = {name: json.dumps(e.metadata["files"].value) for name, e in evaluations.items()}
    assert "IMG_bad-name.jpg" in files["raw_images.filenames_follow_rule"]
    assert ids[1] in files["raw_images.labels_are_one_hot"]
    assert evaluations["raw_images.decode_as_64x64_rgb"].passed
    assert instance.get_latest_materialization_event(dg.AssetKey("raw_images")) is not None
    assert instance.get_latest_materialization_event(dg.AssetKey("embeddings")) is None

    # a later run that selects only downstream assets must not build on that raw_images
    with pytest.raises(runner.RunFailed, match="raw_images breaks the format rules"):
        runner.run(config=TINY, instance=instance, defs=defs, select=["embeddings"],
                   observe_first=False)
    assert instance.get_latest_materialization_event(dg.AssetKey("embeddings")) is None


def test_an_odd_sized_image_is_quarantined_with_a_warning(tmp_path):
    folder = make_dataset(tmp_path, n=12, k=3, seed=4)
    victim = sorted((folder / "imgs").iterdir())[0]
    victim.write_bytes(image_bytes(1, size=(63, 64)))
    instance = sqlite_instance(tmp_path)
    defs = make_defs(tmp_path, str(folder))
    result = runner.run(config=TINY, instance=instance, defs=defs, select=["raw_images"])
    verdict = result["checks"]["raw_images.decode_as_64x64_rgb"]
    assert verdict.startswith("failed (WARN)") and victim.name in verdict
    assert result["checks"]["raw_images.filenames_follow_rule"] == "passed"
    manifest = pd.read_csv(tmp_path / "out" / "raw_images" / "manifest.csv")
    row = manifest[manifest["file"].str.endswith(victim.name)].iloc[0]
    assert row["status"] == "quarantined" and row["index"] == -1


def _ds801_sample(dest: Path, n: int) -> Path:
    """The first n images (in archive order) of the real archive, with their labels, as a
    folder. One sequential pass: random access into a .tgz decompresses from the start."""
    (dest / "imgs").mkdir(parents=True)
    labels, stems = None, []
    with tarfile.open(REAL_DS801, mode="r|gz") as tf:
        for member in tf:
            name = Path(member.name)
            if member.isfile() and name.name == "data-labels.json":
                labels = json.loads(tf.extractfile(member).read())
            elif member.isfile() and name.parent.name == "imgs" and len(stems) < n:
                (dest / "imgs" / name.name).write_bytes(tf.extractfile(member).read())
                stems.append(name.stem)
            if labels is not None and len(stems) == n:
                break
    (dest / "data-labels.json").write_text(json.dumps({s: labels[s] for s in stems}))
    return dest


@pytest.mark.slow
@pytest.mark.skipif(not REAL_DS801.exists(), reason=f"real DS801 archive not found at {REAL_DS801}")
def test_raw_images_and_checks_on_a_ds801_sample(tmp_path):
    folder = _ds801_sample(tmp_path / "sample", 2000)
    instance = sqlite_instance(tmp_path)
    result = runner.run(config=TINY, instance=instance, defs=make_defs(tmp_path, str(folder)),
                        select=["raw_images"])
    assert set(result["checks"]) == {
        "raw_images.filenames_follow_rule", "raw_images.labels_are_one_hot",
        "raw_images.images_and_labels_pair_up", "raw_images.decode_as_64x64_rgb",
    }
    assert all(v == "passed" for v in result["checks"].values()), result["checks"]
    images = np.load(tmp_path / "out" / "raw_images" / "images.npy")
    assert images.shape == (2000, 64, 64, 3) and images.dtype == np.uint8


@pytest.mark.parametrize("name", ["demo", "demo-ablation", "default"])
def test_every_shipped_run_config_fits_the_pipeline_job(tmp_path, name):
    from animal_assets.core.config import RUN_CONFIGS, load_run_config, params_from_run_config

    assert sorted(p.stem for p in RUN_CONFIGS.glob("*.yaml")) == ["default", "demo", "demo-ablation"]
    config = load_run_config(name)
    params_from_run_config(config)
    job = make_defs(tmp_path).resolve_job_def("pipeline")
    assert dg.validate_run_config(job, config)


def test_every_config_field_of_every_asset_says_what_it_does():
    """The launchpad shows each field's description: the comment beside it in the stage's config
    dataclass."""
    from animal_assets import configs
    from animal_assets.core.config import field_docs
    from animal_assets.core.stages import STAGES

    configured = [stage for stage in STAGES if stage.config is not None]
    assert len(configured) == len(STAGES)  # every stage
    for stage in configured:
        assets_def = next(a for a in PIPELINE_ASSETS if a.key.to_user_string() == stage.name)
        fields = assets_def.op.config_schema.config_type.fields
        docs = field_docs(stage.config)
        assert set(fields) <= set(docs) and fields, stage.name
        for name, field in fields.items():
            assert field.description == docs[name] and len(field.description) >= 15, (stage.name, name)
    assert configs.OodScoresConfig.model_fields["k"].description == \
        "neighbours in the mean cosine kNN distance (at most neighbours.k)"


def test_the_report_summary_and_figures_show_without_a_click(tiny_graph):
    """The UI renders a markdown entry inline below 1,000 characters, a float as it is."""
    event = tiny_graph.instance.get_latest_materialization_event(dg.AssetKey("eval_report"))
    metadata = event.asset_materialization.metadata
    summary = metadata["summary"].value
    assert len(summary) < 1000 and "| val_split |" in summary
    assert "cleaning vs truth: label accuracy" in summary
    accuracy = metadata["val_balanced_accuracy"].value
    assert accuracy == float(f"{tiny_graph.summary['val_balanced_accuracy']:.4g}")
    assert len(repr(metadata["label_issue_f1"].value)) <= 6  # 4 significant digits

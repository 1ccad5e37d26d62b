"""A person's review of the cleaning: the file's rules, how it overrules the automatic decisions,
and the review loop on a Dagster instance (edit, observe, unsynced, materialize)."""
from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from animal_assets import runner
from animal_assets.core import review
from animal_assets.core.stages.clean_labels import CleanLabels, reviewed_clean_labels
from animal_assets.definitions import build_defs
from animal_assets.resources import DatasetResource, DeviceResource, StorageResource
from tests.graph import TINY, sqlite_instance

K = 3
NAMES = ["cat", "lynx", "wolf"]
IDS = [f"img_{i:08x}-0000-4000-8000-000000000000" for i in range(6)]
GIVEN = [0, 1, 2, 0, 1, 2]


def write(tmp_path: Path, text: str, name: str = "review.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def read(path: Path) -> pd.DataFrame:
    return review.read_review(path, known_ids=IDS, given=GIVEN, num_classes=K, class_names=NAMES)


def automatic() -> pd.DataFrame:
    """Automatic decisions of six images: keep, relabel, drop (ood), keep, drop, keep."""
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.2, 0.7], [0.3, 0.3, 0.4],
                      [0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.1, 0.1, 0.8]])
    label = np.array([0, 2, -1, 0, -1, 2])
    table = pd.DataFrame({
        "id": IDS, "given": GIVEN, "label": label,
        "action": ["keep", "relabel", "drop", "keep", "drop", "keep"],
        "reason": ["", "label_issue", "ood", "", "label_issue", ""],
        "confidence": [0.8, 0.7, 0.4, 0.6, 0.4, 0.8],
        "label_issue": [False, True, False, False, True, False],
        "self_confidence": probs[np.arange(6), GIVEN],
    })
    for k in range(K):
        table[f"p{k}"] = probs[:, k]
    return table


@pytest.mark.parametrize("text, expected", [
    # action, final label; names and indices both work, ".jpg" is accepted on the id
    (f"id,action,label,note\n{IDS[1]},relabel,wolf,tufted ears\n", [("relabel", 2)]),
    (f"id,action,label,note\n{IDS[1]}.jpg,relabel,0,\n", [("relabel", 0)]),
    (f"id,action,label,note\n{IDS[2]},drop,,junk\n", [("drop", -1)]),
    (f"id,action,label,note\n{IDS[2]},KEEP,,\n", [("keep", 2)]),
    (f"id,action,label,note\n{IDS[2]},keep,wolf,\n", [("keep", 2)]),
    # a relabel to the given label is a keep
    (f"id,action,label,note\n{IDS[1]},relabel,lynx,\n", [("keep", 1)]),
    # label and note may be left out, extra columns are ignored, blank lines skipped
    (f"id,action,who\n{IDS[2]},drop,ann\n,,\n{IDS[0]},keep,bob\n", [("drop", -1), ("keep", 0)]),
    # spaces after commas
    (f"id, action, label, note\n{IDS[4]}, relabel, cat, sure\n", [("relabel", 0)]),
    ("id,action,label,note\n", []),
    ("", []),
])
def test_valid_reviews_are_read(tmp_path, text, expected):
    table = read(write(tmp_path, text))
    assert list(zip(table["action"], table["label"])) == expected
    assert table["label"].dtype == np.int64


@pytest.mark.parametrize("text, line, rule", [
    ("image,decision\nx,drop\n", 1, "the header must name the columns"),
    (f"id,action,label,note\n{IDS[0]},keep,,\nimg_nope,drop,,\n", 3, "unknown image id 'img_nope'"),
    (f"id,action,label,note\n{IDS[0]},delete,,\n", 2, "action 'delete' must be one of"),
    (f"id,action,label,note\n{IDS[0]},relabel,7,\n", 2, "label '7' is not a class; use 0..2"),
    (f"id,action,label,note\n{IDS[0]},relabel,tiger,\n", 2, "label 'tiger' is not a class"),
    (f"id,action,label,note\n{IDS[0]},relabel,,\n", 2, "relabel needs a label"),
    (f"id,action,label,note\n{IDS[0]},drop,cat,\n", 2, "drop takes no label"),
    (f"id,action,label,note\n{IDS[0]},keep,lynx,\n", 2, "keep keeps the given label 0"),
    (f"id,action,label,note\n{IDS[0]},keep,,\n{IDS[1]},drop,,\n{IDS[0]},drop,,\n", 4,
     "already reviewed on line 2"),
])
def test_a_broken_rule_names_the_file_the_line_and_the_rule(tmp_path, text, line, rule):
    path = write(tmp_path, text, name="my-review.csv")
    with pytest.raises(review.ReviewError) as err:
        read(path)
    message = str(err.value)
    assert message.startswith(f"{path}, line {line}: ")
    assert rule in message
    assert "\n" not in message


def test_a_byte_order_mark_is_refused_like_the_labels_files(tmp_path):
    path = write(tmp_path, f"\ufeffid,action,label,note\n{IDS[4]},relabel,cat,sure\n")
    with pytest.raises(review.ReviewError, match=f"^{path}: the file starts with a byte-order mark"):
        read(path)


def test_a_missing_review_file_is_an_error_and_no_file_is_a_fixed_version(tmp_path):
    assert review.review_version(None) == review.review_version("") == review.NO_REVIEW
    with pytest.raises(review.ReviewError, match="does not exist"):
        review.review_version(tmp_path / "absent.csv")


def test_the_version_follows_the_bytes(tmp_path):
    path = write(tmp_path, f"id,action,label,note\n{IDS[0]},keep,,\n")
    first = review.review_version(path)
    assert first.startswith("sha256:") and review.review_version(path) == first
    path.write_text(f"id,action,label,note\n{IDS[0]},drop,,\n")
    assert review.review_version(path) != first


def test_the_review_overrules_the_automatic_decisions(tmp_path):
    auto = automatic()
    path = write(tmp_path, "id,action,label,note\n"
                           f"{IDS[1]},keep,,given label is right\n"  # auto relabelled it
                           f"{IDS[2]},relabel,cat,not an outlier\n"  # auto dropped it (ood)
                           f"{IDS[3]},drop,,blurred\n")  # auto kept it
    final = review.apply_review(auto, read(path), num_classes=K)
    assert final["source"].tolist() == ["auto", "review", "review", "review", "auto", "auto"]
    assert final["action"].tolist() == ["keep", "keep", "relabel", "drop", "drop", "keep"]
    assert final["label"].tolist() == [0, 1, 0, -1, -1, 2]
    assert final["reason"].tolist() == ["", "", "review", "review", "label_issue", ""]
    # the probe's probability of the reviewed label; of the given label when dropped
    np.testing.assert_allclose(final["confidence"], [0.8, 0.2, 0.3, 0.6, 0.4, 0.8])
    assert final["auto_action"].tolist() == auto["action"].tolist()
    assert final["auto_label"].tolist() == auto["label"].tolist()
    assert final.loc[2, "review_note"] == "not an outlier"
    untouched = ["id", "given", "label_issue", "self_confidence", "p0", "p1", "p2"]
    pd.testing.assert_frame_equal(final[untouched], auto[untouched])


def test_no_review_changes_nothing_but_adds_the_source():
    auto = automatic()
    final = review.apply_review(auto, review.empty_review(), num_classes=K)
    assert (final["source"] == "auto").all()
    pd.testing.assert_frame_equal(final[auto.columns], auto)


def test_the_final_table_template_and_summary_are_written(tmp_path):
    auto_dir = tmp_path / "auto"
    auto_dir.mkdir()
    automatic().to_csv(auto_dir / "decisions.csv", index=False)
    handle = CleanLabels(path=str(auto_dir / "decisions.csv"), raw_version="abc", summary={})
    path = write(tmp_path, f"id,action,label,note\n{IDS[0]},drop,,\n")
    clean, final, version = reviewed_clean_labels(
        handle, path, tmp_path / "out", num_classes=K, class_names=NAMES)
    assert version == review.review_version(path)
    assert clean.path == str(tmp_path / "out" / "decisions.csv") and clean.raw_version == "abc"
    written = pd.read_csv(clean.path, keep_default_na=False)
    assert written["source"].tolist() == final["source"].tolist()
    assert clean.summary["by_source"] == {"auto": 5, "review": 1}
    assert clean.summary["by_action"]["drop"] == 3
    template = pd.read_csv(tmp_path / "out" / "review_template.csv", keep_default_na=False)
    assert list(template.columns) == list(review.COLUMNS)
    # the automatic non-keep decisions, most confident first, labels by name
    assert template["id"].tolist() == [IDS[1], IDS[2], IDS[4]]
    assert template["label"].tolist() == ["wolf", "", ""]
    assert template["note"].iloc[0] == "auto: label_issue (given lynx, p=0.70)"
    # a template is itself a valid review: it reads back without error
    assert len(read(tmp_path / "out" / "review_template.csv")) == 3


# --------------------------------------------------------------------------------------------
# the review loop on a Dagster instance

UPSTREAM = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "near_duplicates"]


def test_the_review_feeds_the_label_stage_alone():
    graph = build_defs().resolve_asset_graph()
    review_key = dg.AssetKey("review_file")
    assert {k.to_user_string() for k in graph.get(review_key).child_keys} == {"clean_labels"}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """The tiny demo materialized up to clean_labels with an empty review file configured."""
    from animal_assets.core.synthetic.demo import make_demo_dataset

    tmp = tmp_path_factory.mktemp("review")
    demo = make_demo_dataset(tmp / "demo", seed=0, size="tiny")
    dataset = tmp / "input"
    shutil.copytree(demo.dataset_dir, dataset)
    review_path = tmp / "review.csv"
    review_path.write_text("id,action,label,note\n")
    defs = build_defs({
        "storage": StorageResource(root=str(tmp / "out")),
        "dataset": DatasetResource(path=str(dataset), review_path=str(review_path)),
        "compute": DeviceResource(device="cpu"),
    })
    instance = sqlite_instance(tmp)
    runner.run(config=TINY, instance=instance, defs=defs, select=[*UPSTREAM, "clean_labels"])
    return tmp, instance, defs, review_path


@pytest.mark.slow
def test_an_observed_edit_marks_only_the_reviewed_assets_unsynced_and_is_applied(loop):
    tmp, instance, defs, review_path = loop
    decisions_path = tmp / "out" / "clean_labels" / "decisions.csv"
    before = pd.read_csv(decisions_path, keep_default_na=False)
    assert (before["source"] == "auto").all()
    status = runner.sync_status(instance, defs)
    assert all(status[n] == "synced" for n in [*UPSTREAM, "clean_labels"]), status

    dropped = before[before["action"] == "drop"]["id"].iloc[0]
    kept = before[before["action"] == "keep"]
    kept_id, kept_given = kept["id"].iloc[0], int(kept["given"].iloc[0])
    new_label = (kept_given + 1) % 10
    review_path.write_text("id,action,label,note\n"
                           f"{dropped},keep,,a fine image\n{kept_id},relabel,{new_label},wrong\n")
    assert runner.sync_status(instance, defs)["clean_labels"] == "synced"  # not observed yet
    versions = runner.observe(instance, defs)
    assert versions["review_file"] == review.review_version(review_path)
    status = runner.sync_status(instance, defs)
    assert status["clean_labels"] == "unsynced"
    assert all(status[n] == "synced" for n in UPSTREAM), status
    unsynced_before = {n: instance.get_latest_materialization_event(dg.AssetKey(n)).run_id
                       for n in UPSTREAM}

    summary = runner.run(config=TINY, instance=instance, defs=defs, select=["clean_labels"],
                         observe_first=False)
    assert summary["checks"]["clean_labels.follows_the_review"] == "passed"
    after = pd.read_csv(decisions_path, keep_default_na=False).set_index("id")
    assert after.loc[dropped, "action"] == "keep" and after.loc[dropped, "source"] == "review"
    assert after.loc[dropped, "label"] == after.loc[dropped, "given"]
    assert after.loc[kept_id, "action"] == "relabel" and after.loc[kept_id, "label"] == new_label
    assert (after["source"] == "review").sum() == 2
    others = after.drop(index=[dropped, kept_id])
    pd.testing.assert_frame_equal(others[["action", "label"]],
                                  before.set_index("id").drop(index=[dropped, kept_id])[
                                      ["action", "label"]])
    event = instance.get_latest_materialization_event(dg.AssetKey("clean_labels"))
    metadata = event.asset_materialization.metadata
    assert metadata["n_reviewed"].value == 2
    assert metadata["review_version"].value == versions["review_file"]
    review_rows = [record.data for record in metadata["review"].records]  # a table with a schema
    assert [c.name for c in metadata["review"].schema.columns] == ["id", "auto", "review", "review_note"]
    assert "a fine image" in {row["review_note"] for row in review_rows} and len(review_rows) == 2
    assert runner.sync_status(instance, defs)["clean_labels"] == "synced"
    assert {n: instance.get_latest_materialization_event(dg.AssetKey(n)).run_id
            for n in UPSTREAM} == unsynced_before  # nothing upstream was recomputed


@pytest.mark.slow
def test_a_broken_review_is_refused_with_one_line_before_any_step(loop):
    tmp, instance, defs, review_path = loop
    review_path.write_text("id,action,label,note\nimg_nope,drop,,\n")
    runs_before = len(instance.get_runs())
    with pytest.raises(runner.RunFailed) as err:
        runner.run(config=TINY, instance=instance, defs=defs, select=["clean_labels"])
    message = str(err.value)
    assert message.startswith(f"{review_path}, line 2: unknown image id 'img_nope'")
    assert "\n" not in message
    assert len(instance.get_runs()) == runs_before  # refused by the preflight: nothing ran

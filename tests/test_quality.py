"""The quality checks: each passes on the tiny demo graph and fails on a case built to break it,
at WARN severity, saying what is wrong."""
from __future__ import annotations

import dataclasses

import dagster as dg
import pandas as pd
import pytest

from animal_assets import checks
from animal_assets.core import quality
from animal_assets.resources import DatasetResource

NAMES = [f"c{k}" for k in range(10)]


@pytest.fixture(scope="module")
def outputs(tiny_graph):
    """The tiny graph's stored outputs, loaded by key."""
    return lambda name: tiny_graph.defs.load_asset_value(name, instance=tiny_graph.instance)


def test_drop_shares_flag_a_class_that_lost_more_than_half():
    assert quality.drop_shares([100, 80], [50, 10], ["a", "b"]).passed  # exactly half is fine
    verdict = quality.drop_shares([100, 80], [10, 41], ["a", "b"])
    assert not verdict.passed
    assert verdict.description == ("1 class(es) lost more than 50% of their images to drops, "
                                   "first b: 41 of 80")
    assert verdict.table["share"].tolist() == [0.1, 0.512]


def test_class_size_ratio_ignores_absent_classes_and_flags_a_rare_one():
    assert quality.class_size_ratio([40, 20, 0], ["a", "b", "c"]).passed
    verdict = quality.class_size_ratio([40, 19, 0], ["a", "b", "c"])
    assert not verdict.passed and "smallest: b, 19 images" in verdict.description
    assert not quality.class_size_ratio([0, 0], ["a", "b"]).passed


def test_the_accuracy_floor():
    assert quality.accuracy_floor(0.9154, 0.5).passed  # the demo's val_split figure
    verdict = quality.accuracy_floor(0.42, 0.5)
    assert not verdict.passed and verdict.description.endswith("floor 0.500: below the floor")


@pytest.mark.slow
def test_no_class_mostly_dropped_on_the_graph(outputs):
    clean = outputs("clean_labels")
    result = checks.clean_labels_no_class_mostly_dropped(clean_labels=clean,
                                                         dataset=DatasetResource())
    assert result.passed, result.description
    per_class = [dict(c) for c in clean.summary["per_class"]]
    per_class[3]["dropped"] = per_class[3]["given"]  # a class the outlier step took whole
    broken = dataclasses.replace(clean, summary={**clean.summary, "per_class": per_class})
    result = checks.clean_labels_no_class_mostly_dropped(
        clean_labels=broken, dataset=DatasetResource(class_names=NAMES))
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "first c3:" in result.description
    assert isinstance(result.metadata["table"], dg.TableMetadataValue)


@pytest.mark.slow
def test_class_sizes_within_bounds_on_the_graph(outputs, tmp_path):
    train = outputs("balanced_train")
    result = checks.balanced_train_class_sizes_within_bounds(balanced_train=train,
                                                             dataset=DatasetResource())
    assert result.passed, result.description
    ids = pd.read_csv(train.train.ids_path)
    rare = pd.concat([ids[ids["label"] != 7], ids[ids["label"] == 7].head(3)])  # 7 almost gone
    rare.to_csv(tmp_path / "ids.csv", index=False)
    skewed = dataclasses.replace(train, train=dataclasses.replace(
        train.train, ids_path=str(tmp_path / "ids.csv")))
    result = checks.balanced_train_class_sizes_within_bounds(balanced_train=skewed,
                                                             dataset=DatasetResource())
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert "smallest: 7, 3 images" in result.description


@pytest.mark.slow
def test_val_accuracy_above_floor_on_the_graph(outputs):
    report = outputs("eval_report")
    assert report["min_val_balanced_accuracy"] == 0.0  # the tiny config's
    assert checks.eval_report_val_accuracy_above_floor(eval_report=report).passed
    # the default floor: one epoch on 200 images is far below it
    result = checks.eval_report_val_accuracy_above_floor(
        eval_report={**report, "min_val_balanced_accuracy": 0.5})
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["floor"].value == 0.5

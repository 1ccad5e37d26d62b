"""Tests for the classification metrics in animal_assets.core.evaluate."""
from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from animal_assets.core.evaluate import classification_report, to_markdown

# 3 classes. True counts 4 / 3 / 2; correct 3 / 1 / 2.
Y_TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2]
Y_PRED = [0, 0, 0, 1, 1, 2, 0, 2, 2]


def test_hand_computed_example():
    rep = classification_report(Y_TRUE, Y_PRED, num_classes=3, class_names=["cat", "dog", "fox"])
    assert rep["n"] == 9
    assert rep["accuracy"] == pytest.approx(6 / 9)
    assert rep["per_class_recall"] == pytest.approx([3 / 4, 1 / 3, 2 / 2])
    assert rep["balanced_accuracy"] == pytest.approx((3 / 4 + 1 / 3 + 1) / 3)
    assert rep["support"] == [4, 3, 2]
    assert rep["confusion_matrix"] == [[3, 1, 0], [1, 1, 1], [0, 0, 2]]
    assert [row["name"] for row in rep["per_class"]] == ["cat", "dog", "fox"]
    assert rep["per_class"][1] == {"name": "dog", "support": 3, "recall": pytest.approx(1 / 3)}
    json.dumps(rep)  # plain values only, ready to store or attach as metadata


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_sklearn_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, 200))
    rep = classification_report(y_true, y_pred, num_classes=5)
    assert rep["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert rep["accuracy"] == pytest.approx(float((y_true == y_pred).mean()))
    assert np.asarray(rep["confusion_matrix"]).sum() == 200
    assert rep["class_names"] == ["0", "1", "2", "3", "4"]


def test_class_without_true_examples_gets_none_and_is_left_out_of_the_mean():
    # Class 2 is predicted once but never true; class 3 appears nowhere.
    rep = classification_report([0, 0, 1, 1], [0, 2, 1, 1], num_classes=4)
    assert rep["per_class_recall"] == [0.5, 1.0, None, None]
    assert rep["balanced_accuracy"] == pytest.approx(0.75)
    assert rep["confusion_matrix"][0] == [1, 0, 1, 0]
    assert rep["confusion_matrix"][3] == [0, 0, 0, 0]


@pytest.mark.parametrize("names, sentence", [
    (None, "Recall is undefined for 2, 3: no example of those classes here"),
    (["cat", "dog", "fox", "owl"], "Recall is undefined for fox, owl: no example of those classes here"),
])
def test_markdown_marks_recall_of_a_class_without_examples_undefined(names, sentence):
    rep = classification_report([0, 0, 1, 1], [0, 2, 1, 1], num_classes=4, class_names=names)
    md = to_markdown(rep, confusion=False)
    third = "fox" if names else "2"
    assert f"| {third} | 0 | undefined |" in md and sentence in md
    assert "undefined" not in to_markdown(classification_report([0, 1], [0, 1], num_classes=2))


@pytest.mark.parametrize("kwargs,match", [
    (dict(y_true=[0, 1], y_pred=[0], num_classes=2), "y_true has 2"),
    (dict(y_true=[0, 3], y_pred=[0, 1], num_classes=2), "y_true must lie"),
    (dict(y_true=[0, 1], y_pred=[0, -1], num_classes=2), "y_pred must lie"),
    (dict(y_true=[0.0, 1.0], y_pred=[0, 1], num_classes=2), "integer"),
    (dict(y_true=[], y_pred=[], num_classes=2), "no labels"),
    (dict(y_true=[0, 1], y_pred=[0, 1], num_classes=2, class_names=["a"]), "class_names"),
])
def test_rejects_bad_input(kwargs, match):
    y_true, y_pred = kwargs.pop("y_true"), kwargs.pop("y_pred")
    with pytest.raises(ValueError, match=match):
        classification_report(y_true, y_pred, **kwargs)


@pytest.mark.parametrize("confusion", [True, False])
def test_markdown_shows_names_and_numbers(confusion):
    rep = classification_report(Y_TRUE, Y_PRED, num_classes=3, class_names=["cat", "dog", "fox"])
    md = to_markdown(rep, confusion=confusion)
    assert "balanced accuracy 0.6944" in md
    assert "| dog | 3 | 0.333 |" in md
    assert ("| cat | 3 | 1 | 0 |" in md) == confusion
    table_rows = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table_rows) == (2 + 3) + ((2 + 3) if confusion else 0)

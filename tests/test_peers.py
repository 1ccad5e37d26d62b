"""The peers the benchmark family compares the label stage with, on built cases."""
from __future__ import annotations

import numpy as np
import pytest

from animal_assets.core.family import peer_margin, peers_summary, peers_table
from animal_assets.core.synthetic import peers


def _probs(labels, sure, k=3):
    """One row per image: ``sure`` on ``labels`` and the rest spread evenly."""
    p = np.full((len(labels), k), (1 - sure) / (k - 1))
    p[np.arange(len(labels)), labels] = sure
    return p


def test_cleanlab_drop_drops_what_cleanlab_flags_and_nothing_else():
    rng = np.random.default_rng(0)
    true = np.repeat([0, 1, 2], 40)
    given = true.copy()
    wrong = rng.choice(len(true), 12, replace=False)
    given[wrong] = (true[wrong] + 1) % 3
    probs = _probs(true, 0.9)  # a probe that sees the true class
    final = peers.cleanlab_drop(given, probs)
    assert set(np.flatnonzero(final == -1)) == set(wrong)
    kept = final >= 0
    assert (final[kept] == given[kept]).all()


def test_the_anchor_drops_outliers_then_relabels_only_where_the_probe_is_sure():
    rng = np.random.default_rng(1)
    centres = np.eye(4, 16) * 10
    true = np.repeat([0, 1, 2], 34)
    features = centres[true] + rng.normal(size=(len(true), 16))
    outliers = np.arange(len(true) - 18, len(true))  # 18 of 102 (about 15 %) far from all
    features[outliers] = rng.normal(size=(18, 16)) * 0.3 + centres[3] * 3 + rng.normal(size=(18, 16)) * 8
    given = true.copy()
    given[[0, 1, 40, 41]] = [1, 1, 2, 2]  # four wrong labels among the inliers
    probs = _probs(true, 0.9)
    ones = np.flatnonzero(true == 1)
    probs[ones] = _probs(true[ones], 0.65)  # the probe less sure of class 1: drop, not relabel
    final = peers.simple_anchor(given, probs, features.astype(np.float32))
    assert (final[outliers] == -1).sum() >= 15
    assert final[0] == 0 and final[1] == 0  # sure: relabelled to the probe's class
    assert final[40] == -1 and final[41] == -1


def test_labels_are_scored_with_drops_as_errors():
    true = np.array([0, 0, 1, 1, -1])
    given = np.array([0, 1, 1, 1, 0])
    final = np.array([0, 0, -1, 1, -1])
    s = peers.score_labels(final, given, true, num_classes=2)
    assert s["label_accuracy"] == 0.75  # three of four in-distribution images right
    assert s["worst_class_change"] == pytest.approx(-0.5)  # class 1: 1.0 -> 0.5
    assert s["kept"] == 3 and s["kept_accuracy"] == 1.0


def _row(cell, seed, accuracies):
    return {"cell": cell, "seed": seed, "peers": {
        name: {"label_accuracy": a, "worst_class_change": -0.01, "kept": 100, "kept_accuracy": a}
        for name, a in zip(("raw", "cleanlab-drop", "anchor", "ours"), accuracies)}}


def test_the_peers_table_gives_our_margin_over_the_best_peer():
    rows = [_row("standard", 0, (0.70, 0.80, 0.84, 0.88)), _row("standard-imb", 1, (0.7, 0.8, 0.86, 0.85))]
    assert peer_margin(rows[0]) == pytest.approx(0.04)
    assert peer_margin(rows[1]) == pytest.approx(-0.01)
    text = peers_table(rows)
    assert text.splitlines()[2].endswith("| +0.040 |") and "0.880 / -0.010 / 100 (0.880)" in text
    summary = peers_summary(rows)
    assert "ours − best peer (anchor) on the mean +0.015" in summary
    assert summary.endswith("worst run standard-imb seed 1: -0.010")

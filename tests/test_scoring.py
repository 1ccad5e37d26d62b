"""Scores of the cleaning against a truth file, and the benchmark family's bars and table."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from animal_assets.core.family import (
    CELLS,
    EXTRA,
    GRID,
    QUICK,
    SHAPES,
    bars,
    score_cell,
    select_runs,
    table,
)
from animal_assets.core.scoring import cleaning_scores, scores_markdown


def ids(n):
    return [f"img_00000000-0000-0000-0000-{i:012d}" for i in range(n)]


@pytest.fixture
def scored():
    # true classes 0,0,0,1,1 and one OOD image; given 0,1,0,1,0 and 1 for the OOD one
    names = ids(6)
    true = [0, 0, 0, 1, 1, -1]
    given = [0, 1, 0, 1, 0, 1]
    final = [0, 0, -1, 1, 0, -1]  # one flip undone, one clean image dropped, one flip kept
    action = ["keep", "relabel", "drop", "keep", "keep", "drop"]
    reason = ["", "label_issue", "label_issue", "", "", "ood"]
    decisions = pd.DataFrame({"id": names, "given": given, "label": final, "action": action,
                              "reason": reason, "ood_score": [0.1, 0.2, 0.3, 0.1, 0.2, 0.9]})
    truth = {i: {"true": t, "given": g, "kind": "ood" if t < 0 else ("clean" if t == g else "flipped")}
             for i, t, g in zip(names, true, given)}
    return score_cell(decisions, np.array([False] * 5 + [True]), truth)


def test_per_class_accuracy_counts_drops_as_errors(scored):
    assert scored["per_class"]["raw"] == pytest.approx([2 / 3, 1 / 2])
    assert scored["per_class"]["cleaned"] == pytest.approx([2 / 3, 1 / 2])
    assert scored["label_accuracy"]["cleaned"] == pytest.approx(3 / 5)
    assert scored["ood_share"] == pytest.approx({"flagged": 1 / 6, "true": 1 / 6})
    assert scored["truth_prior"] == pytest.approx([0.6, 0.4])
    np.testing.assert_allclose(scored["truth_transition"], [[2 / 3, 1 / 3], [1 / 2, 1 / 2]])
    assert scored["ood"]["auroc"] == 1.0


def test_markdown_puts_estimates_beside_the_truth(scored):
    md = scores_markdown(scored, class_names=["cat", "dog"],
                         estimated={"prior": [0.55, 0.45], "transition": [[0.7, 0.3], [0.4, 0.6]]})
    assert "| cat | 0.667 → 0.667 | 0.600 | 0.550 | 0.333 | 0.300 |" in md
    assert "OOD share flagged / true | 0.167 / 0.167" in md
    # the full noise matrix, true / estimated, rows true classes and columns given labels
    assert "| true \\ given | cat | dog |" in md
    assert "| cat | 0.67 / 0.70 | 0.33 / 0.30 |" in md
    assert "| dog | 0.50 / 0.40 | 0.50 / 0.60 |" in md


def test_bars_and_table(scored):
    row = {**scored, "cell": "standard", "seed": 0, "class_names": ["cat", "dog"],
           "seconds": {"total": 1.0}}
    row["bars"] = bars(row, CELLS["standard"])
    # 0.6 -> 0.6 removes none of the errors; no class lost; AUROC 1; below the absolute 0.88
    assert row["bars"] == {"accuracy": False, "classes": True, "auroc": True, "absolute": False}
    text = table([row])
    assert "**standard** (worst)" in text and "FAIL accuracy, absolute" in text


def test_the_grid_has_sixteen_distinct_cells_within_the_noise_cap():
    from animal_assets.core.synthetic.spec import settings_from_dict

    assert len(GRID) == 16 and len({c.name for c in GRID}) == 16 and len(EXTRA) == 2
    for cell in GRID + EXTRA:
        for seed in (0, 1):
            spec = settings_from_dict(cell.spec, seed=seed, where=cell.name)[0].spec
            rates = spec.pair_rates(6) + spec.symmetric_flip_rate
            assert rates.max() <= 0.45 + 1e-9, cell.name


def test_the_shapes_build_junk_that_is_half_animals_and_stay_out_of_the_baseline():
    from animal_assets.core.synthetic.spec import settings_from_dict

    junk, little = SHAPES
    settings, cap = settings_from_dict(junk.spec, seed=0, where=junk.name)
    animals = {"bird", "frog"}
    assert not animals & set(settings.in_classes) and animals < set(settings.ood_classes)
    vehicles = set(settings.ood_classes) - animals
    assert 2 * cap == 500 * len(vehicles)  # 2 x 1,000 animals against 4 x 500 vehicles
    assert settings.spec.pair_rates(4).tolist() == [0.30] * 4
    assert little.name == "bal-asym35-10-sym00-ood03" and little.spec["ood_fraction"] == 0.03
    assert [c.name for c, _ in select_runs("shapes", "0")] == [junk.name, little.name]
    assert not {c.name for c in SHAPES} & {c.name for c, _ in select_runs("all", "0")}


def test_the_quick_preset_is_six_runs_of_the_full_grid_unchanged():
    full = [(cell.name, seed) for cell, seed in select_runs("all", "0,1")]
    assert len(full) == 36 and len(set(full)) == 36
    quick = [(cell.name, seed) for cell, seed in select_runs(preset="quick")]
    assert quick == list(QUICK) and len(set(quick)) == 6 and set(quick) <= set(full)
    assert {cell.spec is CELLS[cell.name].spec for cell, _ in select_runs(preset="quick")} == {True}
    named = select_runs("standard,bal-pair30-sym00-ood05", "1,0")
    assert [(c.name, s) for c, s in named] == [("standard", 1), ("standard", 0),
                                               ("bal-pair30-sym00-ood05", 1),
                                               ("bal-pair30-sym00-ood05", 0)]


def test_unknown_cells_and_presets_are_refused():
    with pytest.raises(ValueError, match=r"unknown cells \['nope'\]"):
        select_runs("standard,nope", "0")
    with pytest.raises(ValueError, match="unknown preset 'slow'"):
        select_runs(preset="slow")


def test_the_family_refuses_fewer_than_one_run_at_a_time(tmp_path, capsys):
    from animal_assets.core.family import main

    with pytest.raises(SystemExit) as err:
        main([str(tmp_path / "src"), str(tmp_path / "work"), "--parallel", "0"])
    assert err.value.code == 2 and "--parallel must be >= 1, got 0" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()


def test_one_cell_runs_the_stages_and_reads_the_cache_the_second_time(tmp_path):
    """A tiny class tree through the stages up to clean_labels (near_duplicates included); run
    again beside another seed in two processes, it reads its features from the shared cache and
    gives the same figures."""
    from animal_assets.core.config import params_from_run_config
    from animal_assets.core.family import Cell, run_cell, run_rows
    from tests.test_benchmark import make_tree

    names = ("a", "b", "c", "d")
    src = make_tree(tmp_path / "tree", {"a": 30, "b": 25, "c": 20, "d": 15, "x": 12, "y": 12},
                    {k: 2 for k in names})
    cell = Cell(name="tiny", spec={"in_classes": list(names), "ood_classes": ["x", "y"],
                                   "pairs": [[0, 1]], "pair_flip_rate": 0.2, "ood_fraction": 0.1})
    params = params_from_run_config({"ops": {
        "embeddings": {"config": {"image_size": 64, "stages": False, "precision": "fp32"}},
        "ood_scores": {"config": {"refine_rounds": 0}},
        "clean_labels": {"config": {"probe_c": 0.1, "n_folds": 2}},
    }})
    first = run_cell(src, cell, 0, tmp_path / "work", params=params, cache_dir=tmp_path / "cache")
    # the same run again and another seed, side by side in two processes (--parallel 2)
    again, other = run_rows([(src, cell, seed, tmp_path / "work", params, tmp_path / "cache", "cpu", False)
                             for seed in (0, 1)], parallel=2)
    assert first["seconds"]["n_embedded"] == first["n"] > 0
    assert again["seconds"]["n_embedded"] == 0  # every image read from the cache
    assert (again["cell"], again["seed"], other["seed"]) == ("tiny", 0, 1)
    # the figures do not depend on the process or its share of the cores
    assert {k: v for k, v in again.items() if k != "seconds"} == \
        {k: v for k, v in first.items() if k != "seconds"}
    assert other["n"] > 0 and other["label_accuracy"] != first["label_accuracy"]
    steps = ("build", "read_and_embed", "ood_scores", "near_duplicates", "clean_labels")
    assert all(again["seconds"][k] >= 0 for k in steps)
    assert sum(again["seconds"][k] for k in steps) <= again["seconds"]["total"] + 0.2
    assert again["label_accuracy"] == first["label_accuracy"]
    assert set(first["bars"]) == {"accuracy", "classes", "auroc"}
    assert len(first["per_class"]["raw"]) == 4 and first["class_names"] == list(names)
    assert not (tmp_path / "work" / "tiny" / "seed0").exists()  # outputs removed unless kept
    # the peers, scored alike; ours is the stage's own decisions
    peers = first["peers"]
    assert list(peers) == ["raw", "cleanlab-drop", "anchor", "ours"]
    assert peers["ours"]["label_accuracy"] == pytest.approx(first["label_accuracy"]["cleaned"])
    assert peers["raw"]["label_accuracy"] == pytest.approx(first["label_accuracy"]["raw"])
    assert peers["raw"]["worst_class_change"] == 0.0 and peers["raw"]["kept"] == first["n"]
    assert peers["anchor"]["kept"] <= round(0.85 * first["n"]) + 1  # its 15 % outliers dropped
    assert again["peers"] == peers


def test_per_class_lists_have_one_entry_per_class_even_when_one_is_absent(scored):
    names = ids(2)
    decisions = pd.DataFrame({"id": names, "given": [0, 1], "label": [0, 1], "action": ["keep"] * 2,
                              "reason": [""] * 2, "ood_score": [0.1, 0.2]})
    truth = {i: {"true": k, "given": k, "kind": "clean"} for i, k in zip(names, (0, 1))}
    out = cleaning_scores(decisions, truth, num_classes=3)
    assert len(out["per_class"]["raw"]) == 3 and np.isnan(out["per_class"]["raw"][2])
    assert "| c | nan → nan |" in scores_markdown(out, class_names=["a", "b", "c"])

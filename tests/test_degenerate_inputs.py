"""Degenerate datasets meet the user as one clear line or a named class, never a bare traceback.

An empty dataset stops the run with one line naming the input; a class of K without any image
runs through to the report, where its recall is undefined; a class of one image against 10,000
stops at the validation split with a line naming the class and the rule; and the command line
prints a broken dataset's failing check and file as one ``animal-assets:`` line on stderr.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from animal_assets import runner
from animal_assets.core.ds801 import encode_jpeg, new_image_id, write_ds801
from tests.fixtures import cli_in_process, image_paths, make_dataset
from tests.graph import TINY, make_defs, sqlite_instance

UP_TO_VAL = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "clean_labels",
             "near_duplicates", "val_split"]


def _coloured(counts: list[int], *, num_classes: int, seed: int) -> list[tuple[str, bytes, int]]:
    """DS801 items: ``counts[k]`` noisy images of class k, each class its own colour, so the
    probe separates the classes and the cleaning keeps most labels; each image has a pattern of
    its own (random 8x8 blocks), so no two are near-copies."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(60, 196, (num_classes, 3))
    items = []
    for k, n in enumerate(counts):
        for _ in range(n):
            blocks = np.repeat(np.repeat(rng.normal(0, 40, (8, 8, 1)), 8, axis=0), 8, axis=1)
            pixels = np.clip(colours[k] + blocks + rng.normal(0, 10, (64, 64, 3)), 0, 255).astype(np.uint8)
            items.append((new_image_id(rng), encode_jpeg(pixels), k))
    return items


def _blocky(n: int, label: int, rng: np.random.Generator) -> list[tuple[str, bytes, int]]:
    """``n`` distinct, cheap 64x64 JPEGs (8x8 random blocks: about 1.4 KB each)."""
    items = []
    for _ in range(n):
        blocks = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        pixels = np.repeat(np.repeat(blocks, 8, axis=0), 8, axis=1)
        items.append((new_image_id(rng), encode_jpeg(pixels, quality=90), label))
    return items


def _metadata(instance: dg.DagsterInstance, asset: str) -> dict:
    event = instance.get_latest_materialization_event(dg.AssetKey(asset))
    return {k: v.value for k, v in event.asset_materialization.metadata.items()}


def test_an_empty_dataset_stops_the_run_with_one_line_naming_it(tmp_path):
    folder = write_ds801(tmp_path / "empty", [], num_classes=2)
    assert (folder / "data-labels.json").read_text().strip() == "{}"
    assert not list((folder / "imgs").iterdir())
    instance = sqlite_instance(tmp_path)
    with pytest.raises(runner.RunFailed) as err:
        runner.run(config=TINY, instance=instance, defs=make_defs(tmp_path, str(folder)),
                   select=["raw_images"])
    assert str(err.value) == (
        f"step raw_images failed: {folder.resolve()}: holds neither images nor label entries"
    )
    assert instance.get_latest_materialization_event(dg.AssetKey("raw_images")) is None


@pytest.mark.slow
def test_a_class_without_images_runs_on_and_its_recall_is_undefined(tmp_path):
    folder = write_ds801(tmp_path / "ds", _coloured([30, 30, 0], num_classes=3, seed=5),
                         num_classes=3)
    instance = sqlite_instance(tmp_path)
    summary = runner.run(config=TINY, instance=instance, defs=make_defs(tmp_path, str(folder)))
    assert all(v == "passed" for v in summary["checks"].values()), summary["checks"]

    raw = _metadata(instance, "raw_images")
    assert raw["num_classes"] == 3 and raw["empty_classes"] == [2]
    assert raw["counts_per_class"] == {"0": 30, "1": 30, "2": 0}
    val = _metadata(instance, "val_split")
    assert val["empty_classes"] == [2] and "classes [2] have no images" in val["warning"]
    assert "recall is undefined" in val["warning"]
    per_class = val["counts_per_class"]
    assert per_class[2] == 0 and per_class[0] == per_class[1] == 3
    assert _metadata(instance, "balanced_train")["counts_after"][2] == 0

    report = json.loads(Path(summary["report_path"]).read_text())["val_split"]
    assert report["per_class_recall"][2] is None and report["support"] == [3, 3, 0]
    assert all(r is not None for r in report["per_class_recall"][:2])
    markdown = _metadata(instance, "eval_report")["report"]
    assert "| 2 | 0 | undefined |" in markdown and "Recall is undefined for 2" in markdown


@pytest.mark.slow
def test_one_image_against_ten_thousand_stops_at_val_split_naming_the_class(tmp_path):
    rng = np.random.default_rng(11)
    folder = write_ds801(tmp_path / "ds", _blocky(10_000, 0, rng) + _blocky(1, 1, rng),
                         num_classes=2)
    config = {"ops": {
        **TINY["ops"], "embeddings": {"config": {"image_size": 32, "batch_size": 256, "stages": False}},
    }}
    instance = sqlite_instance(tmp_path)
    with pytest.raises(runner.RunFailed) as err:
        runner.run(config=config, instance=instance, defs=make_defs(tmp_path, str(folder)),
                   select=UP_TO_VAL)
    message = str(err.value)
    assert message.startswith("step val_split failed: split.py: classes [1] have too few "
                              "trustworthy images for a validation set: class 1 has ")
    assert re.search(r"class 1 has [0-4] trustworthy images? \(1 given, \d+ after cleaning\)", message)
    assert "with max_fraction 0.2 a class needs at least 5" in message and "\n" not in message

    evaluations = err.value.result.get_asset_check_evaluations()
    # the four format checks of raw_images, the review and drop-share checks of clean_labels,
    # the test-set check of near_duplicates (no test set: passed)
    assert len(evaluations) == 7 and all(e.passed for e in evaluations)
    raw = _metadata(instance, "raw_images")
    assert raw["counts_per_class"] == {"0": 10_000, "1": 1} and raw["empty_classes"] == []
    for asset in ["embeddings", "ood_scores", "clean_labels"]:
        assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is not None
    assert instance.get_latest_materialization_event(dg.AssetKey("val_split")) is None


def _rename_one_image(folder: Path) -> str:
    victim = image_paths(folder)[0]
    bad = victim.with_name(victim.name.replace("img_", "IMG_"))
    victim.rename(bad)
    return f"imgs/{bad.name}"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["bad_name", "empty"])
def test_the_command_line_prints_one_line_naming_the_check_or_step_and_the_file(tmp_path, case):
    if case == "bad_name":
        folder = make_dataset(tmp_path, n=6, k=2)
        named = _rename_one_image(folder)
        expected = ("animal-assets: check raw_images.filenames_follow_rule failed: ", named,
                    "(rule filename)")
    else:
        folder = write_ds801(tmp_path / "empty", [], num_classes=2)
        expected = ("animal-assets: step raw_images failed: ", str(folder.resolve()),
                    "holds neither images nor label entries")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = cli_in_process(tmp_path, home, "run", "--dataset", str(folder),
                          "--output", str(tmp_path / "out"), "--select", "raw_images")
    assert proc.returncode == 1, proc.stderr[-2000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("animal-assets:")]
    assert len(ours) == 1 and proc.stderr.rstrip("\n").endswith(ours[0]), proc.stderr[-2000:]
    assert ours[0].startswith(expected[0]) and all(part in ours[0] for part in expected[1:])
    assert "Traceback (most recent call last)" not in proc.stderr
    assert proc.stdout == ""

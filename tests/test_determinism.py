"""The same input, seed and config give byte-identical exports and the same decisions across two
separate materializations, each on its own Dagster instance and into its own output folder (the
first is the session's whole tiny graph, the second runs up to the exports)."""
from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from animal_assets import runner
from animal_assets.core.export import ZIP_DATE_TIME
from tests.fixtures import tree_hashes
from tests.graph import TINY, make_defs, sqlite_instance

# everything up to the deliverable; training is not part of the exports compared here
THROUGH_EXPORTS = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "clean_labels",
                   "near_duplicates", "val_split", "balanced_train"]


@pytest.fixture(scope="module")
def two_runs(tiny_graph, tmp_path_factory):
    """The session's tiny graph and a second materialization of the same input into an output
    folder and instance of its own; returns both output roots."""
    dataset = tiny_graph.dataset
    before = tree_hashes(dataset)
    run_dir = tmp_path_factory.mktemp("determinism")
    truth = tiny_graph.defs.resources["dataset"].truth_path
    summary = runner.run(config=TINY, instance=sqlite_instance(run_dir),
                         defs=make_defs(run_dir, str(dataset), truth=truth), select=THROUGH_EXPORTS)
    assert all(v == "passed" for v in summary["checks"].values()), summary["checks"]
    assert tree_hashes(dataset) == before
    return [tiny_graph.tmp / "out", run_dir / "out"]


@pytest.mark.parametrize("rel", [
    "val_split/ds801",
    "balanced_train/train/ds801",
    "balanced_train/ds801-clean.zip",
    "val_split",  # the arrays and ids.csv the trainer reads, too
    "balanced_train",
    "clean_labels/decisions.csv",
    "ood_scores/ood_scores.csv",
    "embeddings/embeddings.npy",
    "raw_images/manifest.csv",
    "raw_images/images.npy",
    "raw_images/files",
])
def test_outputs_are_byte_identical(two_runs, rel):
    first, second = (tree_hashes(out / rel) for out in two_runs)
    assert first == second
    files = [k for k, v in first.items() if v != "dir"]
    assert files, f"{rel}: nothing was written"


def test_the_decisions_are_the_same(two_runs):
    first, second = (pd.read_csv(out / "clean_labels" / "decisions.csv", keep_default_na=False)
                     for out in two_runs)
    assert len(first) > 100
    columns = ["id", "action", "label", "reason"]
    pd.testing.assert_frame_equal(first[columns], second[columns])
    # the demo's noise gives every kind of decision, so this compares more than a copy of the input
    assert set(first["action"]) == {"keep", "relabel", "drop"}


def test_the_zip_holds_fixed_times_and_the_exported_bytes(two_runs):
    out = two_runs[0] / "balanced_train"
    with zipfile.ZipFile(out / "ds801-clean.zip") as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        assert {i.date_time for i in infos} == {ZIP_DATE_TIME}
        assert zf.testzip() is None
        members = {i.filename: hashlib.sha256(zf.read(i)).hexdigest() for i in infos}
    exported = {f"train/{k}": v for k, v in tree_hashes(out / "train" / "ds801").items() if v != "dir"}
    exported |= {f"val/{k}": v for k, v in tree_hashes(two_runs[0] / "val_split" / "ds801").items()
                 if v != "dir"}
    assert members == exported
    assert any(Path(name).suffix == ".jpg" for name in members)

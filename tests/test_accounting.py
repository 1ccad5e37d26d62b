"""Every input file is accounted for exactly once: kept, relabeled, dropped or quarantined.

The tiny demo (which already holds outliers, flipped labels and conflicting duplicates) gets one
more of each format problem, the graph runs under ``format_policy: quarantine``, and every file
of the input must end up in exactly one outcome, with the reason of each planted problem; the
input folder is left byte-for-byte as it was.
"""
from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from animal_assets import runner
from animal_assets.core.synthetic.demo import make_demo_dataset
from animal_assets.core.ds801 import LABELS_FILE, new_image_id
from animal_assets.core.ingest import read_manifest
from animal_assets.core.truth import read_truth
from tests.fixtures import image_bytes, tree_hashes
from tests.graph import TINY, make_defs, sqlite_instance

THROUGH_EXPORTS = ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores", "clean_labels",
                   "near_duplicates", "val_split", "balanced_train"]
QUARANTINE = {"ops": {**TINY["ops"], "raw_images": {"config": {"format_policy": "quarantine"}}}}


def _plant_problems(folder: Path, truth: dict) -> tuple[dict[str, str], dict[str, str]]:
    """Break the DS801 folder in place, one problem per file.

    Returns the expected quarantine reason per file (path inside the dataset) and the planted
    conflicting duplicate pair (path of the original and of its copy).
    """
    import numpy as np

    rng = np.random.default_rng(7)
    labels = json.loads((folder / LABELS_FILE).read_text())
    # only images the demo left clean, so no planted problem hides behind the demo's own noise
    stems = [s for s in sorted(labels) if truth[s]["kind"] == "clean"]
    imgs = folder / "imgs"
    expected: dict[str, str] = {}

    def image(i: int) -> Path:
        return imgs / f"{stems[i]}.jpg"

    def label_entry(i: int, value, rule: str = "label_one_hot") -> None:
        labels[stems[i]] = value
        expected[f"imgs/{stems[i]}.jpg"] = rule

    # file names
    renamed = imgs / f"IMG_{stems[0][4:]}.jpg"
    image(0).rename(renamed)
    labels[renamed.stem] = labels.pop(stems[0])
    expected[f"imgs/{renamed.name}"] = "filename"
    image(1).rename(imgs / f"{stems[1]}.jpeg")  # its label entry is left without an image
    expected[f"imgs/{stems[1]}.jpeg"] = "filename"
    (imgs / "Thumbs.db").write_bytes(b"\0" * 64)
    expected["imgs/Thumbs.db"] = "filename"
    (folder / "README.txt").write_text("notes\n")
    expected["README.txt"] = "unexpected_file"
    # labels
    hot = [0] * 10
    label_entry(2, [1, 1] + hot[2:])
    label_entry(3, [True] + [False] * 9)
    label_entry(4, [1.0] + [0.0] * 9)
    label_entry(5, [1] + hot[1:9], "label_length")
    label_entry(6, {"class": 3})
    del labels[stems[7]]
    expected[f"imgs/{stems[7]}.jpg"] = "image_has_label"
    labels[new_image_id(rng)] = [0, 1] + hot[2:]  # a label without an image: no file, no outcome
    # pixels
    image(8).write_bytes(image(8).read_bytes()[:300])
    image(9).write_bytes(image_bytes(9, fmt="PNG"))
    image(10).write_bytes(image_bytes(10, size=(63, 64)))
    image(11).write_bytes(b"")
    image(12).write_bytes(image_bytes(12, mode="L"))
    expected |= {f"imgs/{stems[i]}.jpg": "image_decodes" for i in range(8, 13)}
    # a conflicting duplicate: the same bytes under a new name with another label
    copy = new_image_id(rng)
    shutil.copyfile(image(20), imgs / f"{copy}.jpg")
    given = labels[stems[20]].index(1)
    labels[copy] = [int(k == (given + 1) % 10) for k in range(10)]
    # a duplicate key, written as raw JSON text since a dict cannot hold one
    pairs = [(key, labels[key]) for key in sorted(labels)]
    pairs.append((stems[13], labels[stems[13]]))
    expected[f"imgs/{stems[13]}.jpg"] = "label_duplicate_key"
    text = "{" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in pairs) + "}\n"
    (folder / LABELS_FILE).write_text(text)
    return expected, {"original": f"imgs/{stems[20]}.jpg", "copy": f"imgs/{copy}.jpg"}


@pytest.fixture(scope="module")
def accounted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accounting")
    demo = make_demo_dataset(tmp / "demo", seed=0, size="tiny")
    dataset = tmp / "input"
    shutil.copytree(demo.dataset_dir, dataset)
    expected, pair = _plant_problems(dataset, read_truth(demo.truth_path))
    before = tree_hashes(dataset)
    summary = runner.run(config=QUARANTINE, instance=sqlite_instance(tmp),
                         defs=make_defs(tmp, str(dataset)), select=THROUGH_EXPORTS)
    out = tmp / "out"
    # the labels file is what the other files are checked against, not an item of its own
    files = sorted(p.relative_to(dataset).as_posix() for p in dataset.rglob("*")
                   if p.is_file() and p != dataset / LABELS_FILE)
    return {
        "summary": summary, "out": out, "dataset": dataset, "expected": expected, "pair": pair,
        "before": before, "after": tree_hashes(dataset), "files": files,
        "manifest": read_manifest(out / "raw_images" / "manifest.csv"),
        "decisions": pd.read_csv(out / "clean_labels" / "decisions.csv", keep_default_na=False),
    }


def _outcomes(acc: dict) -> dict[str, str]:
    """The outcome of every input file, from the manifest and the cleaning decisions."""
    manifest, decisions = acc["manifest"], acc["decisions"]
    action = dict(zip(decisions["id"], decisions["action"]))
    names = {"keep": "kept", "relabel": "relabeled", "drop": "dropped"}
    rows = manifest[manifest["file"] != ""]
    return {f: ("quarantined" if status != "ok" else names[action[i]])
            for f, i, status in zip(rows["file"], rows["id"], rows["status"])}


def test_the_run_quarantines_and_warns_instead_of_blocking(accounted):
    checks = accounted["summary"]["checks"]
    for name in ["raw_images.filenames_follow_rule", "raw_images.labels_are_one_hot",
                 "raw_images.images_and_labels_pair_up", "raw_images.decode_as_64x64_rgb"]:
        assert checks[name].startswith("failed (WARN)"), (name, checks[name])
    for name in ["val_split.export_follows_format", "balanced_train.export_follows_format",
                 "balanced_train.shares_nothing_with_val_split"]:
        assert checks[name] == "passed"


def test_every_input_file_has_exactly_one_outcome(accounted):
    manifest, decisions, files = accounted["manifest"], accounted["decisions"], accounted["files"]
    listed = manifest.loc[manifest["file"] != "", "file"].tolist()
    assert sorted(listed) == files and len(set(listed)) == len(listed)
    ok_ids = manifest.loc[manifest["status"] == "ok", "id"].tolist()
    assert len(set(ok_ids)) == len(ok_ids)
    assert decisions["id"].tolist() == ok_ids  # the same images, in the same order
    counts = Counter(_outcomes(accounted).values())
    assert set(counts) == {"kept", "relabeled", "dropped", "quarantined"}, counts
    assert sum(counts.values()) == len(files) > 200
    assert counts["quarantined"] == len(accounted["expected"])


def test_each_planted_problem_is_quarantined_with_its_reason(accounted):
    manifest = accounted["manifest"]
    rows = manifest[manifest["file"] != ""].set_index("file")
    reasons = {f: rows.at[f, "reason"] for f in rows.index if rows.at[f, "status"] != "ok"}
    assert reasons == accounted["expected"]
    assert set(manifest.loc[manifest["status"] == "ok", "reason"]) == {""}
    # the label entries without an image are listed, but they are not files
    unpaired = manifest[manifest["file"] == ""]
    assert len(unpaired) == 2 and set(unpaired["status"]) == {"quarantined"}
    assert set(unpaired["reason"]) == {"label_has_image"}


def test_the_conflicting_duplicate_is_decided_once(accounted):
    manifest, decisions = accounted["manifest"], accounted["decisions"]
    ids = manifest.set_index("file").loc[[accounted["pair"]["original"], accounted["pair"]["copy"]], "id"]
    rows = decisions.set_index("id").loc[ids]
    assert rows["sha256"].nunique() == 1 and rows["dup_group"].nunique() == 1
    assert sorted(rows["reason"]) == ["duplicate", "duplicate_conflict"]
    assert (rows["action"] == "drop").sum() == 1
    # and the demo's own conflicting duplicates are found as well
    assert (decisions["reason"] == "duplicate_conflict").sum() >= 2


def test_kept_images_are_exported_and_nothing_else(accounted):
    out, outcomes = accounted["out"], _outcomes(accounted)
    manifest = accounted["manifest"].set_index("file")
    by_outcome: dict[str, set[str]] = {}
    for file, outcome in outcomes.items():
        by_outcome.setdefault(outcome, set()).add(manifest.at[file, "id"])
    train = pd.read_csv(out / "balanced_train" / "train" / "ids.csv")
    val = pd.read_csv(out / "val_split" / "ids.csv")
    originals = set(train.loc[~train["generated"], "id"]) | set(val["id"])
    assert originals == by_outcome["kept"] | by_outcome["relabeled"]
    assert set(train["source_id"]) <= originals


def test_the_input_is_unchanged(accounted):
    assert accounted["after"] == accounted["before"]
    assert accounted["before"]["README.txt"] and "data-labels.json" in accounted["before"]

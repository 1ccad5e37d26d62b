"""The tiny graph the tests share: its run config, definitions on a temporary instance, one
materialization for the whole session (``tiny_graph`` in ``conftest.py``) and copies of it for
the tests that change what they run on."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from animal_assets import runner
from animal_assets.assets import PIPELINE_ASSETS
from animal_assets.core.synthetic.demo import make_demo_dataset
from animal_assets.definitions import build_defs
from animal_assets.resources import DatasetResource, DeviceResource, StorageResource

NAMES = [a.key.to_user_string() for a in PIPELINE_ASSETS]
TINY = {"ops": {
    "embeddings": {"config": {"image_size": 64, "batch_size": 64}},
    "ood_scores": {"config": {"fraction": 0.06}},
    # the probe strength that the search (tests/test_pipeline.py runs it) picks on the tiny set
    "clean_labels": {"config": {"n_folds": 3, "probe_c": 0.005}},
    "val_split": {"config": {"per_class": 3}},
    "resnet34_model": {"config": {"epochs": 1, "batch_size": 32, "max_lr": 0.05}},
    # one epoch on 200 images learns next to nothing: no floor under its accuracy
    "eval_report": {"config": {"min_val_balanced_accuracy": 0.0}},
    # one more training (raw) beside resnet34_model's own (full); every recipe is trained by
    # tests/test_ablation.py
    "ablation_report": {"config": {"recipes": ["raw", "full"], "seeds": [0]}},
}}


def make_defs(tmp_path: Path, dataset: str = "", *, truth: str = "", assets=None,
              shards: int = 1) -> dg.Definitions:
    return build_defs({
        "storage": StorageResource(root=str(tmp_path / "out")),
        "dataset": DatasetResource(path=dataset, truth_path=truth, demo_size="tiny"),
        "compute": DeviceResource(device="cpu"),
    }, assets=assets, shards=shards)


def sqlite_instance(tmp_path: Path) -> dg.DagsterInstance:
    home = tmp_path / "dagster_home"
    home.mkdir(exist_ok=True)
    return dg.DagsterInstance.local_temp(str(home))


@dataclass(frozen=True)
class TinyGraph:
    """A materialized tiny graph: its folder (``out``, ``input``, ``demo``, ``dagster_home``),
    instance, definitions, input dataset and run summary."""

    tmp: Path
    instance: dg.DagsterInstance
    defs: dg.Definitions
    dataset: Path
    summary: dict

    def __iter__(self):  # tmp, instance, defs, dataset, summary = graph
        return iter((self.tmp, self.instance, self.defs, self.dataset, self.summary))


def _truth(tmp: Path) -> Path:
    return next((tmp / "demo").rglob("truth.json"))


def materialize_tiny(tmp: Path) -> TinyGraph:
    """The tiny demo dataset copied to ``tmp/input``, the whole graph materialized once; the run
    summary is kept as ``tmp/summary.json`` (see :func:`open_tiny`)."""
    demo = make_demo_dataset(tmp / "demo", seed=0, size="tiny")
    dataset = tmp / "input"
    shutil.copytree(demo.dataset_dir, dataset)
    instance = sqlite_instance(tmp)
    defs = make_defs(tmp, str(dataset), truth=str(demo.truth_path))
    summary = runner.run(config=TINY, instance=instance, defs=defs)
    partial = tmp / "summary.json.partial"
    partial.write_text(json.dumps(summary))
    partial.replace(tmp / "summary.json")
    graph = open_tiny(tmp)
    assert graph.summary == summary, "the run summary does not survive JSON"
    return graph


def open_tiny(tmp: Path) -> TinyGraph | None:
    """The tiny graph that :func:`materialize_tiny` left in ``tmp``, opened on a new instance
    object (None: not there, or not finished)."""
    if not (tmp / "summary.json").is_file():
        return None
    dataset = tmp / "input"
    defs = make_defs(tmp, str(dataset), truth=str(_truth(tmp)))
    summary = json.loads((tmp / "summary.json").read_text())
    return TinyGraph(tmp, sqlite_instance(tmp), defs, dataset, summary)


def fork(graph: TinyGraph, dest: Path) -> TinyGraph:
    """A copy of ``graph`` at ``dest``: its instance (runs, events, stored outputs), output
    folder and input, with definitions over the copies. A test may change it freely."""
    shutil.copytree(graph.tmp, dest, symlinks=True, dirs_exist_ok=True)
    dataset = dest / graph.dataset.relative_to(graph.tmp)
    truth = _truth(dest)
    return TinyGraph(dest, sqlite_instance(dest), make_defs(dest, str(dataset), truth=str(truth)),
                     dataset, graph.summary)

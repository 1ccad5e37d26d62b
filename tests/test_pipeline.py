"""The dagster-free runner: the same stage table as the graph, the same outputs, on a machine
without dagster."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.synthetic.demo import make_demo_dataset
from animal_assets.core.ablation import RECIPES
from animal_assets.core.pipeline import main
from tests.graph import NAMES, TINY

REPO = Path(__file__).resolve().parents[1]


def test_core_modules_import_without_dagster():
    code = (
        "import sys; sys.modules['dagster'] = None\n"
        "import pkgutil, importlib, animal_assets.core as core\n"
        "names = [m.name for m in pkgutil.iter_modules(core.__path__)]\n"
        "for n in names: importlib.import_module('animal_assets.core.' + n)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) >= 15


def test_the_code_uses_no_private_api_of_torch_or_dagster():
    """A private op or module (``torch.ops.*``, ``torch._x``, ``dagster._x``) breaks on the next
    upgrade without a word."""
    import re

    private = re.compile(r"\b(?:torch\.ops\.|torch\._[a-z]|dagster\._[a-z])")
    found = [f"{path.relative_to(REPO)}:{n}" for folder in ("animal_assets", "benchmarks", "tests")
             for path in sorted((REPO / folder).rglob("*.py")) if path.name != Path(__file__).name
             for n, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert found == []


def _files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def test_the_dagster_free_runner_makes_what_the_graph_made(tiny_graph, tmp_path):
    """Both runners run the stage table: on the graph's input and run config the dagster-free
    runner writes the same decisions, the same exports, the same pictures and the same report
    figures; its ablation trains every recipe, scored on the same validation images."""
    graph_out = tiny_graph.tmp / "out"
    truth = next((tiny_graph.tmp / "demo").rglob("truth.json"))
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    summary_path = tmp_path / "run.json"
    out = tmp_path / "out"
    code = main([
        str(tiny_graph.dataset), "--out", str(out), "--config", str(config), "--device", "cpu",
        "--truth", str(truth), "--test-set", str(tiny_graph.dataset), "--json", str(summary_path),
        "--ablation", "all", "--ablation-seeds", "0", "--ablation-epochs", "1",
    ])
    assert code == 0
    for name in ("clean_labels/decisions.csv", "clean_labels/auto/decisions.csv",
                 "clean_labels/review_template.csv", "ood_scores/ood_scores.csv",
                 "balanced_train/ds801-clean.zip"):
        assert (out / name).read_bytes() == (graph_out / name).read_bytes(), name
    assert _files(out / "val_split" / "ds801") == _files(graph_out / "val_split" / "ds801")
    def pictures(folder: Path) -> set[str]:
        return {str(f.relative_to(folder)) for f in folder.glob("*/*") if f.suffix in (".png", ".jpg")}

    # the same pictures beside each stage's outputs, and those of the test set
    test_set = {"eval_report/confusion_test_set.png", "ablation_report/test_balanced_accuracy.png"}
    assert pictures(out) - test_set == pictures(graph_out) and len(pictures(graph_out)) >= 8
    ours = json.loads((out / "eval_report" / "report.json").read_text())
    theirs = json.loads((graph_out / "eval_report" / "report.json").read_text())
    assert ours["val_split"] == theirs["val_split"] and ours["cleaning"]["label_issues"]
    assert {k: v for k, v in ours["cleaning"].items() if k != "truth_path"} == \
        {k: v for k, v in theirs["cleaning"].items() if k != "truth_path"}
    ablation = json.loads((out / "ablation_report" / "ablation.json").read_text())
    graph_ablation = json.loads((graph_out / "ablation_report" / "ablation.json").read_text())
    for recipe, figures in graph_ablation["recipes"].items():  # the graph's: raw and full, 1 epoch
        assert ablation["recipes"][recipe]["val_balanced_accuracy"] == figures["val_balanced_accuracy"]
    assert list(ablation["recipes"]) == list(RECIPES) and len(ablation["runs"]) == len(RECIPES)
    n = {r: e["n_train"] for r, e in ablation["recipes"].items()}
    assert n["raw"] > n["ood_removed"] > n["labels_corrected"]
    val_ids = pd.read_csv(out / "val_split" / "ids.csv")
    n_images = len(json.loads((tiny_graph.dataset / "data-labels.json").read_text()))
    assert n["raw"] <= n_images - len(val_ids)  # validation images and their copies left out
    for run in ablation["runs"]:
        assert 0.0 <= run["val_balanced_accuracy"] <= 1.0 and 0.0 <= run["test_balanced_accuracy"] <= 1.0

    summary = json.loads(summary_path.read_text())
    assert list(summary["assets"]) == NAMES and summary["ablation"]["recipes"]["full"]["seeds"] == 1
    for figures in summary["assets"].values():
        assert figures["seconds"] >= 0 and figures["peak_rss_mb"] > 0
    assert summary["val_balanced_accuracy"] == theirs["val_split"]["balanced_accuracy"]
    assert 0 <= summary["test_balanced_accuracy"] <= 1
    assert summary["cleaning"]["n_scored"] > 0 and summary["cleaning"]["n_missing"] == 0
    k = len(summary["cleaning"]["per_class"]["raw"])  # the noise model's estimates beside the truth
    assert len(summary["cleaning"]["estimated"]["prior"]) == k
    assert np.shape(summary["cleaning"]["estimated"]["transition"]) == (k, k)
    for name in summary["assets"]:  # every folder a stage wrote is marked as the tool's
        assert (out / name / ".animal-assets").is_file(), name
    assert ours["test_set"]["n"] == len(json.loads((tiny_graph.dataset / "data-labels.json").read_text()))


def test_the_ablation_flags_override_the_run_config_and_leave_the_rest():
    from animal_assets.core.config import params_from_run_config
    from animal_assets.core.pipeline import with_ablation

    base = {"ops": {"ablation_report": {"config": {"recipes": ["raw", "full"], "seeds": [3]}},
                    "val_split": {"config": {"per_class": 5}}}}
    assert with_ablation(base, recipes="config", seeds=None, epochs=None) == base
    changed = with_ablation(base, recipes="all", seeds="0,1", epochs=2)
    params = params_from_run_config(changed)["ablation_report"]
    assert (params.recipes, params.seeds, params.epochs) == (list(RECIPES), [0, 1], 2)
    assert changed["ops"]["val_split"] == base["ops"]["val_split"]
    assert base["ops"]["ablation_report"]["config"]["seeds"] == [3]  # the given config is not changed
    only_seeds = params_from_run_config(with_ablation(base, recipes="config", seeds="4", epochs=None))
    assert (only_seeds["ablation_report"].recipes, only_seeds["ablation_report"].seeds) == (["raw", "full"], [4])


def test_the_label_stage_applies_the_review_for_every_runner(tmp_path):
    """The review is part of the label stage, so the stage table applies it wherever it runs."""
    import pandas as pd

    from animal_assets.core.config import params_from_run_config
    from animal_assets.core.pipeline import run_stages
    from animal_assets.core.stages import RunContext, upto

    demo = make_demo_dataset(tmp_path / "demo", seed=1, size="tiny")
    dropped = sorted(json.loads((demo.dataset_dir / "data-labels.json").read_text()))[0]
    review = tmp_path / "review.csv"
    review.write_text(f"id,action,label,note\n{dropped},drop,,a reviewer's call\n")
    ctx = RunContext(output=tmp_path / "out", dataset=str(demo.dataset_dir), review=str(review),
                     log=lambda _: None, warn=lambda _: None)
    # TINY's strength without it: the stage searches for its own
    searched = {"ops": {**TINY["ops"], "clean_labels": {"config": {"n_folds": 3}}}}
    results = run_stages(ctx, params_from_run_config(searched), stages=upto("clean_labels"),
                         describe=False)
    assert list(results) == ["raw_images", "image_quality", "embeddings", "neighbours", "ood_scores",
                             "near_duplicates", "clean_labels"]
    decisions = pd.read_csv(tmp_path / "out" / "clean_labels" / "decisions.csv").set_index("id")
    assert decisions.loc[dropped, "action"] == "drop" and decisions.loc[dropped, "source"] == "review"
    assert results["clean_labels"].summary["by_source"]["review"] == 1
    # the final summary keeps what the automatic decisions were made under
    from animal_assets.core.probe import PROBE_C_GRID

    summary, k = results["clean_labels"].summary, results["raw_images"].num_classes
    assert summary["probe_c"] in PROBE_C_GRID and np.shape(summary["transition"]) == (k, k)
    assert len(summary["prior"]) == k and abs(sum(summary["prior"]) - 1) < 1e-3
    auto = pd.read_csv(tmp_path / "out" / "clean_labels" / "auto" / "decisions.csv")
    assert "source" not in auto.columns and len(auto) == len(decisions)


def test_label_entropy_outlier_scores_through_the_steps(tmp_path):
    import pandas as pd

    from animal_assets.core.stages.embeddings import EmbeddingsConfig, compute_embeddings
    from animal_assets.core.stages.neighbours import NeighboursConfig, find_neighbours
    from animal_assets.core.stages.ood_scores import OodScoresConfig, score_outliers
    from animal_assets.core.ingest import read_dataset

    demo = make_demo_dataset(tmp_path / "demo", seed=2, size="tiny")
    raw = read_dataset(demo.dataset_dir, tmp_path / "raw")
    emb = compute_embeddings(raw, tmp_path / "emb", EmbeddingsConfig(image_size=32), device="cpu")
    nearest = find_neighbours(raw, emb, tmp_path / "nn", NeighboursConfig())
    scores = score_outliers(raw, emb, nearest, tmp_path / "ood",
                                  OodScoresConfig(method="label_entropy", label_k=10, fraction=0.1,
                                            refine_rounds=0))
    table = pd.read_csv(scores.path)
    assert len(table) == raw.n_usable and table["flag"].sum() == scores.n_flagged == int(0.1 * raw.n_usable)
    assert table["score"].between(0, np.log(10) + 1e-6).all()


def test_knn_scores_compare_the_head_features_only(tmp_path):
    import pandas as pd

    from animal_assets.core.stages.embeddings import EmbeddingsConfig, compute_embeddings
    from animal_assets.core.stages.neighbours import NeighboursConfig, find_neighbours
    from animal_assets.core.stages.ood_scores import OodScoresConfig, score_outliers
    from animal_assets.core.ingest import read_dataset

    demo = make_demo_dataset(tmp_path / "demo", seed=3, size="tiny")
    raw = read_dataset(demo.dataset_dir, tmp_path / "raw")
    full = compute_embeddings(raw, tmp_path / "full", EmbeddingsConfig(image_size=32), device="cpu")
    head = compute_embeddings(raw, tmp_path / "head", EmbeddingsConfig(image_size=32, stages=False),
                                    device="cpu")
    assert (full.head_dim, head.head_dim, head.dim) == (1280, 1280, 1280) and full.dim > 1280
    near_full = find_neighbours(raw, full, tmp_path / "nn_full", NeighboursConfig())
    near_head = find_neighbours(raw, head, tmp_path / "nn_head", NeighboursConfig())
    np.testing.assert_array_equal(np.load(near_full.indices_path), np.load(near_head.indices_path))
    for method in ("knn_distance", "label_entropy"):
        params = OodScoresConfig(method=method, label_k=10, refine_rounds=0)
        a = pd.read_csv(score_outliers(raw, full, near_full, tmp_path / f"a_{method}", params).path)
        b = pd.read_csv(score_outliers(raw, head, near_head, tmp_path / f"b_{method}", params).path)
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6, atol=1e-7)
    # The refinement reads every column, so with it the extra columns change the scores.
    params = OodScoresConfig(method="knn_distance", refine_rounds=1, refine_share=0.05)
    a = pd.read_csv(score_outliers(raw, full, near_full, tmp_path / "ra", params).path)
    b = pd.read_csv(score_outliers(raw, head, near_head, tmp_path / "rb", params).path)
    assert not np.allclose(a["score"], b["score"])

"""The dagster-free runner: same steps, same summary, on a machine without dagster."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from animal_assets.core.demo import make_demo_dataset
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


def test_core_pipeline_runs_the_graph_and_writes_the_summary(tmp_path):
    demo = make_demo_dataset(tmp_path / "demo", seed=1, size="tiny")
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY))
    summary_path = tmp_path / "run.json"
    dropped = sorted(json.loads((demo.dataset_dir / "data-labels.json").read_text()))[0]
    review = tmp_path / "review.csv"
    review.write_text(f"id,action,label,note\n{dropped},drop,,a reviewer's call\n")
    code = main([
        str(demo.dataset_dir), "--out", str(tmp_path / "out"), "--config", str(config),
        "--device", "cpu", "--truth", str(demo.truth_path), "--test-set",
        str(demo.dataset_dir), "--json", str(summary_path), "--review", str(review),
    ])
    assert code == 0
    import pandas as pd

    decisions = pd.read_csv(tmp_path / "out" / "clean_labels" / "decisions.csv").set_index("id")
    assert decisions.loc[dropped, "action"] == "drop" and decisions.loc[dropped, "source"] == "review"
    assert (tmp_path / "out" / "clean_labels" / "auto" / "decisions.csv").is_file()
    summary = json.loads(summary_path.read_text())
    # the headless runner trains the ablation only when asked (--ablation)
    assert list(summary["assets"]) == [n for n in NAMES if n != "ablation_report"]
    for figures in summary["assets"].values():
        assert figures["seconds"] >= 0 and figures["peak_rss_mb"] > 0
    assert 0 <= summary["val_balanced_accuracy"] <= 1
    assert 0 <= summary["test_balanced_accuracy"] <= 1
    assert summary["cleaning"]["n_scored"] > 0 and summary["cleaning"]["n_missing"] == 0
    for name in summary["assets"]:  # every folder a step wrote is marked as the tool's
        assert (tmp_path / "out" / name / ".animal-assets").is_file(), name
    report = json.loads(Path(summary["report_path"]).read_text())
    assert report["test_set"]["n"] == len(json.loads((demo.dataset_dir / "data-labels.json").read_text()))


def test_label_entropy_outlier_scores_through_the_steps(tmp_path):
    import pandas as pd

    from animal_assets.core import steps
    from animal_assets.core.config import EmbeddingsParams, OodParams
    from animal_assets.core.ingest import read_dataset

    demo = make_demo_dataset(tmp_path / "demo", seed=2, size="tiny")
    raw = read_dataset(demo.dataset_dir, tmp_path / "raw")
    emb = steps.compute_embeddings(raw, tmp_path / "emb", EmbeddingsParams(image_size=32), device="cpu")
    scores = steps.score_outliers(raw, emb, tmp_path / "ood",
                                  OodParams(method="label_entropy", label_k=10, fraction=0.1,
                                            refine_rounds=0))
    table = pd.read_csv(scores.path)
    assert len(table) == raw.n_usable and table["flag"].sum() == scores.n_flagged == int(0.1 * raw.n_usable)
    assert table["score"].between(0, np.log(10) + 1e-6).all()


def test_knn_scores_compare_the_head_features_only(tmp_path):
    import pandas as pd

    from animal_assets.core import steps
    from animal_assets.core.config import EmbeddingsParams, OodParams
    from animal_assets.core.ingest import read_dataset

    demo = make_demo_dataset(tmp_path / "demo", seed=3, size="tiny")
    raw = read_dataset(demo.dataset_dir, tmp_path / "raw")
    full = steps.compute_embeddings(raw, tmp_path / "full", EmbeddingsParams(image_size=32), device="cpu")
    head = steps.compute_embeddings(raw, tmp_path / "head", EmbeddingsParams(image_size=32, stages=False),
                                    device="cpu")
    assert (full.head_dim, head.head_dim, head.dim) == (1280, 1280, 1280) and full.dim > 1280
    for method in ("knn_distance", "label_entropy"):
        params = OodParams(method=method, label_k=10, refine_rounds=0)
        a = pd.read_csv(steps.score_outliers(raw, full, tmp_path / f"a_{method}", params).path)
        b = pd.read_csv(steps.score_outliers(raw, head, tmp_path / f"b_{method}", params).path)
        np.testing.assert_allclose(a["score"], b["score"], rtol=1e-6, atol=1e-7)
    # The refinement reads every column, so with it the extra columns change the scores.
    params = OodParams(method="knn_distance", refine_rounds=1, refine_share=0.05)
    a = pd.read_csv(steps.score_outliers(raw, full, tmp_path / "ra", params).path)
    b = pd.read_csv(steps.score_outliers(raw, head, tmp_path / "rb", params).path)
    assert not np.allclose(a["score"], b["score"])

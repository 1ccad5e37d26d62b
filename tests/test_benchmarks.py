"""The speed benchmarks in benchmarks/ still run: each script's --quick mode prints its table."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from animal_assets.core.knn import knn

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLUMNS = ["figure", "ours", "baseline", "ratio", "machine"]


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row in the output, header first."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|") and not line.startswith("|---")]


# Each script with a figure its quick table must contain.
SCRIPTS = [
    ("bench_knn.py", r"wall time, s \(exact\)"),
    ("bench_neighbours.py", r"recall@10 against exact \(N=2,000\)"),
    ("bench_train.py", r"training images/s \(epoch 1 loop\)"),
    ("bench_embed.py", r"images/s at 64x64"),
    ("bench_ood_dims.py", r"OOD AUROC \(dims=64\)"),
    ("bench_precision.py", r"ResNet-34 training images/s"),
    ("bench_shards.py", r"merged features equal one step's, byte for byte"),
]


def run_script(script: str, args: list[str], cwd: Path, monkeypatch) -> tuple[int, str]:
    """``python benchmarks/SCRIPT ARGS`` in this process (``_common.run_here``, its folder first
    on the path, as Python runs a script): the exit code and stdout and stderr. In process, the
    script's imports (torch, torchvision) are the test session's, not paid again."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.chdir(cwd)
    import _common

    proc = _common.run_here(str(BENCHMARKS / script), args)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script, figure", SCRIPTS)
def test_quick_mode_prints_a_table_with_numeric_ratios(script, figure, tmp_path, monkeypatch):
    code, stdout = run_script(script, ["--quick", "--device", "cpu"], tmp_path, monkeypatch)
    assert code == 0, f"{script} failed:\n{stdout[-3000:]}"
    rows = table_rows(stdout)
    assert rows and rows[0] == COLUMNS, stdout
    body = rows[1:]
    assert body, f"{script} printed a table without rows:\n{stdout}"
    for row in body:
        assert len(row) == len(COLUMNS), row
        ours, baseline, ratio = (float(v) for v in row[1:4])
        assert ours >= 0 and baseline >= 0 and ratio > 0, row
        assert row[4].endswith(", cpu"), row
    assert any(re.match(figure, row[0]) for row in body), [row[0] for row in body]


def test_every_benchmark_script_is_covered():
    scripts = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))
    assert scripts == sorted(script for script, _ in SCRIPTS)


# --------------------------------------------------------------------------------------------
# the projection onto principal axes that bench_knn.py and bench_ood_dims.py measure


@pytest.fixture()
def project_features(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    return _common.project_features


@pytest.mark.parametrize("dims", [1, 5, 20])
def test_project_features_gives_unit_rows_and_keeps_a_subspace_exactly(project_features, dims):
    rng = np.random.default_rng(dims)
    # Rows spanning only `dims` directions of a 20-d space: the top `dims` axes span them, so
    # the projection keeps every cosine similarity.
    basis = np.linalg.qr(rng.standard_normal((20, dims)))[0]
    features = (rng.standard_normal((400, dims)) @ basis.T).astype(np.float32)
    features[7] = 0.0
    projected = project_features(features, dims, device="cpu")
    assert projected.shape == (400, dims) and projected.dtype == np.float32
    np.testing.assert_allclose(np.delete(np.linalg.norm(projected, axis=1), 7), 1.0, atol=1e-5)
    assert not projected[7].any(), "an all-zero row stays all-zero"
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    np.testing.assert_allclose(projected @ projected.T, unit @ unit.T, atol=1e-4)
    np.testing.assert_array_equal(projected, project_features(features, dims, device="cpu"))


def test_project_features_at_full_dims_keeps_cosine_distances(project_features):
    rng = np.random.default_rng(11)
    features = rng.standard_normal((150, 12)).astype(np.float32)
    full = knn(features, k=6, device="cpu")
    rotated = knn(project_features(features, 12, device="cpu"), k=6, device="cpu")
    np.testing.assert_allclose(rotated[0], full[0], atol=1e-5)
    assert (rotated[1] != full[1]).mean() < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_outlier_scores_on_projected_features_still_rank_planted_outliers_first(project_features, seed):
    from sklearn.metrics import roc_auc_score

    from animal_assets.core.ood import knn_ood_scores
    from tests.test_ood import planted_outlier_set

    features, is_outlier = planted_outlier_set(seed)
    projected = project_features(features, 32, device="cpu")
    scores = knn_ood_scores(projected, k=10, block_size=128, device="cpu")
    assert roc_auc_score(is_outlier, scores) >= 0.95


@pytest.mark.parametrize("dims", [0, 9, -1, True, 2.5, "4"])
def test_project_features_rejects_bad_dims(project_features, dims):
    features = np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32)
    with pytest.raises(ValueError, match="dims must be None or an int"):
        project_features(features, dims, device="cpu")

"""The speed benchmarks in benchmarks/ still run: each script's --quick mode prints its table."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
COLUMNS = ["figure", "ours", "baseline", "ratio", "machine"]


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of every markdown table row in the output, header first."""
    return [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in stdout.splitlines() if line.startswith("|") and not line.startswith("|---")]


# Each script with a figure its quick table must contain.
SCRIPTS = [
    ("bench_knn.py", r"wall time, s \(exact\)"),
    ("bench_train.py", r"training images/s \(epoch 1 loop\)"),
    ("bench_embed.py", r"images/s at 64x64"),
    ("bench_ood_dims.py", r"OOD AUROC \(dims=64\)"),
    ("bench_precision.py", r"ResNet-34 training images/s"),
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

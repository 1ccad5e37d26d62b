"""A run killed in the middle of ``balanced_train`` leaves the previous outputs intact, and a
rerun succeeds, clears the leftover temporary folder and writes the same bytes again.

The run is a real ``runner.run`` in a subprocess on the same Dagster instance. The subprocess
patches its own copy of the project so that ``balanced_train`` stops at a chosen point of its
atomic write and waits there; the test then kills it with SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from animal_assets import runner
from animal_assets.core.atomic import atomic_dir, write_json
from animal_assets.core.export import validate_ds801_folder
from tests.fixtures import tree_hashes
from tests.graph import TINY, fork, make_defs, sqlite_instance

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 180  # for the subprocess to reach the stop point (imports plus loading the inputs)

# argv: run folder, dataset, stop point, ready file. It writes the ready file and sleeps forever
# at the stop point: "images" after three images of the train export, "zip" once the train export
# is complete but before the zip is written.
SUBPROCESS = r"""
import sys, time
from pathlib import Path

run_dir, dataset, point, ready = sys.argv[1:]

def stop_here(where):
    Path(ready).write_text(str(where))
    time.sleep(3600)

from animal_assets.core import ds801
from animal_assets.core.stages import balanced_train
if point == "images":
    real_write = ds801.write_ds801
    def write_ds801(out_dir, items, *, num_classes):
        def trickle():
            for i, item in enumerate(items):
                if i == 3:
                    stop_here(out_dir)
                yield item
        return real_write(out_dir, trickle(), num_classes=num_classes)
    ds801.write_ds801 = write_ds801
elif point == "zip":
    def _zip_tree(path, folders):
        stop_here(path)
    balanced_train.zip_tree = _zip_tree
else:
    raise SystemExit(f"unknown stop point {point!r}")

from animal_assets import runner
from tests.graph import TINY, make_defs, sqlite_instance
run_dir = Path(run_dir)
runner.run(config=TINY, instance=sqlite_instance(run_dir), defs=make_defs(run_dir, dataset),
           select=["balanced_train"], observe_first=False)
raise SystemExit("the run finished although it was meant to be killed")
"""


@pytest.fixture(scope="module")
def first_run(tiny_graph, tmp_path_factory):
    """A copy of the session's tiny graph; returns its folder, its dataset and the hashes of its
    balanced_train output."""
    graph = fork(tiny_graph, tmp_path_factory.mktemp("atomic"))
    snapshot = tree_hashes(graph.tmp / "out" / "balanced_train")
    assert any(k.endswith(".jpg") for k in snapshot) and "ds801-clean.zip" in snapshot
    return graph.tmp, str(graph.dataset), snapshot


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(".balanced_train.*.tmp"))


@pytest.fixture(scope="module", params=["images", "zip"])
def killed(request, first_run):
    """Start balanced_train in a subprocess, kill it at the stop point; return what was left."""
    tmp, dataset, _ = first_run
    out = tmp / "out"
    ready = tmp / f"ready-{request.param}"
    log = tmp / f"subprocess-{request.param}.log"
    with open(log, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-c", SUBPROCESS, str(tmp), dataset, request.param, str(ready)],
            cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + WAIT_S
            while not ready.exists():
                if proc.poll() is not None:
                    pytest.fail(f"the run exited ({proc.returncode}) before its stop point:\n"
                                f"{log.read_text()[-3000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"the run did not reach its stop point in {WAIT_S} s")
                time.sleep(0.1)
            during = {p.name: tree_hashes(p) for p in _temporaries(out)}
            os.kill(proc.pid, signal.SIGKILL)
            returncode = proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        "point": request.param, "stopped_in": ready.read_text(), "returncode": returncode,
        "during": during, "after": tree_hashes(out / "balanced_train"),
        "leftovers": [p.name for p in _temporaries(out)], "out": out, "tmp": tmp,
        "dataset": dataset,
    }


def test_the_run_was_killed_while_writing_its_temporary_folder(killed):
    assert killed["returncode"] == -signal.SIGKILL
    (name, content), = killed["during"].items()
    assert killed["stopped_in"].startswith(str(killed["out"] / name))
    images = [k for k in content if k.endswith(".jpg")]
    if killed["point"] == "images":
        # three images written into the export's own temporary folder, nothing complete yet
        assert len(images) == 3 and all("/.ds801." in k for k in images)
    else:
        assert "train/ds801/data-labels.json" in content and "ds801-clean.zip" not in content
    assert killed["leftovers"] == [name]
    assert not (killed["out"] / ".balanced_train.old").exists()


def test_the_previous_outputs_are_intact(killed, first_run):
    assert killed["after"] == first_run[2]
    assert validate_ds801_folder(killed["out"] / "balanced_train" / "train" / "ds801") == []


@pytest.fixture(scope="module")
def rerun(killed):
    """balanced_train materialized again, in this process, over the leftover temporary folder."""
    tmp = killed["tmp"]
    summary = runner.run(config=TINY, instance=sqlite_instance(tmp),
                         defs=make_defs(tmp, killed["dataset"]), select=["balanced_train"],
                         observe_first=False)
    return summary, tree_hashes(killed["out"] / "balanced_train"), _temporaries(killed["out"])


def test_a_rerun_succeeds_and_clears_the_leftover(rerun):
    summary, _, leftovers = rerun
    assert list(summary["assets"]) == ["balanced_train"]
    assert summary["checks"] and all(v == "passed" for v in summary["checks"].values()), summary
    assert leftovers == []


def test_the_next_run_marks_the_killed_one_failed_with_its_reason(rerun, killed):
    import dagster as dg

    instance = sqlite_instance(killed["tmp"])
    runs = instance.get_runs()
    assert dg.DagsterRunStatus.STARTED not in [r.status for r in runs]
    killed_runs = [r for r in runs if r.status == dg.DagsterRunStatus.FAILURE]
    assert killed_runs, [r.status for r in runs]
    failure = instance.all_logs(killed_runs[0].run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "ended without finishing" in failure[-1].dagster_event.message


def test_the_rerun_writes_the_same_bytes(rerun, first_run):
    assert rerun[1] == first_run[2]


@pytest.fixture
def umask(request):
    before = os.umask(request.param)
    yield request.param
    os.umask(before)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002], indirect=True)
def test_atomic_writes_honour_the_umask(tmp_path, umask):
    with atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "inside.txt").write_text("x")
    write_json(tmp_path / "file.json", {"a": 1})
    assert (tmp_path / "folder").stat().st_mode & 0o777 == 0o777 & ~umask
    assert (tmp_path / "folder" / "inside.txt").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (tmp_path / "file.json").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_deliverables_are_readable_by_others_under_umask_022(tiny_graph):
    mask = os.umask(0o022)
    os.umask(mask)
    out = tiny_graph.tmp / "out"
    for rel in ("val_split/ds801", "balanced_train/train/ds801", "val_split/ds801/data-labels.json",
                "balanced_train/ds801-clean.zip", "raw_images/images.npy"):
        mode = (out / rel).stat().st_mode & 0o777
        expected = (0o777 if (out / rel).is_dir() else 0o666) & ~mask
        assert mode == expected, (rel, oct(mode))

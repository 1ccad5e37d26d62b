"""Hostile and awkward runs: the input is never lost, a failure is one line, validation is early.

Every command-line case runs ``animal-assets run`` on a seeded fixture, in a subprocess or, for
runs that reach the graph, through its entry function in this process, and checks the same
things: the exit code; exactly one ``animal-assets:`` line on stderr, naming the path and the
rule, with no traceback or Dagster stack trace; the input byte-identical afterwards;
nothing written outside the output folder (and the Dagster home); no temporary file left; and
every Dagster run of the instance ended (a failed one as FAILURE, none left STARTED).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from animal_assets.core.stages.balanced_train import BalancedTrain, make_balanced_train
from animal_assets.core.stages.clean_labels import clean_label_decisions
from animal_assets.core.stages.embeddings import compute_embeddings
from animal_assets.core.stages.neighbours import find_neighbours
from animal_assets.core.stages.ood_scores import score_outliers
from animal_assets.core.stages.val_split import make_val_split
from animal_assets.core.atomic import (
    DiskFullError, OutputBusyError, atomic_dir, output_lock, save_npy,
)
from animal_assets.core.config import params_from_run_config
from animal_assets.core.ds801 import derived_image_id, write_ds801
from animal_assets.core.formats import decode_image
from animal_assets.core.ingest import DatasetError, read_dataset
from animal_assets.core.review import ReviewError, read_review
from tests.fixtures import (
    cli_in_process, image_paths, labels_of, make_archive, make_dataset, tree_hashes,
)
from tests.test_degenerate_inputs import _coloured
from tests.graph import TINY

ROOT = Path(__file__).resolve().parents[1]
SCRATCH = ("out", "home")  # what a run may write: the output folder and the Dagster home


# --------------------------------------------------------------------------------------------
# helpers


def _world(tmp_path: Path) -> dict[str, str]:
    """Hashes of everything under ``tmp_path`` but the output folder and the Dagster home."""
    return {k: v for k, v in tree_hashes(tmp_path).items() if k.split("/")[0] not in SCRATCH}


def _leftovers(*folders: Path) -> list[str]:
    return [str(p) for f in folders if f.exists() for p in f.rglob("*")
            if p.name.endswith((".tmp", ".old"))]


def _home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    return home


def _cli(tmp_path: Path, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """``animal-assets run ARGS`` in a subprocess, in ``tmp_path``, with its own Dagster home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMAL_ASSETS_")}
    env.update(DAGSTER_HOME=str(_home(tmp_path)), PYTHONPATH=str(ROOT), **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "animal_assets.cli", "run", *args],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _cli_in_process(tmp_path: Path, *args: str,
                    env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """What :func:`_cli` does, through the command's entry function in this process (for runs
    that reach the graph, which would spend most of a subprocess on its imports)."""
    return cli_in_process(tmp_path, _home(tmp_path), "run", *args, env_extra=env_extra)


def _run_statuses(tmp_path: Path) -> list[dg.DagsterRunStatus]:
    with dg.DagsterInstance.from_config(str(tmp_path / "home")) as instance:
        return [run.status for run in instance.get_runs()]


@contextlib.contextmanager
def refused(tmp_path: Path, *parts: str, out: Path | None = None, pipeline_ran: bool = False):
    """Check the command line run in the block against every rule of the module docstring (and
    no Dagster ERROR line before the one line: those go to the event log unless --verbose);
    the block sets ``box["proc"]``. ``pipeline_ran``: the refusal came from a step, so the
    instance holds one failed pipeline run."""
    out = out or tmp_path / "out"
    before = _world(tmp_path)
    box: dict = {}
    yield box
    proc = box["proc"]
    assert proc.returncode == 1, proc.stderr[-3000:]
    ours = [line for line in proc.stderr.splitlines() if line.startswith("animal-assets:")]
    assert len(ours) == 1 and proc.stderr.rstrip("\n").endswith(ours[0]), proc.stderr[-3000:]
    assert all(part in ours[0] for part in parts), (parts, ours[0])
    assert "Traceback" not in proc.stderr and "Stack Trace" not in proc.stderr, proc.stderr[-3000:]
    assert " - ERROR - " not in proc.stderr, proc.stderr[-3000:]  # Dagster's go to the log only
    assert _world(tmp_path) == before  # the input is untouched and nothing was written beside it
    assert _leftovers(tmp_path) == []
    statuses = _run_statuses(tmp_path)
    assert dg.DagsterRunStatus.STARTED not in statuses
    if pipeline_ran:
        assert dg.DagsterRunStatus.FAILURE in statuses, statuses
    box["line"] = ours[0]


def _truth(path: Path, entries: dict) -> Path:
    path.write_text(json.dumps(entries))
    return path


@pytest.fixture
def small_fs(tmp_path):
    """A 1 MB tmpfs at ``tmp_path/out`` (root only), unmounted afterwards."""
    yield from _mount(tmp_path / "out", "size=1m")


@pytest.fixture
def read_only_fs(tmp_path):
    yield from _mount(tmp_path / "out", "ro,size=1m")


def _mount(where: Path, options: str):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


# --------------------------------------------------------------------------------------------
# data loss: the output may never write into or over an input


@pytest.mark.slow
def test_a_dataset_inside_a_folder_the_graph_replaces_is_refused(tmp_path):
    dataset = make_dataset(tmp_path / "out" / "val_split", n=12, k=3, name="ds801")
    before = tree_hashes(dataset)
    with refused(tmp_path, str(dataset), "lies inside", "replaces") as box:
        box["proc"] = _cli(tmp_path, "--dataset", str(dataset), "--output", str(tmp_path / "out"),
                           "--config", "demo", "--select", "raw_images")
    assert tree_hashes(dataset) == before and len(image_paths(dataset)) == 12
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["val_split"]


@pytest.mark.slow
def test_an_output_inside_the_input_is_refused_before_anything_is_created(tmp_path):
    dataset = make_dataset(tmp_path, n=12, k=3)
    with refused(tmp_path, str(dataset / "out"), "must not be or lie inside") as box:
        box["proc"] = _cli(tmp_path, "--dataset", str(dataset), "--output", str(dataset / "out"),
                           "--select", "raw_images")
    assert not (dataset / "out").exists()


@pytest.mark.parametrize("what", ["test set", "truth file", "review file"])
def test_no_input_may_lie_where_the_graph_writes(tmp_path, what):
    from animal_assets.core.preflight import InputError, preflight

    out = tmp_path / "out"
    dataset = make_dataset(tmp_path, n=12, k=3)
    inside = out / "eval_report" / "input"
    if what == "test set":
        make_dataset(out / "eval_report", n=3, k=3, name="input")
        kwargs = {"test_set": inside}
    else:
        inside.parent.mkdir(parents=True)
        inside.write_text("{}" if what == "truth file" else "id,action\n")
        kwargs = {"truth" if what == "truth file" else "review": inside}
    with pytest.raises(InputError, match=f"the {what} lies inside .*eval_report, which the graph "
                                         "replaces") as err:
        preflight(dataset, out, **kwargs)
    assert "\n" not in str(err.value)
    # a dataset inside the output folder but outside what the graph replaces is fine (the demo
    # dataset lives in OUT/demo_dataset); the user's eval_report folder would be refused now
    shutil.rmtree(out / "eval_report")
    kept = make_dataset(out / "demo_dataset", n=12, k=3)
    assert preflight(kept, out).num_classes == 3


# --------------------------------------------------------------------------------------------
# disk full


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_a_failed_run(tmp_path, small_fs):
    dataset = make_dataset(tmp_path, n=100, k=3)
    with refused(tmp_path, str(small_fs / "raw_images"), "not enough free space",
                 "bytes", pipeline_ran=True) as box:
        box["proc"] = _cli_in_process(tmp_path, "--dataset", str(dataset), "--output", str(small_fs),
                           "--select", "raw_images")
    assert _leftovers(small_fs) == [] and not (small_fs / "raw_images").exists()
    assert _run_statuses(tmp_path)[0] == dg.DagsterRunStatus.FAILURE  # the newest run


def test_a_write_that_runs_out_of_space_names_the_path_and_leaves_nothing(small_fs):
    target = small_fs / "big.npy"
    with pytest.raises(DiskFullError, match=f"{target}: no space left on the device: the write "
                                            r"needs 2097280 bytes, \d+ bytes are free"):
        save_npy(target, np.zeros(2 << 20, dtype=np.uint8))
    assert list(small_fs.iterdir()) == []


def test_reading_a_dataset_onto_a_full_disk_raises_enospc_not_sigbus(tmp_path, small_fs, monkeypatch):
    from animal_assets.core import ingest

    dataset = make_dataset(tmp_path, n=100, k=3)
    monkeypatch.setattr(ingest, "ensure_free_space", lambda path, needed: None)  # skip the check
    with pytest.raises(DiskFullError, match=f"{small_fs / 'raw_images'}: no space left on the device"):
        read_dataset(dataset, small_fs / "raw_images")
    assert list(small_fs.iterdir()) == []


# --------------------------------------------------------------------------------------------
# early validation: every input the run needs, before the first asset


def _truth_of(dataset: Path, *, true: int | None = None) -> dict:
    return {key: {"true": label.index(1) if true is None else true, "given": label.index(1),
                  "kind": "clean" if true is None else "flipped"}
            for key, label in sorted(labels_of(dataset).items())[:3]}


PREFLIGHT_CASES = {
    "truth_out_of_range": ("labels must be below num_classes=3", "truth"),
    "truth_matches_nothing": ("none of the truth file's 3 ids is an image of", "truth"),
    "truth_not_json": ("not valid JSON", "truth"),
    "class_names_count": ("--class-names lists 2 names", None),
    "test_set_missing": ("the test set does not exist", "test"),
    "test_set_wrong_k": ("the test set's labels have K=4, the dataset's K=3", "test"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(PREFLIGHT_CASES))
def test_a_bad_truth_test_set_or_class_names_is_refused_before_the_first_asset(tmp_path, case):
    dataset = make_dataset(tmp_path, n=12, k=3)
    rule, named = PREFLIGHT_CASES[case]
    args = ["--dataset", str(dataset), "--output", str(tmp_path / "out")]
    path = tmp_path / "input"
    if case == "truth_out_of_range":
        _truth(path, _truth_of(dataset, true=7))
    elif case == "truth_matches_nothing":
        _truth(path, _truth_of(make_dataset(tmp_path, n=3, k=3, seed=9, name="other")))
    elif case == "truth_not_json":
        path.write_text("{not json")
    elif case == "test_set_wrong_k":
        make_dataset(tmp_path, n=4, k=4, seed=3, name="input")
    if named == "truth":
        args += ["--truth", str(path)]
    elif named == "test":
        args += ["--test-set", str(path)]
    else:
        args += ["--class-names", "cat,dog"]
    with refused(tmp_path, *([str(path)] if named else [str(dataset)]), rule) as box:
        box["proc"] = _cli(tmp_path, *args)
    # refused before anything ran: no run in the instance, no output folder
    assert _run_statuses(tmp_path) == [] and not (tmp_path / "out").exists()


REVIEW_CASES = {  # case: (the file's text after the header, given the first id, the line's rule)
    "ragged_row": ("{first},keep,,\n{first},drop,,a note, with a comma\n",
                   "line 3: the row has 5 fields, the header has 4"),
    "unknown_id": ("{first},keep,,\nimg_nope,drop,,\n", "line 3: unknown image id 'img_nope'"),
    "label_out_of_range": ("{first},relabel,3,\n", "line 2: label '3' is not a class; use 0..2"),
    "byte_order_mark": ("\ufeff{first},keep,,\n", "starts with a byte-order mark"),
}


@pytest.mark.parametrize("case", sorted(REVIEW_CASES))
def test_a_broken_review_is_refused_before_the_first_asset(tmp_path, case):
    dataset = make_dataset(tmp_path, n=12, k=3)
    first = sorted(labels_of(dataset))[0].removesuffix(".jpg")
    body, rule = REVIEW_CASES[case]
    review = tmp_path / "review.csv"
    text = body.format(first=first)
    text = ("\ufeff" + "id,action,label,note\n" + text[1:] if text.startswith("\ufeff")
            else "id,action,label,note\n" + text)
    review.write_text(text)
    with refused(tmp_path, str(review), rule) as box:
        box["proc"] = _cli(tmp_path, "--dataset", str(dataset), "--output", str(tmp_path / "out"),
                           "--review", str(review))
    assert review.read_text() == text
    # refused by the preflight: no run in the instance, no output folder
    assert _run_statuses(tmp_path) == [] and not (tmp_path / "out").exists()


REFUSED_EARLY = {  # case: (arguments, what the line says does not exist)
    "dataset_missing": (["--dataset", "NOPE"], "dataset"),
    "demo_with_a_missing_test_set": (["--config", "demo", "--test-set", "NOPE"], "test set"),
    "review_missing": (["--review", "NOPE"], "review file"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_EARLY))
def test_a_refusal_comes_before_torch_dagster_or_the_instance(tmp_path, case):
    args, what = REFUSED_EARLY[case]
    missing = tmp_path / "nope"
    args = [str(missing) if a == "NOPE" else a for a in args]
    # a fresh interpreter runs the command, then reports which heavy packages it had imported
    code = ("import sys; from animal_assets import cli; "
            f"code = cli.main(['run', *{args!r}]); "
            "print(code, [m for m in ('torch', 'dagster', 'sklearn', 'pandas') if m in sys.modules])")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMAL_ASSETS_")}
    env.update(DAGSTER_HOME=str(tmp_path / "home"), PYTHONPATH=str(ROOT))
    before = _world(tmp_path)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.stdout.strip() == "1 []", proc.stdout + proc.stderr[-3000:]
    assert proc.stderr.splitlines() == [f"animal-assets: {missing}: the {what} does not exist"]
    assert not (tmp_path / "home").exists() and not (tmp_path / "var").exists()
    assert _world(tmp_path) == before


def test_the_first_asset_runs_the_same_preflight_for_runs_launched_from_the_ui(tmp_path):
    from tests.graph import make_defs, sqlite_instance

    dataset = make_dataset(tmp_path, n=12, k=3)
    truth = _truth(tmp_path / "truth.json", _truth_of(dataset, true=7))
    defs = make_defs(tmp_path, str(dataset), truth=str(truth))
    instance = sqlite_instance(tmp_path)
    job = defs.resolve_job_def("pipeline").get_subset(asset_selection={dg.AssetKey("raw_images")})
    result = job.execute_in_process(instance=instance, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert failure.step_key == "raw_images"
    assert "labels must be below num_classes=3" in str(failure.step_failure_data.error.cause.message)
    assert instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.FAILURE
    assert not (tmp_path / "out" / "raw_images").exists()


# --------------------------------------------------------------------------------------------
# one-line failures of the command line


@pytest.mark.slow
@pytest.mark.parametrize("case", ["config_typo", "output_is_a_file", "json_is_a_folder"])
def test_command_line_mistakes_are_one_line(tmp_path, case):
    dataset = make_dataset(tmp_path, n=12, k=3)
    args = ["--dataset", str(dataset), "--output", str(tmp_path / "out"), "--select", "raw_images"]
    if case == "config_typo":
        args += ["--config", "defualt"]
        parts = ("run config defualt", "no such shipped config or file")
    elif case == "output_is_a_file":
        (tmp_path / "out").write_text("a file")
        parts = (str(tmp_path / "out"), "is a file, not a folder")
    else:
        (tmp_path / "summary").mkdir()
        args += ["--json", str(tmp_path / "summary")]
        parts = (str(tmp_path / "summary"), "is a folder")
    with refused(tmp_path, *parts) as box:
        box["proc"] = _cli(tmp_path, *args)


@pytest.mark.slow
def test_a_read_only_output_is_one_line(tmp_path, read_only_fs):
    dataset = make_dataset(tmp_path, n=12, k=3)
    with refused(tmp_path, str(read_only_fs), "not writable") as box:
        box["proc"] = _cli(tmp_path, "--dataset", str(dataset), "--output", str(read_only_fs),
                           "--select", "raw_images")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["all_quarantined", "six_images"])
def test_too_few_usable_images_stop_at_raw_images(tmp_path, case):
    dataset = make_dataset(tmp_path, n=12 if case == "all_quarantined" else 6, k=3)
    if case == "all_quarantined":
        for path in image_paths(dataset):
            path.write_bytes(b"not a jpeg")
        parts = ("only 0 usable images (12 quarantined: 12 image_decodes", "at least 11")
    else:
        parts = ("only 6 usable images (0 quarantined", "at least 11")
    # a good earlier raw_images in the same output folder outlives the failed step
    good = make_dataset(tmp_path, n=12, k=3, seed=5, name="good")
    first = _cli_in_process(tmp_path, "--dataset", str(good), "--output", str(tmp_path / "out"),
                            "--select", "raw_images", "--no-progress")
    assert first.returncode == 0, first.stderr[-3000:]
    earlier = tree_hashes(tmp_path / "out" / "raw_images")
    status = ["status", "--dataset", str(good), "--output", str(tmp_path / "out")]
    synced = cli_in_process(tmp_path, _home(tmp_path), *status).stdout
    assert "raw_images       synced" in synced, synced
    with refused(tmp_path, str(dataset), *parts, pipeline_ran=True) as box:
        box["proc"] = _cli_in_process(tmp_path, "--dataset", str(dataset), "--output",
                                      str(tmp_path / "out"), "--no-progress")
    assert "step raw_images failed" in box["line"]
    assert tree_hashes(tmp_path / "out" / "raw_images") == earlier
    # the failed run's observation of the other dataset is taken back: the status is unchanged
    assert cli_in_process(tmp_path, _home(tmp_path), *status).stdout == synced
    # --verbose also prints Dagster's error lines (every step the failure kept from running),
    # and the one line still comes last
    verbose = _cli_in_process(tmp_path, "--dataset", str(dataset), "--output",
                              str(tmp_path / "out"), "--no-progress", "--verbose")
    assert verbose.returncode == 1
    assert "Dependencies for step embeddings failed" in verbose.stderr
    assert verbose.stderr.rstrip("\n").endswith(box["line"])


# --------------------------------------------------------------------------------------------
# links: the tool never follows a link out of the output folder


@pytest.mark.parametrize("link", ["lock_file", "asset_folder", "asset_folder_to_the_dataset"])
def test_a_link_inside_the_output_folder_is_refused_and_its_target_left_alone(tmp_path, link):
    dataset = make_dataset(tmp_path, n=12, k=3)
    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("someone's work\n")
    if link == "lock_file":
        (out / ".animal-assets.lock").symlink_to(elsewhere / "victim.txt")
        parts = (str(out / ".animal-assets.lock"), "lock file is a symbolic link")
    elif link == "asset_folder":
        (out / "raw_images").symlink_to(elsewhere)
        parts = (str(out / "raw_images"), "folder is a symbolic link",
                 f"--output {elsewhere}")
    else:
        (out / "val_split").symlink_to(dataset)
        parts = (str(out / "val_split"), "folder is a symbolic link")
    with refused(tmp_path, *parts) as box:  # the target's bytes are part of what must not change
        box["proc"] = _cli(tmp_path, "--dataset", str(dataset), "--output", str(out),
                           "--select", "raw_images")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["victim.txt"]
    linked = {"lock_file": ".animal-assets.lock", "asset_folder": "raw_images"}.get(link, "val_split")
    assert (out / linked).is_symlink()
    assert sorted(p.name for p in out.iterdir()) == [linked]  # no .val_split.old, no lock


# signals


@pytest.mark.slow
@pytest.mark.parametrize("signo, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_the_run_with_one_line_and_its_exit_code(tmp_path, signo, code):
    dataset = make_dataset(tmp_path, n=60, k=3)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANIMAL_ASSETS_")}
    env.update(DAGSTER_HOME=str(_home(tmp_path)), PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "animal_assets.cli", "run", "--dataset", str(dataset), "--output",
         str(out), "--select", "raw_images,embeddings,ood_scores,clean_labels", "--no-progress"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    deadline = time.monotonic() + 300
    while not (out / "raw_images" / "raw.json").exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "raw_images never finished"
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    if signo == signal.SIGINT:  # Ctrl-C on a terminal: the whole process group, children too
        os.killpg(proc.pid, signo)
    else:
        proc.send_signal(signo)  # while embeddings runs
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err[-3000:]
    ours = [line for line in err.splitlines() if line.startswith("animal-assets:")]
    assert len(ours) == 1 and err.rstrip("\n").endswith(ours[0]), err[-3000:]
    assert f"interrupted ({signal.Signals(signo).name})" in ours[0]
    assert "Traceback" not in err and "DagsterExecutionInterruptedError" not in err, err[-3000:]
    assert "KeyboardInterrupt" not in err, err[-3000:]  # nor from Dagster's child processes
    assert (out / "raw_images" / "raw.json").exists()  # what finished is kept
    assert not (out / "clean_labels" / "decisions.csv").exists()  # the run stopped
    assert dg.DagsterRunStatus.STARTED not in _run_statuses(tmp_path)
    assert _leftovers(out) == []


@pytest.fixture
def python_sigint():
    """Python's own Ctrl-C handler for the test, also where the tests were started with SIGINT
    ignored (a background job of a shell without job control); the previous one after."""
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize("signo, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupt_that_something_swallowed_is_sent_again_until_the_run_stops(
        monkeypatch, python_sigint, signo, code):
    from animal_assets import cli

    events = []

    def run_that_swallows_the_first_interrupt(args) -> int:
        deadline = time.monotonic() + 30
        try:
            while time.monotonic() < deadline:
                time.sleep(0.01)
            events.append("never interrupted")
        except KeyboardInterrupt:  # a library that catches it and goes on
            events.append("swallowed")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            time.sleep(0.01)
        events.append("finished")
        return 0

    monkeypatch.setattr(cli, "_main", run_that_swallows_the_first_interrupt)
    sender = threading.Timer(0.3, os.kill, (os.getpid(), signo))
    sender.start()
    start = time.monotonic()
    assert cli.main(["status"]) == code
    assert events == ["swallowed"]  # the second delivery stopped it
    assert time.monotonic() - start < 10
    time.sleep(3 * cli._RESEND_EVERY_S)  # nothing is sent after the run has ended
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ownership: the tool replaces or writes into its own folders only


@pytest.mark.parametrize("case", ["thesis_in_val_split", "repo_embeddings", "file_as_report"])
def test_a_folder_named_like_an_asset_that_the_tool_did_not_write_is_refused(tmp_path, case):
    dataset = make_dataset(tmp_path, n=12, k=3)
    out = tmp_path / "out"
    out.mkdir()
    folder = out / {"thesis_in_val_split": "val_split", "repo_embeddings": "embeddings",
                    "file_as_report": "eval_report"}[case]
    if case == "file_as_report":
        folder.write_text("someone's report\n")
        rule = "a file stands where the tool writes a folder"
    else:
        folder.mkdir()
        (folder / "my_thesis.txt").write_text("work\n")
        if case == "repo_embeddings":  # beside a name the tool writes there
            (folder / "embeddings.npy").write_bytes(b"not the tool's\n")
        rule = "not written by animal-assets (it holds 'my_thesis.txt')"
    before = tree_hashes(out)
    with refused(tmp_path, str(folder), rule) as box:
        box["proc"] = _cli_in_process(tmp_path, "--dataset", str(dataset), "--output", str(out),
                                      "--select", "raw_images,embeddings,ood_scores")
    assert tree_hashes(out) == before  # not even the lock: the preflight refused first
    assert _run_statuses(tmp_path) == []


def test_the_dagster_free_runner_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from animal_assets.core.pipeline import main as pipeline_main

    dataset = make_dataset(tmp_path, n=12, k=3)
    (tmp_path / "out" / "val_split").mkdir(parents=True)
    (tmp_path / "out" / "val_split" / "my_thesis.txt").write_text("work\n")
    before = tree_hashes(tmp_path)
    assert pipeline_main([str(dataset), "--out", str(tmp_path / "out"), "--device", "cpu"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tmp_path / "out" / "val_split") in line and "not written by animal-assets" in line
    assert tree_hashes(tmp_path) == before


def test_ownership_is_marked_adopted_and_required_before_a_folder_is_replaced(tmp_path):
    from animal_assets.core.atomic import OWNER_MARKER, ForeignFolderError, claim_folder

    # an earlier version's folder (no marker, only the tool's names) is adopted and kept
    old = tmp_path / "embeddings"
    old.mkdir()
    (old / "embeddings.npy").write_bytes(b"earlier run")
    claim_folder(old, known={"embeddings.npy"})
    assert sorted(p.name for p in old.iterdir()) == [OWNER_MARKER, "embeddings.npy"]
    assert (old / "embeddings.npy").read_bytes() == b"earlier run"
    # a folder atomic_dir writes carries the marker, so the next write replaces it
    target = tmp_path / "val_split"
    for content in ("first", "second"):
        with atomic_dir(target) as tmp:
            (tmp / "ids.csv").write_text(content)
        assert (target / "ids.csv").read_text() == content and (target / OWNER_MARKER).is_file()
    # a folder with anything else is never replaced, and nothing is left behind
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "my_thesis.txt").write_text("work")
    with pytest.raises(ForeignFolderError, match="not written by animal-assets"):
        with atomic_dir(theirs, known={"ids.csv"}) as tmp:
            (tmp / "ids.csv").write_text("x")
    assert [p.name for p in theirs.iterdir()] == ["my_thesis.txt"]
    assert _leftovers(tmp_path) == []
    # a planted link where the swap keeps the old folder is removed, never followed or moved in
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "victim.txt").write_text("work")
    (tmp_path / ".val_split.old").symlink_to(elsewhere)
    with atomic_dir(target) as tmp:
        (tmp / "ids.csv").write_text("third")
    assert (target / "ids.csv").read_text() == "third" and not target.is_symlink()
    assert [p.name for p in elsewhere.iterdir()] == ["victim.txt"]
    assert not (tmp_path / ".val_split.old").exists()


def test_the_lock_never_follows_a_link(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("someone's work\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / ".animal-assets.lock").symlink_to(victim)
    with pytest.raises(OutputBusyError, match="lock file is a symbolic link"):
        with output_lock(tmp_path / "out", holder="run x"):
            pass
    assert victim.read_text() == "someone's work\n"


@pytest.mark.slow
def test_a_second_run_on_a_busy_output_folder_is_refused_naming_the_first(tmp_path):
    dataset = make_dataset(tmp_path, n=12, k=3)
    out = tmp_path / "out"
    with output_lock(out, holder="run 1234-abcd (pid 42)"):
        with refused(tmp_path, str(out), "in use by run 1234-abcd (pid 42)") as box:
            box["proc"] = _cli_in_process(tmp_path, "--dataset", str(dataset), "--output", str(out),
                                          "--select", "raw_images")
    assert sorted(p.name for p in out.iterdir()) == [".animal-assets.lock"]
    assert _run_statuses(tmp_path) == []  # refused before observing: nothing recorded


@pytest.mark.slow
def test_a_tilde_in_a_path_is_the_home_folder(tmp_path):
    dataset = make_dataset(tmp_path, n=12, k=3)
    before = tree_hashes(dataset)
    proc = _cli_in_process(tmp_path, "--dataset", "~/ds", "--output", "~/out", "--select", "raw_images",
                env_extra={"HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "out" / "raw_images" / "images.npy").is_file()
    assert not (tmp_path / "~").exists() and tree_hashes(dataset) == before
    assert _leftovers(tmp_path) == []


# --------------------------------------------------------------------------------------------
# the graph on its own deliverable


def _chain(dataset: Path, out: Path) -> BalancedTrain:
    params = params_from_run_config({"ops": {
        **TINY["ops"], "balanced_train": {"config": {"max_factor": 2.0}},
        "ood_scores": {"config": {"fraction": 0.05, "refine_rounds": 0}},
    }})
    raw = read_dataset(dataset, out / "raw_images")
    emb = compute_embeddings(raw, out / "embeddings", params["embeddings"], device="cpu")
    nearest = find_neighbours(raw, emb, out / "neighbours", params["neighbours"])
    ood = score_outliers(raw, emb, nearest, out / "ood_scores", params["ood_scores"])
    clean = clean_label_decisions(raw, emb, ood, out / "clean_labels", params["clean_labels"])
    val = make_val_split(raw, clean, out / "val_split", params["val_split"])
    return make_balanced_train(raw, clean, val, out / "balanced_train", params["balanced_train"])


@pytest.mark.slow
def test_the_graph_runs_on_its_own_exported_deliverable(tmp_path):
    import pandas as pd

    first_input = write_ds801(tmp_path / "ds", _coloured([60, 12, 12], num_classes=3, seed=4),
                              num_classes=3)
    first = _chain(first_input, tmp_path / "run1")
    assert first.n_generated > 0
    again = Path(first.train.dir)
    before = tree_hashes(again)
    second = _chain(again, tmp_path / "run2")  # failed with "img_...: written twice" before
    assert second.n_generated > 0 and tree_hashes(again) == before

    input_ids = set(labels_of(again))
    table = pd.read_csv(second.train.ids_path)
    generated = table[table["generated"]]
    assert not set(generated["id"]) & input_ids and table["id"].is_unique
    # the case the old ids failed on did come up: a first-draw id was already in the input
    firsts = {derived_image_id(s, 0, seed=0, taken=set()) for s in generated["source_id"]}
    assert firsts & input_ids
    # deterministic: the same input gives the same ids
    third = _chain(again, tmp_path / "run3")
    assert pd.read_csv(third.train.ids_path)["id"].tolist() == table["id"].tolist()


def test_the_preflight_knows_every_folder_the_graph_writes():
    from animal_assets.assets import pipeline_assets
    from animal_assets.core.preflight import OUTPUT_FOLDERS
    from animal_assets.core.stages import SHARD_ASSETS

    # every asset's folder, and that of the input's shards (the other per-shard assets write
    # into their stage's folder)
    assert tuple(OUTPUT_FOLDERS) == tuple(a.key.to_user_string() for a in pipeline_assets(4)
                                          if a.key.to_user_string() not in SHARD_ASSETS.values()
                                          or a.key.to_user_string() == "raw_image_shards")


def test_generated_ids_are_deterministic_and_skip_taken_ones():
    first = derived_image_id("img_a", 0, seed=0, taken=set())
    taken = {first}
    second = derived_image_id("img_a", 0, seed=0, taken=taken)
    assert second != first and taken == {first, second}
    assert derived_image_id("img_a", 0, seed=0, taken={first}) == second
    assert derived_image_id("img_a", 1, seed=0, taken=set()) != first
    assert derived_image_id("img_a", 0, seed=1, taken=set()) != first
    from animal_assets.core.formats import filename_violation

    assert filename_violation(f"{first}.jpg") is None


# --------------------------------------------------------------------------------------------
# archives


def test_a_zip_named_tar_gz_is_read_as_the_zip_it_is(tmp_path):
    folder = make_dataset(tmp_path, n=4, k=2)
    archive = make_archive(folder, "zip", dest=tmp_path / "data.tar.gz")
    before = tree_hashes(archive)
    raw = read_dataset(archive, tmp_path / "out")
    assert raw.n_usable == 4 and tree_hashes(archive) == before


def test_an_encrypted_zip_is_reported_as_encrypted(tmp_path):
    folder = make_dataset(tmp_path, n=3, k=2)
    archive = tmp_path / "locked.zip"
    make_archive(folder, "zip", dest=archive)
    _set_encrypted_flags(archive)
    assert all(i.flag_bits & 0x1 for i in zipfile.ZipFile(archive).infolist())
    with pytest.raises(DatasetError, match=f"{archive}: the archive is encrypted "
                                           r"\(password-protected members such as "):
        read_dataset(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _set_encrypted_flags(path: Path) -> None:
    """Set the "encrypted" flag bit of every member of a zip, in its local and central headers
    (what ``zip -P`` sets; zipfile cannot write encrypted members)."""
    import struct

    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            data[info.header_offset + 6] |= 0x1
    central = struct.unpack_from("<I", data, len(data) - 22 + 16)[0]
    while data[central:central + 4] == b"PK\x01\x02":
        data[central + 8] |= 0x1
        n, m, k = struct.unpack_from("<HHH", data, central + 28)
        central += 46 + n + m + k
    path.write_bytes(bytes(data))


def test_a_huge_tar_member_is_refused_before_it_is_decompressed(tmp_path, monkeypatch):
    from animal_assets.core import archive

    folder = make_dataset(tmp_path, n=3, k=2)
    size = 64 << 20
    monkeypatch.setattr(archive, "MAX_SKIP_BYTES", 16 << 20)
    archive = _tgz_with_member(tmp_path / "bomb.tgz", folder, size=size)
    assert archive.stat().st_size < 1 << 20
    start = time.perf_counter()
    with pytest.raises(DatasetError, match=f"member ds/junk.bin declares {size} bytes, more than "
                                           "the 16777216 bytes"):
        read_dataset(archive, tmp_path / "out")
    assert time.perf_counter() - start < 5 and not (tmp_path / "out").exists()


def test_the_total_size_cap_is_checked_as_members_are_read(tmp_path, monkeypatch):
    from animal_assets.core import archive

    folder = make_dataset(tmp_path, n=20, k=2)
    one = len(image_paths(folder)[0].read_bytes())
    monkeypatch.setattr(archive, "MAX_TOTAL_BYTES", 3 * one)
    read = []
    real = archive.read_regular
    monkeypatch.setattr(archive, "read_regular", lambda *a: read.append(a) or real(*a))
    with pytest.raises(DatasetError, match="expands to more than"):
        read_dataset(folder, tmp_path / "out")
    assert len(read) < 10  # stopped early, not after reading all 21 files


def _tgz_with_member(path: Path, folder: Path, *, size: int) -> Path:
    """A tgz of ``folder`` under ``ds/``, preceded by a member of ``size`` zero bytes."""
    import gzip
    import tarfile

    with gzip.open(path, "wb", compresslevel=1) as gz, tarfile.open(fileobj=gz, mode="w|") as tf:
        info = tarfile.TarInfo("ds/junk.bin")
        info.size = size
        tf.addfile(info, _Zeros(size))
        for file in sorted(folder.rglob("*")):
            tf.add(file, arcname=f"ds/{file.relative_to(folder).as_posix()}")
    return path


@pytest.mark.slow
@pytest.mark.parametrize("case", ["encrypted_zip", "huge_member", "zip_named_tgz"])
def test_archive_cases_on_the_command_line(tmp_path, case):
    folder = make_dataset(tmp_path / "src", n=12, k=3)
    args = ["--output", str(tmp_path / "out"), "--select", "raw_images"]
    if case == "encrypted_zip":
        archive = make_archive(folder, "zip", dest=tmp_path / "locked.zip")
        _set_encrypted_flags(archive)
        parts = (str(archive), "the archive is encrypted")
    elif case == "huge_member":
        archive = _tgz_with_member(tmp_path / "bomb.tgz", folder, size=600 << 20)
        parts = (str(archive), "member ds/junk.bin declares 629145600 bytes",
                 "refused before decompressing it")
    else:
        archive = make_archive(folder, "zip", dest=tmp_path / "data.tar.gz")
        before = tree_hashes(tmp_path / "src")
        proc = _cli_in_process(tmp_path, "--dataset", str(archive), *args)
        assert proc.returncode == 0, proc.stderr[-3000:]
        raw = json.loads((tmp_path / "out" / "raw_images" / "raw.json").read_text())
        assert raw["n_usable"] == 12 and raw["source"] == str(archive)
        assert tree_hashes(tmp_path / "src") == before and _leftovers(tmp_path) == []
        assert _run_statuses(tmp_path).count(dg.DagsterRunStatus.SUCCESS) >= 1
        return
    with refused(tmp_path, *parts, pipeline_ran=True) as box:
        start = time.perf_counter()
        box["proc"] = _cli_in_process(tmp_path, "--dataset", str(archive), *args)
        assert time.perf_counter() - start < 120


class _Zeros:
    """A file-like of ``size`` zero bytes, read in chunks (never held in memory at once)."""

    def __init__(self, size: int):
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


# --------------------------------------------------------------------------------------------
# small things


def test_an_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pixels[:32] = 0  # a top half that rotation moves
    im = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    plain, tagged = (_save(im, exif=e) for e in (None, exif))
    upright, _, info = decode_image(plain, name="a.jpg")
    rotated, reason, info = decode_image(tagged, name="b.jpg")
    assert reason is None and info["exif_transposed"]
    assert np.array_equal(rotated, upright[::-1, ::-1])


def test_the_images_an_exif_orientation_turned_are_counted(tmp_path):
    from PIL import Image

    from animal_assets.core.ingest import load_raw_images, open_raw, summary
    from tests.graph import make_defs, sqlite_instance

    dataset = make_dataset(tmp_path, n=12, k=3)
    target = image_paths(dataset)[0]
    upright, _, _ = decode_image(target.read_bytes(), name=target.name)
    exif = Image.Exif()
    exif[0x0112] = 6  # the stored image is turned 90 degrees counter-clockwise
    im = Image.fromarray(upright)
    plain, tagged = (_save(im, exif=e) for e in (None, exif))
    target.write_bytes(tagged)
    expected = np.asarray(Image.fromarray(decode_image(plain, name="plain.jpg")[0])
                          .transpose(Image.Transpose.ROTATE_270))

    raw = read_dataset(dataset, tmp_path / "raw")
    assert raw.n_exif_transposed == 1 and raw.n_usable == 12
    assert summary(raw)["n_exif_transposed"] == 1
    assert open_raw(raw.root).n_exif_transposed == 1
    images, ok = load_raw_images(raw)
    row = ok.index[ok["id"] == target.stem][0]
    assert np.array_equal(images[row], expected) and not np.array_equal(expected, upright)
    assert (ok["status"] == "ok").all() and (ok["reason"] == "").all()  # not a quarantine reason

    # the asset shows the count in its metadata
    defs = make_defs(tmp_path, str(dataset))
    instance = sqlite_instance(tmp_path)
    job = defs.resolve_job_def("pipeline").get_subset(asset_selection={dg.AssetKey("raw_images")})
    assert job.execute_in_process(instance=instance).success
    event = instance.get_latest_materialization_event(dg.AssetKey("raw_images"))
    assert event.asset_materialization.metadata["n_exif_transposed"].value == 1


def _save(im, *, exif) -> bytes:
    import io

    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95, **({"exif": exif} if exif is not None else {}))
    return buf.getvalue()


@pytest.mark.parametrize("row, fields", [("img_x,drop,,a note, with a comma", 5), ("img_x", 1)])
def test_a_ragged_review_row_is_reported_as_a_wrong_field_count(tmp_path, row, fields):
    path = tmp_path / "review.csv"
    path.write_text(f"id,action,label,note\n{row}\n")
    with pytest.raises(ReviewError, match=rf"{path}, line 2: the row has {fields} fields, the header "
                                          "has 4"):
        read_review(path, known_ids=["img_x"], given=[0], num_classes=2)

"""Progress of long work: throttled progress lines in the run log, and the command line's
progress line (redrawn on a terminal, one line per step elsewhere)."""
from __future__ import annotations

import io
from types import SimpleNamespace

import dagster as dg
import pytest

from animal_assets import runner
from animal_assets.assets import _progress, _training_progress
from animal_assets.core.synthetic.demo import make_demo_dataset
from animal_assets.progress import ProgressBar
from tests.graph import TINY, make_defs, sqlite_instance


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


def context() -> SimpleNamespace:
    return SimpleNamespace(log=Log())


@pytest.mark.parametrize("total, every, expected", [
    (10, 10, 11),  # every step passes a new tenth, plus 0 %
    (1000, 10, 11),  # 0 %, 10 %, ..., 100 %
    (1000, 25, 5),
    (3, 10, 4),
])
def test_progress_lines_are_throttled_to_the_share_done(total, every, expected):
    ctx = context()
    report = _progress(ctx, "embedded images", every=every)
    for done in range(0, total + 1):
        report(done, total)
    assert len(ctx.log.lines) == expected
    assert ctx.log.lines[-1] == f"embedded images {total}/{total} (100%)"


@pytest.mark.parametrize("epochs, steps_per_epoch, per_epoch", [(3, 40, 4), (2, 5, 4), (1, 2, 4)])
def test_training_logs_each_epoch_and_a_few_chunks_of_each(epochs, steps_per_epoch, per_epoch):
    ctx = context()
    on_epoch, on_batch = _training_progress(ctx, epochs, per_epoch=per_epoch)
    total = epochs * steps_per_epoch
    for epoch in range(1, epochs + 1):
        for step in range((epoch - 1) * steps_per_epoch + 1, epoch * steps_per_epoch + 1):
            on_batch(step, total)
        on_epoch({"epoch": epoch, "train_loss": 1.0 / epoch, "val_balanced_acc": None,
                  "images_per_s": 100.0})
    epoch_lines = [line for line in ctx.log.lines if line.startswith("epoch ")]
    chunk_lines = [line for line in ctx.log.lines if line.startswith("training step ")]
    assert epoch_lines[-1].startswith(f"epoch {epochs}/{epochs} (100%): loss ")
    assert len(epoch_lines) == epochs and "val balanced acc n/a" in epoch_lines[0]
    assert epochs <= len(chunk_lines) <= epochs * per_epoch + 1  # + the first step
    assert chunk_lines[-1] == f"training step {total}/{total} (100%), epoch {epochs}/{epochs}"


def step_start(name: str) -> SimpleNamespace:
    event = SimpleNamespace(event_type_value="STEP_START", step_key=name, asset_key=None)
    return SimpleNamespace(dagster_event=event, user_message="", step_key=name)


def materialized(name: str) -> SimpleNamespace:
    event = SimpleNamespace(event_type_value="ASSET_MATERIALIZATION", step_key=name,
                            asset_key=dg.AssetKey(name))
    return SimpleNamespace(dagster_event=event, user_message="", step_key=name)


def message(step: str, text: str) -> SimpleNamespace:
    return SimpleNamespace(dagster_event=None, user_message=text, step_key=step)


EVENTS = [
    step_start("raw_images"), materialized("raw_images"),
    step_start("embeddings"),
    message("embeddings", "embedded images 10/100 (10%)"),
    message("embeddings", "embedded images 20/100 (20%)"),
    message("embeddings", "embedded images 60/100 (60%)"),
    message("embeddings", "an ordinary line without a share"),
    materialized("embeddings"),
    step_start("raw_images_decode_as_64x64_rgb"),  # a check: not an asset of the bar
]


@pytest.mark.parametrize("tty", [True, False])
def test_the_progress_line_counts_assets_and_follows_the_running_one(tty):
    stream = io.StringIO()
    bar = ProgressBar(stream, tty=tty, width=10)
    bar.begin(["raw_images", "embeddings", "ood_scores", "clean_labels"])
    for event in EVENTS[:6]:
        bar(event)
    assert bar.line().startswith("[####------] 1/4 assets ")  # 1.6 of 4 assets
    assert bar.line().endswith("| embeddings 60% embedded images 60/100 (60%)")
    for event in EVENTS[6:]:
        bar(event)
    assert bar.line().startswith("[#####-----] 2/4 assets ")
    bar.finish(True)
    text = stream.getvalue()
    assert text.rstrip().endswith("s") and "run finished after" in text
    if tty:
        assert bar.console_level == "WARNING"
        assert text.count("\r") >= 5 and text.count("\n") == 2
    else:
        assert bar.console_level == "INFO" and "\r" not in text
        lines = text.splitlines()
        # raw_images done; embeddings at 10 % and 60 % (20 % is the same quarter); embeddings done
        assert [line.split("| ")[-1] if "|" in line else line.split(" assets")[0][-3:]
                for line in lines[:-1]] == [
            "1/4", "embeddings 10% embedded images 10/100 (10%)",
            "embeddings 60% embedded images 60/100 (60%)", "2/4"]


@pytest.mark.slow
def test_a_run_reports_its_progress_from_the_real_events(tmp_path):
    dataset = make_demo_dataset(tmp_path / "demo", seed=0, size="tiny").dataset_dir
    stream = io.StringIO()
    summary = runner.run(config=TINY, instance=sqlite_instance(tmp_path),
                         defs=make_defs(tmp_path, str(dataset)), select=["raw_images", "embeddings"],
                         progress=ProgressBar(stream, tty=False))
    assert sorted(summary["assets"]) == ["embeddings", "raw_images"]
    lines = stream.getvalue().splitlines()
    assert any("| embeddings " in line and "embedded images" in line for line in lines), lines
    assert lines[-2].startswith("[" + "#" * 24 + "] 2/2 assets ")
    assert lines[-1].startswith("run finished after ")

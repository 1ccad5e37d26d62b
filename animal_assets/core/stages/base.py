"""What every stage shares: the run context, the stage record and the pieces of a description.

A stage's ``run(config, ctx, **inputs)`` takes its config dataclass, a :class:`RunContext` and
the handles of the stages it reads (by stage name), writes its files under
``ctx.folder(name)`` and returns its own light handle. Its ``describe(result, ctx)`` returns the
metadata a person reads: numbers and strings, and the wrappers below for markdown, tables, JSON
and file paths. The Dagster assets turn those into ``MetadataValue`` s; the dagster-free runner
writes the same pictures and logs the same warnings.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from animal_assets.core.preflight import output_path

Progress = Callable[[int, int], None]


def class_names(names: Sequence[str], num_classes: int) -> list[str]:
    """``names`` checked against K; none given: the classes are called "0", "1", ..."""
    if names:
        if len(names) != num_classes:
            raise ValueError(f"class_names lists {len(names)} names, the labels have K={num_classes}")
        return list(names)
    return [str(k) for k in range(num_classes)]


@dataclass(frozen=True)
class RunContext:
    """Run-wide settings, the same for every stage of one run."""

    output: str | os.PathLike  # the output folder; stage ``name`` writes under ``output/name``
    dataset: str | None = None  # the resolved dataset folder or archive (read by raw_images)
    device: str = "cpu"  # torch device of the encoder and the trainer ("auto": CUDA when present)
    class_names: Sequence[str] = ()  # empty: the classes are called "0", "1", ...
    test_set: str | None = None  # an external clean test set scored by eval_report
    truth_path: str | None = None  # a truth file of a ground-truth benchmark
    review: str | None = None  # a person's review of the cleaning decisions
    cache_dir: str | None = None  # a feature cache shared by runs (embeddings)
    log: Callable[[str], None] = print
    warn: Callable[[str], None] = print
    # progress(what) -> callback(done, total), for long loops; None: no progress lines
    progress: Callable[[str], Progress] | None = None
    # training_progress(epochs) -> (on_epoch(row), on_batch(done, total)); None: none
    training_progress: Callable[[int], tuple] | None = None

    def folder(self, *parts: str) -> Path:
        """``output/parts...`` (:func:`~animal_assets.core.preflight.output_path`)."""
        return output_path(self.output, *parts)

    def names(self, num_classes: int) -> list[str]:
        return class_names(self.class_names, num_classes)

    def progress_of(self, what: str) -> Progress | None:
        return None if self.progress is None else self.progress(what)


@dataclass(frozen=True)
class Sharding:
    """How a per-image stage runs in shards (``ANIMAL_ASSETS_SHARDS``,
    :mod:`animal_assets.core.shards`): each shard's result is a partition of the asset ``asset``,
    and the stage's own asset merges them back into the handle ``run`` would have returned."""

    asset: str  # the partitioned asset's name
    # run_shard(config, ctx, <the stage's inputs>, shard=, shards=) -> handle
    run_shard: Callable[..., Any]
    # merge(config, ctx, <the stage's inputs>, <asset>={key: handle}) -> the stage's handle
    merge: Callable[..., Any]
    describe_shard: Callable[[Any, RunContext], dict]
    # whose the stage's settings are: the shards' (the merge gets None), or the merge's (the
    # shards get None: raw_images reads the input in shards and applies its policies to the whole)
    settings_on_merge: bool = False


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str  # the asset's name and the stage's output folder
    inputs: tuple[str, ...]  # the stages whose handles ``run`` reads, by name
    config: type  # the config dataclass
    run: Callable[..., Any]  # run(config, ctx, **inputs) -> handle
    describe: Callable[[Any, RunContext], dict]  # describe(handle, ctx) -> metadata
    # gate(handle) raises when the stages below must not run on this result
    gate: Callable[[Any], None] | None = None
    optional: bool = False  # run only when asked for (the ablation)
    sharding: Sharding | None = None  # a per-image stage that can run in shards


# -- the pieces of a description ---------------------------------------------------------------


@dataclass(frozen=True)
class Markdown:
    text: str


@dataclass(frozen=True)
class Table:
    """A table with its columns, shown as its first ``max_rows`` rows."""

    frame: pd.DataFrame = field(hash=False)
    max_rows: int = 20


@dataclass(frozen=True)
class Json:
    value: Any


@dataclass(frozen=True)
class FileRef:
    path: str


class Pictures:
    """The pictures of one stage's result: each is written beside its outputs and described as
    inline markdown."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.described: dict[str, Markdown] = {}
        self.n_bytes = 0

    def add(self, key: str, filename: str, data: bytes | None, *, alt: str, caption: str = "") -> None:
        from animal_assets.core import media

        if data is None:
            # nothing to show this time: a picture from an earlier run would mislead
            (self.folder / filename).unlink(missing_ok=True)
            return
        media.write_image(self.folder / filename, data)
        md = media.image_markdown(data, alt=alt, caption=caption)
        self.n_bytes += len(md)
        self.described[key] = Markdown(md)

    def entries(self) -> dict:
        return {**self.described, "media_kb": round(self.n_bytes / 1024, 1)}

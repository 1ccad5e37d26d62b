"""Headless runs of the code location on the instance under ``DAGSTER_HOME``.

Used by the ``animal-assets`` command and by the tests: observe the input and the review file,
materialize the graph (or only what is unsynced) with an optional progress line, and collect
per-asset timings, check results and the report.
"""
from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass

import dagster as dg

from animal_assets.cluster import sharded_run_config
from animal_assets.core.atomic import OutputBusyError, output_lock
from animal_assets.core.config import load_run_config
from animal_assets.core.pipeline import summarise_run, with_precision
from animal_assets.core.preflight import InputError
from animal_assets.core.stages import SHARD_ASSETS, STAGES
from animal_assets.progress import ProgressBar


class RunFailed(RuntimeError):
    """The run did not complete; the message says which step or check and why, in one line."""

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result


# Step events are DEBUG; INFO keeps the console to the assets' own progress lines.
_QUIET = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


def _defs() -> dg.Definitions:
    """The code location's definitions over the inputs the environment names now."""
    from animal_assets.definitions import build_defs

    return build_defs()


def pipeline_assets(defs: dg.Definitions) -> list:
    """The graph's assets in the definitions (without the observable sources), in stage order."""
    return [a for a in defs.assets
            if isinstance(a, dg.AssetsDefinition) and a.key.to_user_string() not in SOURCES]


def check_inputs(defs: dg.Definitions, *, summary_json: str | None = None) -> None:
    """Run the preflight (:mod:`animal_assets.core.preflight`) on the inputs the definitions'
    resources name, before anything is written; raises :class:`RunFailed` with its line."""
    try:
        defs.resources["dataset"].check(defs.resources["storage"], summary_json=summary_json)
    except InputError as err:
        raise RunFailed(str(err)) from None


def observe(
    instance: dg.DagsterInstance | None = None, defs: dg.Definitions | None = None,
) -> dict[str, str]:
    """Record the data versions of the input dataset and of the review file; returns them by
    source name."""
    instance = instance or dg.DagsterInstance.get()
    defs = defs or _defs()
    result = defs.resolve_job_def("observe_sources").execute_in_process(
        instance=instance, raise_on_error=False, run_config=_QUIET, tags=location_tag(),
    )
    if not result.success:
        raise RunFailed(_failure_line(result), result)
    versions = {}
    for event in result.all_events:
        if event.event_type_value == "ASSET_OBSERVATION":
            obs = event.asset_observation_data.asset_observation
            versions[obs.asset_key.to_user_string()] = obs.data_version or ""
    return versions


#: The tag under which Dagster records the data version of a materialization.
_DATA_VERSION_TAG = "dagster/data_version"
#: The data version Dagster assumes for a source that was never observed.
_INITIAL = "INITIAL"


def _latest_record(instance: dg.DagsterInstance, key: dg.AssetKey):
    """The latest materialization or observation of ``key``, whichever came last, or None."""
    records = [*instance.fetch_materializations(key, limit=1).records,
               *instance.fetch_observations(key, limit=1).records]
    return max(records, key=lambda record: record.storage_id) if records else None


def _data_version(instance: dg.DagsterInstance, key: dg.AssetKey) -> str | None:
    """The current data version of ``key``: its latest event's (None when a materializable asset
    has none; a source that was never observed is taken as it is, ``INITIAL``)."""
    record = _latest_record(instance, key)
    if record is None:
        return _INITIAL if key.to_user_string() in SOURCES else None
    if record.asset_observation is not None:
        version = record.asset_observation.data_version
    else:
        version = record.asset_materialization.tags.get(_DATA_VERSION_TAG)
    return version or _INITIAL


def sync_status(
    instance: dg.DagsterInstance | None = None, defs: dg.Definitions | None = None,
) -> dict[str, str]:
    """Each pipeline asset's status: synced, unsynced, downstream of an unsynced asset, or
    missing.

    An asset is unsynced by Dagster's rule, read from the provenance its latest materialization
    recorded (:class:`dagster.DataProvenance`): its code version changed since, a dependency was
    added or removed, or a dependency's data version is no longer the one it was computed from.
    """
    instance = instance or dg.DagsterInstance.get()
    defs = defs or _defs()
    graph = defs.resolve_asset_graph()
    versions: dict[dg.AssetKey, str | None] = {}  # each dependency's, read once

    def moved(parent: dg.AssetKey, before: str) -> bool:
        if parent not in versions:
            versions[parent] = _data_version(instance, parent)
        now = versions[parent]
        return before != now and not (before == _INITIAL and now is None)

    def partitions_moved(parent: dg.AssetKey, storage_id: int | None) -> bool:
        # What Dagster records for every partition of a parent together is a hash of theirs;
        # the event it points at tells whether a partition was materialized since.
        latest = instance.fetch_materializations(parent, limit=1).records
        return storage_id is None or bool(latest) and latest[0].storage_id > storage_id

    def unsynced_record(record, key) -> bool:
        provenance = dg.DataProvenance.from_tags(record.asset_materialization.tags)
        parents = set(graph.get(key).parent_keys)
        code_version = defs.resolve_assets_def(key).code_versions_by_key.get(key)
        return (
            provenance is None
            or bool(code_version and code_version != provenance.code_version)
            or set(provenance.input_data_versions) != parents
            or any(partitions_moved(p, provenance.input_storage_ids.get(p))
                   if graph.get(p).is_partitioned else moved(p, v.value)
                   for p, v in provenance.input_data_versions.items())
        )

    out: dict[str, str] = {}
    for asset in pipeline_assets(defs):
        key = asset.key
        if asset.partitions_def is not None:  # every partition's latest materialization
            keys = asset.partitions_def.get_partition_keys()
            records = [instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[k]), limit=1).records
                for k in keys]
            if not all(records):
                out[key.to_user_string()] = "missing"
                continue
            unsynced = any(unsynced_record(r[0], key) for r in records)
        else:
            record = instance.fetch_materializations(key, limit=1).records
            if not record:
                out[key.to_user_string()] = "missing"
                continue
            unsynced = unsynced_record(record[0], key)
        if unsynced:
            status = "unsynced"
        elif any(out.get(p.to_user_string(), "synced") != "synced"
                 for p in graph.get(key).parent_keys):
            status = "upstream unsynced"
        else:
            status = "synced"
        out[key.to_user_string()] = status
    return out


def run(
    *, config: str | dict = "default", select: list[str] | None = None, unsynced: bool = False,
    instance: dg.DagsterInstance | None = None, defs: dg.Definitions | None = None,
    observe_first: bool = True, progress: ProgressBar | None = None,
    summary_json: str | None = None, precision: str | None = None, console_errors: bool = True,
    parallel_shards: int = 1,
) -> dict:
    """Validate every input (:func:`check_inputs`), take the output folder's lock, then observe
    the input and the review file and materialize the selected assets (default: all) and their
    checks; with ``unsynced``, only those of them that are not synced (:func:`sync_status`: out
    of date, below one that is, or never materialized). ``progress`` is shown as the run goes.
    ``summary_json`` is where the caller will write the summary (validated with the rest).
    ``precision`` (``auto``, ``fp32``, ``bf16``) overrides the run config's for the encoder and
    the trainer. ``console_errors``: whether the console log prints ERROR records (false: the
    caller reports a failure in one line).

    Raises :class:`RunFailed` with one clear line when an input breaks a rule, another run holds
    the output folder, or a step or a blocking check fails.
    """
    instance = instance or dg.DagsterInstance.get()
    defs = defs or _defs()
    check_inputs(defs, summary_json=summary_json)
    names = [a.key.to_user_string() for a in pipeline_assets(defs)]
    unknown = set(select or []) - set(names)
    if unknown:
        raise RunFailed(f"unknown asset(s) {sorted(unknown)}; the assets are {names}")
    run_id = str(uuid.uuid4())
    try:
        # The lock comes first: a run refused on a busy output folder observes nothing.
        with output_lock(defs.resources["storage"].path(),
                         holder=f"run {run_id} (pid {os.getpid()})",
                         on_stale=lambda holder: fail_stale_run(instance, holder)):
            return _run_locked(
                run_id, config=config, select=select, unsynced=unsynced, instance=instance,
                defs=defs, observe_first=observe_first, progress=progress, precision=precision,
                console_errors=console_errors, parallel_shards=parallel_shards)
    except OutputBusyError as err:
        raise RunFailed(str(err)) from None


_HOLDER = re.compile(r"run ([0-9a-f-]{36}) \(pid (\d+)\)")


def fail_stale_run(instance: dg.DagsterInstance, holder: str) -> None:
    """Mark failed the run that the lock file names, when it was left started or starting: its
    process was killed (the lock was free), so it will never report its end itself."""
    match = _HOLDER.fullmatch(holder)
    run = instance.get_run_by_id(match.group(1)) if match else None
    if run is not None and run.status in (dg.DagsterRunStatus.STARTED,
                                          dg.DagsterRunStatus.STARTING,
                                          dg.DagsterRunStatus.NOT_STARTED):
        instance.report_run_failed(run, message=(
            f"its process (pid {match.group(2)}) ended without finishing: the output folder's "
            "lock was free when the next run took it"))


#: The observable sources a run observes first (the input dataset and the review file).
SOURCES = ("input_dataset", "review_file")


def _observed(instance: dg.DagsterInstance) -> dict[str, str | None]:
    """The latest recorded data version of each source (None: never observed)."""
    latest = {}
    for name in SOURCES:
        records = instance.fetch_observations(dg.AssetKey(name), limit=1).records
        observation = records[0].asset_observation if records else None
        latest[name] = observation.data_version if observation else None
    return latest


def _restore_observations(instance: dg.DagsterInstance, before: dict[str, str | None]) -> None:
    """Record again each source version that the run's own observation replaced, so that a run
    that failed before it materialized anything leaves every asset's sync status as it was."""
    after = _observed(instance)
    for name, version in before.items():
        if version is not None and after.get(name) != version:
            instance.report_runless_asset_event(dg.AssetObservation(
                asset_key=name, tags={"dagster/data_version": version},
                metadata={"restored": "the previous version: a run that observed another one "
                                      "failed before it materialized anything"}))


def _run_locked(run_id: str, *, config, select, unsynced, instance, defs, observe_first, progress,
                precision, console_errors, parallel_shards) -> dict:
    observed_before = _observed(instance)
    if observe_first:
        observe(instance, defs)
    names = [a.key.to_user_string() for a in pipeline_assets(defs)]
    status = None
    if unsynced:  # of the selection, where there is one
        status = sync_status(instance, defs)
        wanted = select or names
        select = [n for n in wanted if status.get(n) != "synced"]
        if not select:
            return {"assets": {}, "message": "every selected asset is synced; nothing to do"
                    if len(wanted) < len(names) else "every asset is synced; nothing to do"}
    run_config = config if isinstance(config, dict) else load_run_config(config)
    if precision is not None:
        run_config = with_precision(run_config, precision)
    tags = run_tags(config, run_config, defs)
    shard_keys = _shard_keys(defs)
    run_config = sharded_run_config(run_config, max(1, len(shard_keys)))
    console = {"log_level": "INFO" if progress is None else progress.console_level,
               "errors": console_errors}
    if progress is None:
        run_config = {"loggers": {"console": {"config": console}}, **run_config}
    else:
        progress.begin(select or names)
        run_config = {**run_config, "loggers": {"console": {"config": console}}}
    if not shard_keys:
        plan = [(select, None)]
    else:
        plan = _sharded_plan(defs, select or names, instance, status)
    results = []
    with _ShardPool(parallel_shards) as pool:
        for part, (selection, partitions) in enumerate(plan):
            if partitions is None:
                # (a sharded graph's runs each select a part of it: they run as ``pipeline``)
                result = _execute(defs, job_name(config, whole=not selection), selection, run_config,
                                  instance, tags,
                                  run_id=run_id if part == len(plan) - 1 else str(uuid.uuid4()),
                                  progress=progress)
                outcomes = [(result.success, result)]
            else:
                outcomes = _execute_shards(defs, selection, run_config, instance, tags, partitions,
                                           pool)
            results.extend(r for _, r in outcomes)
            failed = next((r for ok, r in outcomes if not ok), None)
            if failed is not None:
                if progress is not None:
                    progress.finish(False)
                if not any(_materialized(r) for r in results):
                    _restore_observations(instance, observed_before)
                raise RunFailed(failed if isinstance(failed, str) else _failure_line(failed),
                                None if isinstance(failed, str) else failed)
    if progress is not None:
        progress.finish(True)
    return _summary(results, defs)


def _materialized(result) -> bool:
    if isinstance(result, ShardRun):
        return result.success
    return any(e.event_type_value == "ASSET_MATERIALIZATION" for e in result.all_events)


def _execute(defs, job: str, selection, run_config, instance, tags, *, run_id, progress,
             partition_key=None):
    """One in-process run of the job ``job`` on ``selection`` (None: the whole job)."""
    job = defs.resolve_job_def(job)
    if selection:
        job = job.get_subset(asset_selection={dg.AssetKey(n) for n in selection})
        # Dagster rejects config for ops outside the subset.
        ops = {k: v for k, v in run_config.get("ops", {}).items() if k in selection}
        run_config = {**run_config, "ops": ops}
    if progress is not None:
        instance.add_event_listener(run_id, progress)
    return job.execute_in_process(instance=instance, run_config=run_config,
                                  raise_on_error=False, run_id=run_id, tags=tags,
                                  partition_key=partition_key)


def _sharded(defs: dg.Definitions) -> list[str]:
    """The partitioned (per-shard) assets of the graph, in stage order; none when unsharded."""
    return [a.key.to_user_string() for a in pipeline_assets(defs)
            if a.key.to_user_string() in SHARD_ASSETS.values() and a.partitions_def is not None]


def _shard_keys(defs: dg.Definitions) -> list[str]:
    """The shards' partition keys; none for an unsharded graph."""
    names = _sharded(defs)
    return defs.resolve_assets_def(names[0]).partitions_def.get_partition_keys() if names else []


def _sharded_plan(defs: dg.Definitions, selection: list[str], instance: dg.DagsterInstance,
                  status: dict[str, str] | None = None) -> list[tuple[list[str], list | None]]:
    """The runs of ``selection`` on a sharded graph, in order: runs of the unpartitioned assets
    and, between them, every shard of one layer of per-shard assets (one run each, the shard's
    partition of each selected per-shard asset): the input's shards, ``raw_images``, the shards
    of the stages that read it, what lies below them. A per-shard asset joins a selection that
    has assets both above and below it (a new raw_images must reach its merge through it), and
    the input's shards join a selection of ``raw_images`` when they are not synced with the
    input as last observed (``raw_images`` would find them behind; ``status``: the
    :func:`sync_status` the caller already read, else read here when needed)."""
    graph = defs.resolve_asset_graph()
    order = [a.key.to_user_string() for a in pipeline_assets(defs)]  # parents first
    sharded = set(_sharded(defs))
    selected = set(selection)
    for name in order:
        if name not in sharded or name in selected:
            continue
        above = _reachable(graph, name, "parent_keys") & set(order)
        under = _reachable(graph, name, "child_keys")
        merge = next(s.name for s in STAGES if s.sharding and s.sharding.asset == name)
        if selected & above and selected & under:
            selected.add(name)
        elif not above and merge in selected:
            status = status or sync_status(instance, defs)
            if status[name] != "synced":
                selected.add(name)
    # each asset's run: the first after its parents', of its kind (per shard: odd; else even)
    rank: dict[str, int] = {}
    for name in order:
        parents = [k.to_user_string() for k in graph.get(dg.AssetKey(name)).parent_keys]
        first = max((rank[p] for p in parents if p in rank), default=0)
        rank[name] = first if (first % 2 == 1) == (name in sharded) else first + 1
    plan = []
    for level in sorted({rank[n] for n in selected}):
        names = [n for n in order if n in selected and rank[n] == level]
        plan.append((names, _shard_keys(defs) if level % 2 else None))
    return plan


def _reachable(graph, name: str, direction: str) -> set[str]:
    """The assets above (``parent_keys``) or below (``child_keys``) ``name``."""
    seen: set[str] = set()
    todo = [dg.AssetKey(name)]
    while todo:
        for key in getattr(graph.get(todo.pop()), direction):
            if key.to_user_string() not in seen:
                seen.add(key.to_user_string())
                todo.append(key)
    return seen


@dataclass(frozen=True)
class ShardRun:
    """What a shard's run, executed in another process, reports back."""

    run_id: str
    partition: str
    success: bool
    failure: str
    timings: dict


class _ShardPool:
    """The processes that run shards ``parallel`` at a time, started on first use and kept for
    every layer of shards of one command (each start imports the project again); none for one
    at a time."""

    def __init__(self, parallel: int) -> None:
        self.parallel, self._pool = parallel, None

    def __enter__(self) -> _ShardPool:
        return self

    def __exit__(self, *exc) -> None:
        if self._pool is not None:
            self._pool.shutdown()

    def map(self, fn, jobs: list) -> list:
        if self._pool is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            self._pool = ProcessPoolExecutor(max_workers=self.parallel,
                                             mp_context=multiprocessing.get_context("spawn"))
        return list(self._pool.map(fn, jobs))


def _execute_shards(defs, selection, run_config, instance, tags, keys, pool: _ShardPool):
    """Every shard's run: ``pool.parallel`` at a time, each in a process of the pool (as a run
    launcher would start them), or one after another in this process."""
    ops = {k: v for k, v in run_config.get("ops", {}).items() if k in selection}
    shard_config = {**run_config, "ops": ops}
    if pool.parallel <= 1:
        out = []
        for key in keys:
            result = _execute(defs, "pipeline", selection, shard_config, instance, tags,
                              run_id=str(uuid.uuid4()), progress=None, partition_key=key)
            out.append((result.success, result))
            if not result.success:
                break
        return out
    from animal_assets.core.jobs import core_share

    threads = core_share(pool.parallel)
    # the resources travel as their fields (a ConfigurableResource does not pickle)
    resources = {name: (type(r), r.model_dump()) for name, r in defs.resources.items()}
    jobs = [(resources, len(keys), instance.get_ref(), selection, shard_config, tags, key, threads)
            for key in keys]
    runs = pool.map(_shard_run, jobs)
    return [(run.success, run if run.success else run.failure) for run in runs]


def _shard_run(job) -> ShardRun:
    """One shard's run in a process of its own, on the same instance."""
    resources, shards, instance_ref, selection, run_config, tags, key, threads = job
    from animal_assets.core.jobs import use_core_share
    from animal_assets.definitions import build_defs

    use_core_share(threads)
    defs = build_defs({name: cls(**fields) for name, (cls, fields) in resources.items()},
                      shards=shards)
    with dg.DagsterInstance.from_ref(instance_ref) as instance:
        result = _execute(defs, "pipeline", selection, run_config, instance, tags,
                          run_id=str(uuid.uuid4()), progress=None, partition_key=key)
        return ShardRun(result.run_id, key, result.success,
                        "" if result.success else _failure_line(result), _timings(result, defs))


def job_name(config: str | dict, *, whole: bool = True) -> str:
    """The job a run of ``config`` runs as: ``demo_pipeline`` for the whole graph on the demo
    config, else ``pipeline``. (Dagster carries a job's own config into each of its subsets,
    where the steps left out make it invalid, so a part of the graph runs as ``pipeline``.)"""
    from animal_assets.definitions import JOB_OF_CONFIG

    named = JOB_OF_CONFIG.get(config, "pipeline") if isinstance(config, str) else "pipeline"
    return named if whole else "pipeline"


#: The tag by which the UI lists a job's runs on its page: ``repository@location``. Dagster sets
#: it on the runs it launches itself; a run executed here in process carries it explicitly.
REPOSITORY_TAG = ".dagster/repository"
#: The name Dagster gives the repository of a code location's ``Definitions``.
REPOSITORY = "__repository__"


def location_tag() -> dict[str, str]:
    """The tag that files a run under this code location (see :data:`REPOSITORY_TAG`)."""
    from animal_assets.definitions import LOCATION

    return {REPOSITORY_TAG: f"{REPOSITORY}@{LOCATION}"}


def run_tags(config: str | dict, run_config: dict, defs: dg.Definitions) -> dict[str, str]:
    """Tags that say what a run used (dataset, config, device and the precision of the encoder
    and of the trainer, "auto" resolved for this machine), and the code location it belongs to,
    so that the UI lists it under its job."""
    from animal_assets.core.device import resolve_device
    from animal_assets.core.precision import resolve_precision

    ops = run_config.get("ops", {}) or {}
    device = defs.resources["compute"].device
    dev = resolve_device(device)

    def precision_of(op: str) -> str:
        asked = ((ops.get(op) or {}).get("config") or {}).get("precision", "auto")
        return resolve_precision(asked, dev)

    return {
        "animal_assets/dataset": defs.resources["dataset"].path or "demo",
        "animal_assets/config": config if isinstance(config, str) else "custom",
        "animal_assets/device": str(dev),
        "animal_assets/precision": f"embeddings {precision_of('embeddings')}, "
                                   f"resnet34_model {precision_of('resnet34_model')}",
        **location_tag(),
    }


def check_label(evaluation) -> str:
    """``asset.check``: a check's name is only unique under its asset."""
    return f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"


def _failure_line(result) -> str:
    failed_checks = [
        e for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    if failed_checks:
        parts = [f"check {check_label(c)} failed: {c.description}" for c in failed_checks]
        return "; ".join(parts) + " (nothing downstream ran)"
    for event in result.all_events:
        if event.is_step_failure:
            return f"step {event.step_key} failed: {_error_line(event.step_failure_data)}"
    return f"run {result.run_id} failed"


#: Exceptions whose message already says what is wrong (naming the file or class and the rule):
#: the line shows the message alone, without the exception's name.
_MESSAGE_ONLY = frozenset({"DatasetError", "ReviewError", "ValueError", "RuntimeError", "Failure",
                           "InputError", "DiskFullError", "OutputBusyError"})


def _error_line(data) -> str:
    """The first line of a step's own error, without Dagster's wrapper or a module path."""
    described = data.user_failure_data.description if data.user_failure_data else None
    if described and described.strip():
        return described.strip().splitlines()[0]
    error = data.error
    if error is None:
        return "unknown error"
    # the step's exception is the cause of Dagster's DagsterExecutionStepExecutionError
    if error.cause and "Failure" not in error.cls_name:
        error = error.cause
    text = error.message.strip()
    line = text.splitlines()[0] if text else error.cls_name
    qualified, sep, rest = line.partition(": ")
    if sep and qualified.rsplit(".", 1)[-1] == error.cls_name:
        line = rest if error.cls_name in _MESSAGE_ONLY else f"{error.cls_name}: {rest}"
    return line


def _timings(result, defs) -> dict[str, dict]:
    timings: dict[str, dict] = {}
    for asset in pipeline_assets(defs):
        name = asset.key.to_user_string()
        mats = result.asset_materializations_for_node(name)
        if mats:
            md = mats[-1].metadata
            label = f"{name}[{mats[-1].partition}]" if mats[-1].partition else name
            timings[label] = {
                "seconds": md["wall_seconds"].value, "peak_rss_mb": md["peak_rss_mb"].value,
            }
    return timings


def _summary(results: list, defs) -> dict:
    """What the runs of one command did, the last run's report and checks first."""
    timings: dict[str, dict] = {}
    checks: dict[str, str] = {}
    outputs = {}
    for result in results:
        if isinstance(result, ShardRun):
            timings.update(result.timings)
            continue
        timings.update(_timings(result, defs))
        checks.update({
            check_label(e): ("passed" if e.passed else f"failed ({e.severity.value}): {e.description}")
            for e in result.get_asset_check_evaluations()
        })
        for name in ("eval_report", "ablation_report"):
            if result.asset_materializations_for_node(name):
                outputs[name] = result.output_for_node(name)
    resources = defs.resources
    dataset = resources["dataset"]
    if "eval_report" in outputs:
        summary = summarise_run(outputs["eval_report"], timings, dataset=dataset.path or "demo",
                                device=resources["compute"].device)
    else:
        summary = {"assets": timings}
    if "ablation_report" in outputs:
        ablation = outputs["ablation_report"]
        summary["ablation"] = {"recipes": ablation["recipes"], "path": ablation["path"],
                               "markdown": ablation["markdown"]}
    summary.update(run_id=results[-1].run_id, checks=checks,
                   outputs=str(resources["storage"].path()))
    if len(results) > 1:
        summary["run_ids"] = [r.run_id for r in results]
    return summary


def print_summary(summary: dict) -> None:
    if "message" in summary:
        print(summary["message"])
        return
    print(f"run {summary.get('run_id')}")
    width = max([16, *map(len, summary["assets"])])
    for name, t in summary["assets"].items():
        print(f"  {name:{width}s} {t['seconds']:8.1f} s  peak {t['peak_rss_mb']:7.0f} MiB")
    for name, verdict in summary.get("checks", {}).items():
        print(f"  check {name}: {verdict}")
    print(f"outputs: {summary.get('outputs')}")
    if "report_path" in summary:
        print(f"report:  {summary['report_path']}")
        print(f"balanced accuracy on val_split: {summary['val_balanced_accuracy']:.4f}")
    if "test_balanced_accuracy" in summary:
        print(f"balanced accuracy on the external test set: "
              f"{summary['test_balanced_accuracy']:.4f}")
    if "cleaning" in summary:
        from animal_assets.core.scoring import scores_markdown

        print(scores_markdown(summary["cleaning"], estimated=summary["cleaning"].get("estimated")))
    if "ablation" in summary:
        print("ablation (val_split balanced accuracy per training recipe):")
        print(summary["ablation"]["markdown"])

"""Headless runs of the code location on the instance under ``DAGSTER_HOME``.

Used by the ``animal-assets`` command and by the tests: observe the input and the review file,
materialize the graph (or only what is unsynced) with an optional progress line, and collect
per-asset timings, check results and the report.
"""
from __future__ import annotations

import os
import re
import uuid

import dagster as dg

from animal_assets.assets import PIPELINE_ASSETS
from animal_assets.core.atomic import OutputBusyError, output_lock
from animal_assets.core.config import load_run_config
from animal_assets.core.pipeline import summarise_run, with_precision
from animal_assets.core.preflight import InputError
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

    out: dict[str, str] = {}
    for asset in PIPELINE_ASSETS:
        key = asset.key
        record = instance.fetch_materializations(key, limit=1).records
        if not record:
            out[key.to_user_string()] = "missing"
            continue
        provenance = dg.DataProvenance.from_tags(record[0].asset_materialization.tags)
        parents = set(graph.get(key).parent_keys)
        code_version = defs.resolve_assets_def(key).code_versions_by_key.get(key)
        unsynced = (
            provenance is None
            or bool(code_version and code_version != provenance.code_version)
            or set(provenance.input_data_versions) != parents
            or any(moved(p, v.value) for p, v in provenance.input_data_versions.items())
        )
        if unsynced:
            status = "unsynced"
        elif any(out.get(p.to_user_string(), "synced") != "synced" for p in parents):
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
) -> dict:
    """Validate every input (:func:`check_inputs`), take the output folder's lock, then observe
    the input and the review file and materialize the selected assets (default: all) and their
    checks; ``progress`` is shown as the run goes. ``summary_json`` is where the caller will
    write the summary (validated with the rest). ``precision`` (``auto``, ``fp32``, ``bf16``)
    overrides the run config's for the encoder and the trainer. ``console_errors``: whether the
    console log prints ERROR records (false: the caller reports a failure in one line).

    Raises :class:`RunFailed` with one clear line when an input breaks a rule, another run holds
    the output folder, or a step or a blocking check fails.
    """
    instance = instance or dg.DagsterInstance.get()
    defs = defs or _defs()
    check_inputs(defs, summary_json=summary_json)
    names = [a.key.to_user_string() for a in PIPELINE_ASSETS]
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
                console_errors=console_errors)
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
                precision, console_errors) -> dict:
    observed_before = _observed(instance)
    if observe_first:
        observe(instance, defs)
    names = [a.key.to_user_string() for a in PIPELINE_ASSETS]
    if unsynced:
        select = [n for n, s in sync_status(instance, defs).items() if s != "synced"]
        if not select:
            return {"assets": {}, "message": "every asset is synced; nothing to do"}
    run_config = config if isinstance(config, dict) else load_run_config(config)
    if precision is not None:
        run_config = with_precision(run_config, precision)
    tags = run_tags(config, run_config, defs)
    job = defs.resolve_job_def(job_name(config, whole=not select))
    if select:
        job = job.get_subset(asset_selection={dg.AssetKey(n) for n in select})
        # Dagster rejects config for ops outside the subset.
        ops = {k: v for k, v in run_config.get("ops", {}).items() if k in select}
        run_config = {**run_config, "ops": ops}
    console = {"log_level": "INFO" if progress is None else progress.console_level,
               "errors": console_errors}
    if progress is None:
        run_config = {"loggers": {"console": {"config": console}}, **run_config}
    else:
        progress.begin(select or names)
        instance.add_event_listener(run_id, progress)
        run_config = {**run_config, "loggers": {"console": {"config": console}}}
    result = job.execute_in_process(instance=instance, run_config=run_config,
                                    raise_on_error=False, run_id=run_id, tags=tags)
    if progress is not None:
        progress.finish(result.success)
    if not result.success:
        if not any(e.event_type_value == "ASSET_MATERIALIZATION" for e in result.all_events):
            _restore_observations(instance, observed_before)
        raise RunFailed(_failure_line(result), result)
    return _summary(result, defs)


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


def _summary(result, defs) -> dict:
    timings: dict[str, dict] = {}
    for asset in PIPELINE_ASSETS:
        name = asset.key.to_user_string()
        mats = result.asset_materializations_for_node(name)
        if mats:
            md = mats[-1].metadata
            timings[name] = {
                "seconds": md["wall_seconds"].value, "peak_rss_mb": md["peak_rss_mb"].value,
            }
    checks = {
        check_label(e): ("passed" if e.passed else f"failed ({e.severity.value}): {e.description}")
        for e in result.get_asset_check_evaluations()
    }
    resources = defs.resources
    dataset = resources["dataset"]
    if "eval_report" in timings:
        report = result.output_for_node("eval_report")
        summary = summarise_run(report, timings, dataset=dataset.path or "demo",
                                device=resources["compute"].device)
    else:
        summary = {"assets": timings}
    if "ablation_report" in timings:
        ablation = result.output_for_node("ablation_report")
        summary["ablation"] = {"recipes": ablation["recipes"], "path": ablation["path"],
                               "markdown": ablation["markdown"]}
    summary.update(run_id=result.run_id, checks=checks,
                   outputs=str(resources["storage"].path()))
    return summary


def print_summary(summary: dict) -> None:
    if "message" in summary:
        print(summary["message"])
        return
    print(f"run {summary.get('run_id')}")
    for name, t in summary["assets"].items():
        print(f"  {name:16s} {t['seconds']:8.1f} s  peak {t['peak_rss_mb']:7.0f} MiB")
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

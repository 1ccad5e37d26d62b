"""Run the whole pipeline without dagster: the stage table's stages, in its order, on one machine.

For a machine that offers only Python with torch, torchvision, scikit-learn, pandas and pillow
(plus cleanlab and the encoder wheel). The Dagster graph is the primary interface; this runner
exists so the core can be exercised where dagster cannot be installed, and writes the same
summary JSON as ``animal-assets run``::

    python -m animal_assets.core.pipeline DATASET --out var/outputs --config default \\
        --test-set path/to/clean-test --json var/run.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from animal_assets.core.atomic import OutputBusyError, output_lock, write_json
from animal_assets.core.config import load_run_config, params_from_run_config
from animal_assets.core.precision import PRECISIONS
from animal_assets.core.preflight import claim_asset_folder, expand, preflight
from animal_assets.core.profiling import measure
from animal_assets.core.shards import check_count, shard_key, shards_from_environment
from animal_assets.core.stages import STAGES, RunContext, Stage

def with_precision(run_config: dict, precision: str) -> dict:
    """``run_config`` with ``precision`` set for the encoder and the trainer."""
    ops = dict(run_config.get("ops", {}) or {})
    for op in ("embeddings", "resnet34_model"):
        entry = dict(ops.get(op) or {})
        entry["config"] = {**(entry.get("config") or {}), "precision": precision}
        ops[op] = entry
    return {**run_config, "ops": ops}


def machine_description(device: str) -> str:
    import torch

    from animal_assets.core.device import resolve_device

    dev = resolve_device(device)
    gpu = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "no GPU"
    return f"{platform.machine()} {torch.get_num_threads()} threads, {gpu}, torch {torch.__version__}"


def run_pipeline(
    dataset: str, out_dir: str | Path, *, run_config: dict, device: str = "auto",
    truth_path: str | None = None, test_set: str | None = None,
    class_names: list[str] | None = None, log=print, ablation: bool = False,
    summary_json: str | None = None, review: str | None = None, shards: int = 1,
) -> dict:
    """Run every stage of the table and return the summary (per-stage wall time and peak
    memory, accuracies); the ablation only with ``ablation``; the per-image stages in
    ``shards`` shards.

    Every input is validated first (:func:`animal_assets.core.preflight.preflight`, the same
    rules as the Dagster graph's) and the stages run under the output folder's lock.
    """
    out = expand(out_dir)
    params = params_from_run_config(run_config)
    preflight(dataset, out, test_set=test_set, truth=truth_path, class_names=class_names,
              summary_json=summary_json, review=review)
    ctx = RunContext(output=out, dataset=str(dataset), device=device,
                     class_names=tuple(class_names or ()), test_set=test_set,
                     truth_path=truth_path, review=review, log=log, warn=log,
                     training_progress=lambda epochs: (
                         lambda row: log(f"  epoch {row['epoch']}: {row}"), None))
    stages = [s for s in STAGES if ablation or not s.optional]
    timings: dict[str, dict] = {}
    with output_lock(out, holder=f"the dagster-free runner (pid {os.getpid()})"):
        results = run_stages(ctx, params, stages=stages, timings=timings, shards=shards)
    summary = summarise_run(results["eval_report"], timings, dataset=dataset, device=device)
    if "ablation_report" in results:
        result = results["ablation_report"]
        summary["ablation"] = {"recipes": result["recipes"], "path": result["path"]}
    return summary


def run_stages(ctx: RunContext, params: dict, *, stages: Sequence[Stage] = STAGES,
               describe: bool = True, timings: dict | None = None, shards: int = 1) -> dict:
    """Run ``stages`` in order on what the earlier ones returned; returns the handles by stage
    name. With ``describe``, each stage's pictures are written and its warnings logged as in the
    Dagster graph; ``timings`` gains each stage's wall time and peak memory. With ``shards`` > 1
    a stage that can run in shards runs each shard in turn, then merges them, as the sharded
    graph does."""
    results: dict = {}
    for stage in stages:
        inputs = {name: results[name] for name in stage.inputs}
        ctx.log(f"[{stage.name}] running")
        with measure() as stats:
            if shards > 1 and stage.sharding is not None:
                sharding, settings = stage.sharding, params.get(stage.name)
                on_shards, on_merge = ((None, settings) if sharding.settings_on_merge
                                       else (settings, None))
                parts = {shard_key(k, shards): sharding.run_shard(
                    on_shards, ctx, shard=k, shards=shards, **inputs) for k in range(shards)}
                handle = sharding.merge(on_merge, ctx, **inputs, **{sharding.asset: parts})
            else:
                handle = stage.run(params.get(stage.name), ctx, **inputs)
        claim_asset_folder(ctx.output, stage.name)  # written by the stage: marked as the tool's
        if stage.gate is not None:
            stage.gate(handle)
        if timings is not None:
            timings[stage.name] = {"seconds": round(stats.seconds, 2),
                                   "peak_rss_mb": round(stats.peak_rss_mb, 1)}
        ctx.log(f"[{stage.name}] {stats.seconds:.1f} s, peak {stats.peak_rss_mb:.0f} MiB")
        if describe:
            stage.describe(handle, ctx, **inputs)
        results[stage.name] = handle
    return results


def summarise_run(report: dict, timings: dict, *, dataset: str, device: str) -> dict:
    """The run summary written as JSON by both runners."""
    summary = {
        "dataset": str(dataset),
        "machine": machine_description(device),
        "date": time.strftime("%Y-%m-%d"),
        "assets": timings,
        "total_seconds": round(sum(t["seconds"] for t in timings.values()), 2),
        "val_balanced_accuracy": report["val_split"]["balanced_accuracy"],
        "report_path": report.get("path"),
    }
    if "test_set" in report:
        summary["test_balanced_accuracy"] = report["test_set"]["balanced_accuracy"]
    if "cleaning" in report:
        summary["cleaning"] = report["cleaning"]
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="a DS801 folder or .zip/.tar.gz/.tgz archive")
    parser.add_argument("--out", default="var/outputs", help="output folder")
    parser.add_argument("--config", default="default", help="demo, default or a YAML file")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=PRECISIONS,
                        help="encoder and trainer arithmetic (default: the run config's)")
    parser.add_argument("--truth", help="a truth file of a ground-truth benchmark")
    parser.add_argument("--review", help="review file (CSV: id, action, label, note) that overrules "
                                         "the cleaning decisions it lists")
    parser.add_argument("--test-set", help="an external clean test set, same format and classes")
    parser.add_argument("--class-names", help="comma-separated class names")
    parser.add_argument("--json", help="write the run summary here")
    parser.add_argument("--shards", type=int, help="run the per-image stages in this many shards, "
                        "one after another (default: ANIMAL_ASSETS_SHARDS, else 1)")
    parser.add_argument("--ablation", nargs="?", const="config",
                        help="also run the ablation: on the run config's recipes, or on these "
                        "(comma-separated, or 'all'): raw, ood_removed, labels_corrected, full")
    parser.add_argument("--ablation-seeds", help="comma-separated seeds per recipe "
                        "(default: the run config's)")
    parser.add_argument("--ablation-epochs", type=int,
                        help="epochs per ablation run (default: the run config's)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (OSError, ValueError, OutputBusyError) as err:
        # the expected failures already say what is wrong, naming the path and the rule
        print(f"animal-assets: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    run_config = load_run_config(args.config)
    if args.precision:
        run_config = with_precision(run_config, args.precision)
    if args.ablation:
        run_config = with_ablation(run_config, recipes=args.ablation, seeds=args.ablation_seeds,
                                   epochs=args.ablation_epochs)
    summary = run_pipeline(
        args.dataset, args.out, run_config=run_config, device=args.device,
        truth_path=args.truth, test_set=args.test_set, review=args.review,
        class_names=args.class_names.split(",") if args.class_names else None,
        ablation=bool(args.ablation), summary_json=args.json,
        shards=shards_from_environment() if args.shards is None else check_count(args.shards),
    )
    if args.json:
        write_json(expand(args.json), summary)
    print(json.dumps(summary, indent=2))
    return 0


def with_ablation(run_config: dict, *, recipes: str, seeds: str | None,
                  epochs: int | None) -> dict:
    """``run_config`` with the ablation's recipes (comma-separated, "all", or "config": the run
    config's own), seeds and epochs set where given."""
    from animal_assets.core.ablation import RECIPES

    entry = dict((run_config.get("ops", {}) or {}).get("ablation_report") or {})
    config = dict(entry.get("config") or {})
    if recipes != "config":
        config["recipes"] = list(RECIPES) if recipes == "all" else recipes.split(",")
    if seeds:
        config["seeds"] = [int(s) for s in seeds.split(",")]
    if epochs is not None:
        config["epochs"] = epochs
    ops = {**(run_config.get("ops", {}) or {}), "ablation_report": {**entry, "config": config}}
    return {**run_config, "ops": ops}


if __name__ == "__main__":
    sys.exit(main())

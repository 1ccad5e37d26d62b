"""Run the whole pipeline without dagster: the same steps, in the same order, on one machine.

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
from pathlib import Path

from animal_assets.core import steps
from animal_assets.core.config import load_run_config, params_from_run_config
from animal_assets.core.precision import PRECISIONS
from animal_assets.core.atomic import OutputBusyError, output_lock, write_json
from animal_assets.core.ingest import MIN_USABLE_IMAGES, DatasetError, read_dataset
from animal_assets.core.preflight import claim_asset_folder, expand, preflight
from animal_assets.core.profiling import measure

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
    class_names: list[str] | None = None, log=print, ablation=None,
    summary_json: str | None = None, review: str | None = None,
) -> dict:
    """Run every step and return the summary (per-step wall time and peak memory, accuracies).

    Every input is validated first (:func:`animal_assets.core.preflight.preflight`, the same
    rules as the Dagster graph's) and the steps run under the output folder's lock.
    """
    out = expand(out_dir)
    params = params_from_run_config(run_config)
    preflight(dataset, out, test_set=test_set, truth=truth_path, class_names=class_names,
              summary_json=summary_json, review=review)
    with output_lock(out, holder=f"the dagster-free runner (pid {os.getpid()})"):
        return _run_steps(dataset, out, params=params, device=device, truth_path=truth_path,
                          test_set=test_set, class_names=class_names, log=log, ablation=ablation,
                          review=review)


def _reviewed_clean_labels(raw, emb, ood, out_dir: Path, config, *, review, class_names):
    """The automatic decisions (``out_dir/auto``), then the review applied over them
    (``out_dir/decisions.csv``), as the ``clean_labels`` asset does."""
    from animal_assets.core.review import reviewed_clean_labels

    auto = steps.clean_label_decisions(raw, emb, ood, out_dir / "auto", config)
    clean, _, _ = reviewed_clean_labels(auto, review, out_dir, num_classes=raw.num_classes,
                                        class_names=class_names or ())
    return clean


def _run_steps(dataset, out: Path, *, params, device, truth_path, test_set, class_names, log,
               ablation, review) -> dict:
    timings: dict[str, dict] = {}

    def step(name, fn, *args, **kwargs):
        log(f"[{name}] running")  # the preflight checked every asset folder is the tool's
        with measure() as stats:
            result = fn(*args, **kwargs)
        claim_asset_folder(out, name)  # written by the step: marked as the tool's
        timings[name] = {"seconds": round(stats.seconds, 2), "peak_rss_mb": round(stats.peak_rss_mb, 1)}
        log(f"[{name}] {stats.seconds:.1f} s, peak {stats.peak_rss_mb:.0f} MiB")
        return result

    rp = params["raw_images"]
    raw = step("raw_images", read_dataset, dataset, out / "raw_images",
               format_policy=rp.format_policy, decode_policy=rp.decode_policy,
               minimum=MIN_USABLE_IMAGES)
    if raw.blocking:
        raise DatasetError(f"{dataset}: breaks the format rules; see {raw.violations_path}")
    emb = step("embeddings", steps.compute_embeddings, raw, out / "embeddings",
               params["embeddings"], device=device)
    ood = step("ood_scores", steps.score_outliers, raw, emb, out / "ood_scores",
               params["ood_scores"])
    clean = step("clean_labels", _reviewed_clean_labels, raw, emb, ood, out / "clean_labels",
                 params["clean_labels"], review=review, class_names=class_names)
    val = step("val_split", steps.make_val_split, raw, clean, out / "val_split",
               params["val_split"])
    bal = step("balanced_train", steps.make_balanced_train, raw, clean, val,
               out / "balanced_train", params["balanced_train"])
    train_config = _with_device(params["resnet34_model"], device)
    model = step("resnet34_model", steps.train_model, bal, val, out / "resnet34_model",
                 train_config, num_classes=raw.num_classes,
                 on_epoch=lambda row: log(f"  epoch {row['epoch']}: {row}"))
    report = step("eval_report", steps.evaluate, model, val, clean, ood, out / "eval_report",
                  device=device, class_names=class_names, test_set=test_set,
                  truth_path=truth_path)
    result = None
    if ablation is not None:
        result = step("ablation_report", steps.ablate, raw, clean, val, bal, out / "ablation_report",
                      ablation, train_config, test_set=test_set, model=model, log=log)
        log(result["markdown"])
    summary = summarise_run(report, timings, dataset=dataset, device=device)
    if result is not None:
        summary["ablation"] = {"recipes": result["recipes"], "path": result["path"]}
    return summary


def _with_device(config, device: str):
    import dataclasses

    return dataclasses.replace(config, device=device)


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
    parser.add_argument("--ablation", help="also train on these recipes (comma-separated, or 'all'): "
                        "raw, ood_removed, labels_corrected, full")
    parser.add_argument("--ablation-seeds", default="0", help="comma-separated seeds per recipe")
    parser.add_argument("--ablation-epochs", type=int, help="epochs per ablation run (default: the trainer's)")
    args = parser.parse_args(argv)
    try:
        return _main(args)
    except (OSError, ValueError, OutputBusyError) as err:
        # the expected failures already say what is wrong, naming the path and the rule
        print(f"animal-assets: {str(err).strip().splitlines()[0]}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    ablation = None
    if args.ablation:
        from animal_assets.core.ablation import RECIPES, AblationParams

        recipes = RECIPES if args.ablation == "all" else tuple(args.ablation.split(","))
        ablation = AblationParams(recipes=list(recipes), epochs=args.ablation_epochs,
                                  seeds=[int(s) for s in args.ablation_seeds.split(",")])
    run_config = load_run_config(args.config)
    if args.precision:
        run_config = with_precision(run_config, args.precision)
    summary = run_pipeline(
        args.dataset, args.out, run_config=run_config, device=args.device,
        truth_path=args.truth, test_set=args.test_set, review=args.review,
        class_names=args.class_names.split(",") if args.class_names else None, ablation=ablation,
        summary_json=args.json,
    )
    if args.json:
        write_json(expand(args.json), summary)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

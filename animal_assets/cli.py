"""``animal-assets``: run the asset graph headless on a persistent local Dagster instance.

    animal-assets run --config demo                      # the built-in demo dataset
    animal-assets run --dataset ds801-train-set.tgz --test-set clean-test/ --json run.json
    animal-assets run --unsynced                         # rerun only what is out of date
    animal-assets observe --review review.csv            # record the input's and review's versions
    animal-assets status                                 # synced / unsynced per asset

Runs land in the instance under ``DAGSTER_HOME`` (default ``./.dagster_home``), so ``make ui``
shows them. The dataset, truth file, test set, review file and class names can also come from
the environment (``ANIMAL_ASSETS_DATASET``, ``ANIMAL_ASSETS_TRUTH``, ``ANIMAL_ASSETS_TEST_SET``,
``ANIMAL_ASSETS_REVIEW``, ``ANIMAL_ASSETS_CLASS_NAMES``), which is what ``dagster dev`` reads.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from animal_assets.core.preflight import ENV, RunInputs, expand


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="animal-assets", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="observe the input and the review, then materialize the graph")
    for p in (run, sub.add_parser("observe", help="record the input's and the review's data versions"),
              sub.add_parser("status", help="print each asset's sync status")):
        p.add_argument("--dataset", help="DS801 folder or .zip/.tar.gz/.tgz (default: demo)")
        p.add_argument("--output", help="output folder (default: var/outputs)")
        p.add_argument("--review", help="review file (CSV: id, action, label, note) that overrules "
                                        "the cleaning decisions it lists")
    run.add_argument("--config", default="default", help="demo, default or a run-config YAML")
    run.add_argument("--truth", help="truth file of a ground-truth benchmark (scoring only)")
    run.add_argument("--test-set", help="external clean test set, same format and class order")
    run.add_argument("--class-names", help="comma-separated class names, in label order")
    run.add_argument("--device", help="auto (default), cpu, cuda")
    run.add_argument("--precision", choices=("auto", "fp32", "bf16"),
                     help="encoder and trainer arithmetic; auto: bf16 on CUDA and on CPUs with AMX, "
                          "else fp32 (default: the run config's)")
    run.add_argument("--select", help="comma-separated assets to materialize (default: all)")
    run.add_argument("--unsynced", action="store_true",
                     help="materialize only unsynced assets and what is downstream of them")
    run.add_argument("--json", help="write a run summary (per-asset time, memory, accuracy)")
    run.add_argument("--no-progress", action="store_true",
                     help="no progress line on stderr (the console log shows the steps instead)")
    return parser


#: Errors that already say what is wrong in one line: printed as ``animal-assets: ...`` without a
#: traceback. A bad --config (FileNotFoundError, ValueError), an output folder that cannot be
#: written (PermissionError, NotADirectoryError, a read-only file system) and a full disk are
#: all OSError or ValueError.
_ONE_LINE = (OSError, ValueError)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _main(args)
    except _ONE_LINE as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if isinstance(err, OSError) and err.filename and str(err.filename) not in text:
            text = f"{err.filename}: {text}"
        print(f"animal-assets: {text}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    for key, var in ENV.items():
        value = getattr(args, key, None)
        if value:
            os.environ[var] = str(expand(value)) if key in (
                "dataset", "truth", "test_set", "output", "review") else value
    if args.command == "run":
        from animal_assets.core.config import load_run_config, params_from_run_config

        # The inputs are checked before anything heavy is imported (torch, dagster) and before
        # the instance is touched, so a refusal answers at once; then the config.
        RunInputs.from_env().check(summary_json=args.json)
        run_config = load_run_config(args.config)
        params_from_run_config(run_config)
    os.environ.setdefault("DAGSTER_HOME", str(Path(".dagster_home").absolute()))
    Path(os.environ["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)

    # Imported after the environment is set: the definitions read it.
    from animal_assets import runner

    try:
        if args.command == "observe":
            for name, version in runner.observe().items():
                print(f"{name} data version: {version}")
            return 0
        if args.command == "status":
            for name, status in runner.sync_status().items():
                print(f"{name:16s} {status}")
            return 0
        summary = runner.run(
            config=run_config,
            select=args.select.split(",") if args.select else None,
            unsynced=args.unsynced, precision=args.precision,
            progress=None if args.no_progress else runner.ProgressBar(sys.stderr),
            summary_json=str(expand(args.json)) if args.json else None,
        )
    except runner.RunFailed as err:
        print(f"animal-assets: {err}", file=sys.stderr)
        return 1
    if args.json:
        from animal_assets.core.atomic import write_json

        write_json(expand(args.json), summary)
    runner.print_summary(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())

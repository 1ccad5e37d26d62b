"""The encoder's work in shards: ``raw_images`` to ``embeddings`` on one dataset, unsharded
(the baseline) and in ``--shards`` shards run ``--parallel`` at a time (ours), each from an
empty feature cache on a fresh instance. Reports the wall time of each and whether the merged
features equal the unsharded ones byte for byte.

    python benchmarks/bench_shards.py --dataset ../shared/data/ds801-train-set.tgz
    python benchmarks/bench_shards.py --quick        # the tiny demo set in 2 shards, seconds
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

SELECT = ["raw_images", "embeddings"]


def _run(dataset: str, work: Path, shards: int, parallel: int, precision: str,
         device: str) -> tuple[float, Path]:
    import dagster as dg

    from animal_assets import runner
    from animal_assets.definitions import build_defs
    from animal_assets.resources import DatasetResource, DeviceResource, StorageResource

    home = work / "dagster_home"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    defs = build_defs({
        "storage": StorageResource(root=str(work / "out")),
        "dataset": DatasetResource(path=dataset, demo_size="tiny"),
        "compute": DeviceResource(device=device),
    }, shards=shards)
    config = {"ops": {"embeddings": {"config": {"precision": precision}}}}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        start = time.perf_counter()
        runner.run(config=config, instance=instance, defs=defs, select=SELECT,
                   parallel_shards=parallel)
        seconds = time.perf_counter() - start
    return seconds, work / "out" / "embeddings" / "embeddings.npy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="", help="dataset folder or archive (default: tiny demo)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--parallel", type=int, default=2, help="shard runs at a time")
    parser.add_argument("--precision", default="auto", help="the encoder's: auto, fp32, bf16")
    parser.add_argument("--json", help="append each result as a JSON line to this file")
    parser.add_argument("--device", default="cpu", help="the encoder's device (cpu, cuda, auto)")
    parser.add_argument("--quick", action="store_true",
                        help="the tiny demo set in 2 shards, one after another")
    args = parser.parse_args()
    if args.quick:
        args.dataset, args.shards, args.parallel = "", 2, 1
    device = _common.pick_device(args.device)
    _common.print_header(f"Embeddings in {args.shards} shards, {args.parallel} at a time, "
                         f"against one step ({args.dataset or 'tiny demo'})")
    with tempfile.TemporaryDirectory() as tmp:
        one, one_path = _run(args.dataset, Path(tmp) / "one", 1, 1, args.precision, device)
        many, many_path = _run(args.dataset, Path(tmp) / "many", args.shards, args.parallel,
                               args.precision, device)
        whole, merged = np.load(one_path), np.load(many_path)
        same = whole.shape == merged.shape and whole.tobytes() == merged.tobytes()
        n = len(whole)
    machine = _common.machine_label(device)
    rows = [
        (f"raw_images + embeddings, {n} images: wall s", many, one, one / many),
        ("merged features equal one step's, byte for byte (1 = yes)", float(same), 1.0, float(same)),
    ]
    _common.print_table(rows, machine)
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"images": n, "shards": args.shards, "parallel": args.parallel,
                                  "precision": args.precision, "sharded_s": many,
                                  "one_step_s": one, "identical": same, "machine": machine,
                                  "load": _common.load_average()}) + "\n")
    if not same:
        raise SystemExit("the merged features differ from one step's")


if __name__ == "__main__":
    main()

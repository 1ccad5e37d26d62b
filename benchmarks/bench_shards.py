"""The per-image work in shards: ``raw_images`` to ``embeddings`` on one dataset, unsharded
(the baseline) and in ``--shards`` shards run ``--parallel`` at a time (ours: the input's
shards, their merge ``raw_images``, the encoder's shards, their merge), each from an empty
feature cache on a fresh instance. Reports the wall time of each, the steps' own seconds of
decoding (the input's shards and their merge against the one ``raw_images`` step), and whether
the merged manifest, decoded images and features equal the unsharded ones byte for byte.

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
         device: str) -> tuple[float, dict, Path]:
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
        summary = runner.run(config=config, instance=instance, defs=defs, select=SELECT,
                             parallel_shards=parallel)
        seconds = time.perf_counter() - start
    return seconds, summary["assets"], work / "out"


def _decode_seconds(timings: dict) -> tuple[float, float]:
    """The steps' own seconds of reading the input: the longest shard plus the merge (what the
    shards' runs side by side wait on), and all of them added."""
    shards = [t["seconds"] for name, t in timings.items() if name.startswith("raw_image_shards[")]
    merge = timings["raw_images"]["seconds"]
    return max(shards, default=0.0) + merge, sum(shards) + merge


def _same(one: Path, many: Path, *paths: str) -> bool:
    return all((one / p).read_bytes() == (many / p).read_bytes() for p in paths)


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
    _common.print_header(f"The per-image work in {args.shards} shards, {args.parallel} at a time, "
                         f"against one step ({args.dataset or 'tiny demo'})")
    with tempfile.TemporaryDirectory() as tmp:
        one, one_timings, one_out = _run(args.dataset, Path(tmp) / "one", 1, 1, args.precision,
                                         device)
        many, many_timings, many_out = _run(args.dataset, Path(tmp) / "many", args.shards,
                                            args.parallel, args.precision, device)
        whole = np.load(one_out / "embeddings" / "embeddings.npy")
        merged = np.load(many_out / "embeddings" / "embeddings.npy")
        same = whole.shape == merged.shape and whole.tobytes() == merged.tobytes()
        same_raw = _same(one_out, many_out, "raw_images/manifest.csv", "raw_images/images.npy",
                         "raw_images/violations.json")
        n = len(whole)
    decode_wait, decode_sum = _decode_seconds(many_timings)
    decode_one = one_timings["raw_images"]["seconds"]
    machine = _common.machine_label(device)
    rows = [
        (f"raw_images + embeddings, {n} images: wall s", many, one, one / many),
        ("reading the input: longest shard + merge, step s", decode_wait, decode_one,
         decode_one / decode_wait),
        ("reading the input: every shard + merge, step s", decode_sum, decode_one,
         decode_one / decode_sum),
        ("merged features equal one step's, byte for byte (1 = yes)", float(same), 1.0, float(same)),
        ("merged raw_images equal one step's, byte for byte (1 = yes)", float(same_raw), 1.0,
         float(same_raw)),
    ]
    _common.print_table(rows, machine)
    if args.json:
        with open(args.json, "a") as out:
            out.write(json.dumps({"images": n, "shards": args.shards, "parallel": args.parallel,
                                  "precision": args.precision, "sharded_s": many,
                                  "one_step_s": one, "identical": same,
                                  "raw_identical": same_raw, "decode_wait_s": decode_wait,
                                  "decode_sum_s": decode_sum, "decode_one_step_s": decode_one,
                                  "steps": {"one": one_timings, "sharded": many_timings},
                                  "machine": machine,
                                  "load": _common.load_average()}) + "\n")
    if not (same and same_raw):
        raise SystemExit("the merged features or raw_images differ from one step's")


if __name__ == "__main__":
    main()

"""The neighbours search as the input grows: approximate (faiss's inverted-file index,
``animal_assets.core.ann``) against exact (``animal_assets.core.knn``).

Features: with ``--features``, rows drawn at random from a real embedding file (e.g. DS801's
head features) plus Gaussian noise of ``--noise`` times each column's spread, so the real data's
clusters are there at every size; without it, clustered random features. At each size each
method runs in its own process, which reports its wall time and peak resident memory while
searching (the features included); the exact search runs up to ``--exact-up-to`` rows, and above
that its time is extrapolated from its measured growth (marked so in the table). Below the
table: recall@10 of the approximate search where the exact one ran, and the growth exponent of
each method's time (the slope of log time on log N).

With ``--ood``, each size also runs what ``ood_scores`` does after the search, on the
approximate neighbours: the label entropy of the 50 nearest (labels from ``--labels``, the
source rows' given labels, else drawn at random), the self-training refinement on the
features, the estimated outlier share and the flags, with the stage's default settings; its
time and peak memory per size and its growth exponent (baseline: linear growth from the
smallest size).

    python benchmarks/bench_neighbours.py --features head.npy --sizes 30000,100000,300000,1000000
    python benchmarks/bench_neighbours.py --features head.npy --labels given.npy --ood --exact-up-to 0
    python benchmarks/bench_neighbours.py --quick              # 1,000 and 2,000 x 64, seconds
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import _common
from bench_knn import clustered_features

SCRIPT = str(Path(__file__).resolve())


def make_features(n: int, d: int, source: str | None, noise: float, seed: int,
                  drawn: list | None = None) -> np.ndarray:
    """``n`` rows: real rows plus noise when ``source`` names a .npy file, else clustered random.
    ``drawn`` (a list) receives the source rows drawn, chunk by chunk."""
    if source is None:
        return clustered_features(n, d, seed=seed)
    real = np.load(source, mmap_mode="r")
    rng = np.random.default_rng(seed)
    spread = np.asarray(real[: min(len(real), 20_000)], dtype=np.float32).std(axis=0)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, 50_000):  # in chunks: one N x D array in memory, not three
        stop = min(start + 50_000, n)
        rows = np.sort(rng.integers(0, len(real), stop - start))
        if drawn is not None:
            drawn.append(rows)
        out[start:stop] = real[rows]
        out[start:stop] += noise * spread * rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32)
    return out


def worker(method: str, n: int, args, indices_path: str) -> None:
    """Search ``n`` generated rows with one method in this process; report time and peak memory."""
    from animal_assets.core.profiling import measure

    features = make_features(n, args.d, args.features, args.noise, args.seed)
    with measure() as stats:
        if method == "approximate":
            from animal_assets.core.ann import approximate_knn

            _, indices = approximate_knn(features, k=args.k, nprobe=args.nprobe, overwrite=True)
        else:
            from animal_assets.core.knn import knn

            _, indices = knn(features, k=args.k, device="cpu")
    np.save(indices_path, indices if args.ood and method == "approximate" else indices[:, :10])
    _common.report({"seconds": stats.seconds, "peak_mb": stats.peak_rss_mb})


def ood_worker(n: int, args, indices_path: str) -> None:
    """What ``ood_scores`` computes after the search, on ``n`` generated rows and their
    approximate neighbours, with the stage's defaults; report time and peak memory."""
    from animal_assets.core import ood, ood_refine
    from animal_assets.core.profiling import measure
    from animal_assets.core.stages.ood_scores import OodScoresConfig

    drawn: list = []
    features = make_features(n, args.d, args.features, args.noise, args.seed, drawn)
    indices = np.load(indices_path)
    if args.labels and drawn:
        given = np.load(args.labels)[np.concatenate(drawn)].astype(np.int64)
    else:
        given = np.random.default_rng(args.seed).integers(0, 10, n)
    params = OodScoresConfig()
    with measure() as stats:
        scores = ood.neighbour_label_entropy(indices[:, : params.label_k], given,
                                             num_classes=int(given.max()) + 1)
        scores = ood_refine.self_train(features, scores, rounds=params.refine_rounds,
                                       out_share=params.refine_share,
                                       in_share=params.refine_in_share)
        fraction = ood.estimate_outlier_share(scores)
        flags = ood.flag_outliers(scores, fraction=fraction)
    _common.report({"seconds": stats.seconds, "peak_mb": stats.peak_rss_mb,
                    "flagged": int(flags.sum())})


def growth(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """Least-squares ``log t = log a + b log N``: returns ``(a, b)``."""
    b, log_a = np.polyfit(np.log(sizes), np.log(seconds), 1)
    return float(np.exp(log_a)), float(b)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1,000 and 2,000 x 64 features: seconds on a CPU")
    parser.add_argument("--sizes", default="30000,100000,300000", help="comma list of row counts")
    parser.add_argument("--exact-up-to", type=int, default=100_000, help="largest size the exact search runs at")
    parser.add_argument("--features", help="an (M, D) .npy of real embeddings to draw rows from")
    parser.add_argument("--noise", type=float, default=0.5, help="noise, times each column's spread")
    parser.add_argument("--d", type=int, default=1280, help="columns of generated features (no --features)")
    parser.add_argument("--k", type=int, default=50, help="neighbours per row (the stage's default)")
    parser.add_argument("--nprobe", type=int, default=64, help="cells each approximate query searches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="the searches run on the CPU")
    parser.add_argument("--ood", action="store_true", help="also time ood_scores' work after the search")
    parser.add_argument("--labels", help="(M,) .npy of the --features rows' given labels, for --ood")
    parser.add_argument("--json", help="append each measurement to this file as it finishes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ood":
        ood_worker(args.n, args, args.indices)
        return
    if args.worker:
        worker(args.worker, args.n, args, args.indices)
        return
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    sizes = [1000, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.d, args.features, args.k, args.ood = 64, None, 50, True
    source = Path(args.features).name + f" + noise {args.noise}" if args.features else "clustered random"
    d = np.load(args.features, mmap_mode="r").shape[1] if args.features else args.d
    _common.print_header(f"neighbours search, N x {d:,} float32 ({source}), k={args.k}, "
                         f"nprobe={args.nprobe}")
    forwarded = ["--d", str(args.d), "--k", str(args.k), "--nprobe", str(args.nprobe), "--seed", str(args.seed),
                 "--noise", str(args.noise), *(["--features", args.features] if args.features else []),
                 *(["--ood"] if args.ood else []), *(["--labels", args.labels] if args.labels else [])]
    results: dict[tuple[str, int], dict] = {}
    recall: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_neighbours_") as tmp:
        for n in sizes:
            for method in ("approximate", "exact"):
                if method == "exact" and n > args.exact_up_to:
                    continue
                out = str(Path(tmp) / f"{method}-{n}.npy")
                results[method, n] = _common.run_worker(
                    SCRIPT, ["--worker", method, "--n", str(n), "--indices", out, *forwarded])
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"method": method, "n": n, **results[method, n]}) + "\n")
            if args.ood:
                results["ood", n] = _common.run_worker(
                    SCRIPT, ["--worker", "ood", "--n", str(n), "--indices",
                             str(Path(tmp) / f"approximate-{n}.npy"), *forwarded])
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"method": "ood_scores", "n": n, **results["ood", n]}) + "\n")
            if ("exact", n) in results:
                found = np.load(Path(tmp) / f"approximate-{n}.npy")[:, :10]
                exact = np.load(Path(tmp) / f"exact-{n}.npy")
                recall[n] = float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))

    exact_sizes = [n for n in sizes if ("exact", n) in results]
    fits = {}
    for method, measured in (("approximate", sizes), ("exact", exact_sizes)):
        if len(measured) >= 2:
            fits[method] = growth(measured, [results[method, n]["seconds"] for n in measured])
    rows = []
    for n in sizes:
        ours = results["approximate", n]
        if ("exact", n) in results:
            base, label = results["exact", n]["seconds"], "exact"
        elif "exact" in fits:
            base, label = fits["exact"][0] * n ** fits["exact"][1], "exact extrapolated"
        else:
            continue
        rows.append((f"search time, s (N={n:,}; baseline {label})", ours["seconds"], base, base / ours["seconds"]))
        if ("exact", n) in results:
            base_mb = results["exact", n]["peak_mb"]
            rows.append((f"peak RSS while searching, MiB (N={n:,})", ours["peak_mb"], base_mb,
                         base_mb / ours["peak_mb"]))
            rows.append((f"recall@10 against exact (N={n:,})", recall[n], 1.0, recall[n]))
    if args.ood:
        first = sizes[0]
        for n in sizes:
            took = results["ood", n]
            linear = results["ood", first]["seconds"] * n / first
            rows.append((f"ood_scores after the search, s (N={n:,}; baseline linear from N={first:,})",
                         took["seconds"], linear, linear / took["seconds"]))
            matrix = n * d * 4 / 2**20  # the features alone
            rows.append((f"ood_scores peak RSS, MiB (N={n:,}; baseline the N x {d:,} features alone)",
                         took["peak_mb"], matrix, matrix / took["peak_mb"]))
        if len(sizes) >= 2:
            fits["ood_scores"] = growth(sizes, [results["ood", n]["seconds"] for n in sizes])
    _common.print_table(rows, _common.machine_label("cpu"))
    for method, (_, b) in fits.items():
        fitted = ", ".join(f"{n:,}" for n in sizes if (method if method != "ood_scores" else "ood", n) in results)
        print(f"{method}: time grows as N^{b:.2f} (fitted on N = {fitted})")
    big = [n for n in sizes if ("exact", n) not in results]
    if big:
        print("approximate only at N = " + ", ".join(f"{n:,} ({results['approximate', n]['seconds']:.0f} s, "
                                                     f"{results['approximate', n]['peak_mb']:.0f} MiB)" for n in big))


if __name__ == "__main__":
    main()

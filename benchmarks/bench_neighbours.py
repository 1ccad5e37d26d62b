"""The neighbours search as the input grows: approximate (faiss's inverted-file index of 4-bit
codes with an exact re-ranking, ``animal_assets.core.ann``) against exact (``animal_assets.core.knn``).

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

With ``--near``, each size also runs what ``near_duplicates`` does after the search, with the
stage's defaults and the approximate searches it uses past the neighbours' threshold: the pairs
of the 5 nearest features, the thumbnail search, the two crop searches (each over 2N
thumbnails), the hash buckets and the groups. The thumbnails (plain, mirrored, cut by 2 and 4
pixels) are those of ``--images`` (uint8 (M, H, W, 3), aligned with ``--features``) for each
drawn row plus the same share of noise, or clustered random ones without it; 1 % of the rows
are planted near-copies of another row (its thumbnails within a hundredth of that noise; every
row's hash is drawn at random, so only the thumbnail searches can join a copy to its source).
The images' own decoding and thumbnailing (linear in N) is not timed.

    python benchmarks/bench_neighbours.py --features head.npy --sizes 30000,100000,300000,1000000
    python benchmarks/bench_neighbours.py --features head.npy --labels given.npy --ood --exact-up-to 0
    python benchmarks/bench_neighbours.py --features head.npy --images images.npy --near --exact-up-to 0
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

from animal_assets.core.ann import DEFAULT_NPROBE

SCRIPT = str(Path(__file__).resolve())
#: The stages timed after the search (their flag and worker, their name), in the order they run.
AFTER_SEARCH = (("near", "near_duplicates"), ("ood", "ood_scores"))


def _draws(n: int, real: np.ndarray, seed: int):
    """The seeded stream behind :func:`make_features`: per chunk of 50,000 rows, its bounds, the
    source rows drawn and their noise (unscaled)."""
    rng = np.random.default_rng(seed)
    for start in range(0, n, 50_000):  # in chunks: one N x D array in memory, not three
        stop = min(start + 50_000, n)
        rows = np.sort(rng.integers(0, len(real), stop - start))
        yield start, stop, rows, rng.standard_normal((stop - start, real.shape[1]), dtype=np.float32)


def make_features(n: int, d: int, source: str | None, noise: float, seed: int,
                  drawn: list | None = None) -> np.ndarray:
    """``n`` rows: real rows plus noise when ``source`` names a .npy file, else clustered random.
    ``drawn`` (a list) receives the source rows drawn, chunk by chunk."""
    if source is None:
        return clustered_features(n, d, seed=seed)
    real = np.load(source, mmap_mode="r")
    spread = np.asarray(real[: min(len(real), 20_000)], dtype=np.float32).std(axis=0)
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start, stop, rows, gauss in _draws(n, real, seed):
        if drawn is not None:
            drawn.append(rows)
        out[start:stop] = real[rows]
        out[start:stop] += noise * spread * gauss
    return out


def source_rows(n: int, source: str | None, seed: int) -> np.ndarray:
    """The source row of each of :func:`make_features`' ``n`` rows (``arange(n)`` without a
    source), without holding the features."""
    if source is None:
        return np.arange(n)
    real = np.load(source, mmap_mode="r")
    return np.concatenate([rows for _, _, rows, _ in _draws(n, real, seed)])


def worker(method: str, n: int, args, indices_path: str) -> None:
    """Search ``n`` generated rows with one method in this process; report time and peak memory."""
    from animal_assets.core.profiling import measure

    features = make_features(n, args.d, args.features, args.noise, args.seed)
    with measure() as stats:
        if method == "approximate":
            from animal_assets.core.ann import approximate_knn

            distances, indices = approximate_knn(features, k=args.k, nprobe=args.nprobe, overwrite=True)
        else:
            from animal_assets.core.knn import knn

            distances, indices = knn(features, k=args.k, device="cpu")
    keep_all = (args.ood or args.near) and method == "approximate"
    np.save(indices_path, indices if keep_all else indices[:, :10])
    if keep_all:
        np.save(_distances_path(indices_path), distances)
    _common.report({"seconds": stats.seconds, "peak_mb": stats.peak_rss_mb})


def _distances_path(indices_path: str) -> str:
    return indices_path[: -len(".npy")] + "-distances.npy"


def _thumbnail_rows(n: int, args, drawn: np.ndarray, planted: np.ndarray, source: np.ndarray) -> list:
    """The four thumbnail arrays (plain, mirrored, cut by each search margin) of ``n`` rows:
    each drawn row's real thumbnails plus noise, re-centred and scaled to unit length; a
    planted row takes its source row's with a hundredth of that noise."""
    from animal_assets.core import near_duplicates as nd

    rng = np.random.default_rng(args.seed + 1)
    if args.images:
        images = np.load(args.images, mmap_mode="r")
        kinds = [nd.thumbnails(images), nd.thumbnails(images, mirror=True),
                 *(nd.thumbnails(images, margin=m) for m in nd.SEARCH_MARGINS)]
    else:
        base = clustered_features(max(n // 10, 100), nd.THUMB * nd.THUMB, seed=args.seed)
        kinds = [base + 0.05 * rng.standard_normal(base.shape, dtype=np.float32) for _ in range(4)]
        drawn = drawn % len(base)
    out = []
    for real in kinds:
        spread = real.std(axis=0)
        rows = np.empty((n, real.shape[1]), dtype=np.float32)
        for start in range(0, n, 50_000):
            stop = min(start + 50_000, n)
            rows[start:stop] = real[drawn[start:stop]]
            rows[start:stop] += args.noise * spread * rng.standard_normal((stop - start, real.shape[1]),
                                                                        dtype=np.float32)
        rows[planted] = rows[source[planted]] + (args.noise / 100) * spread * rng.standard_normal(
            (int(planted.sum()), real.shape[1]), dtype=np.float32)
        rows -= rows.mean(axis=1, keepdims=True)
        rows /= np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-3)
        out.append(rows)
    return out


def near_worker(n: int, args, indices_path: str) -> None:
    """What ``near_duplicates`` computes after the search, on ``n`` generated rows: their
    approximate feature neighbours, synthetic thumbnails, random hashes; report time, peak
    memory and the groups found."""
    from animal_assets.core import near_duplicates as nd
    from animal_assets.core.profiling import measure
    from animal_assets.core.stages.near_duplicates import NearDuplicatesConfig

    drawn = source_rows(n, args.features, args.seed)
    rng = np.random.default_rng(args.seed + 2)
    planted = rng.random(n) < 0.01
    source = rng.integers(0, n, n)
    own = source == np.arange(n)
    source[own] = (source[own] + 1) % n  # a planted row copies another
    thumbs, mirrored, *cropped = _thumbnail_rows(n, args, drawn, planted, source)
    hashes = rng.integers(0, 2**64, n, dtype=np.uint64)  # no two equal: the hash detector finds nothing
    sha256 = [f"{i:064x}" for i in range(n)]
    ids = np.array([f"img_{i}" for i in range(n)], dtype=object)
    given = rng.integers(0, 10, n)
    config = NearDuplicatesConfig()
    nearest = (np.load(_distances_path(indices_path), mmap_mode="r")[:, : config.k],
               np.load(indices_path, mmap_mode="r")[:, : config.k])
    with measure() as stats:
        near = nd.find_near_copies(
            (np.ascontiguousarray(nearest[0]), np.ascontiguousarray(nearest[1])), thumbs, hashes, sha256,
            threshold=config.threshold, thumb_threshold=config.thumb_threshold, k=config.k, device="cpu",
            mirrored=mirrored, mirror=config.mirror, cropped=tuple(cropped), approximate=True)
        groups = nd.group_table(near, ids, given)
    rows = np.flatnonzero(planted)
    _common.report({"seconds": stats.seconds, "peak_mb": stats.peak_rss_mb, "planted": len(rows),
                    "found": int((near.group[rows] == near.group[source[rows]]).sum()),
                    "groups": len(groups)})


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
    parser.add_argument("--nprobe", type=int, default=DEFAULT_NPROBE, help="cells each approximate query searches")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="the searches run on the CPU")
    parser.add_argument("--ood", action="store_true", help="also time ood_scores' work after the search")
    parser.add_argument("--labels", help="(M,) .npy of the --features rows' given labels, for --ood")
    parser.add_argument("--near", action="store_true", help="also time near_duplicates' work after the search")
    parser.add_argument("--images", help="(M, H, W, 3) uint8 .npy of the --features rows' images, for --near")
    parser.add_argument("--json", help="append each measurement to this file as it finishes")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "ood":
        ood_worker(args.n, args, args.indices)
        return
    if args.worker == "near":
        near_worker(args.n, args, args.indices)
        return
    if args.worker:
        worker(args.worker, args.n, args, args.indices)
        return
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    sizes = [1000, 2000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.d, args.features, args.k, args.ood, args.near = 64, None, 50, True, True
    source = Path(args.features).name + f" + noise {args.noise}" if args.features else "clustered random"
    d = np.load(args.features, mmap_mode="r").shape[1] if args.features else args.d
    _common.print_header(f"neighbours search, N x {d:,} float32 ({source}), k={args.k}, "
                         f"nprobe={args.nprobe}")
    forwarded = ["--d", str(args.d), "--k", str(args.k), "--nprobe", str(args.nprobe), "--seed", str(args.seed),
                 "--noise", str(args.noise), *(["--features", args.features] if args.features else []),
                 *(["--ood"] if args.ood else []), *(["--labels", args.labels] if args.labels else []),
                 *(["--near"] if args.near else []), *(["--images", args.images] if args.images else [])]
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
            # the stages' work after the search, on the approximate neighbours
            for kind, stage in AFTER_SEARCH:
                if not getattr(args, kind):
                    continue
                results[kind, n] = _common.run_worker(
                    SCRIPT, ["--worker", kind, "--n", str(n), "--indices",
                             str(Path(tmp) / f"approximate-{n}.npy"), *forwarded])
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({"method": stage, "n": n, **results[kind, n]}) + "\n")
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
    first = sizes[0]
    for kind, stage in AFTER_SEARCH:
        if not getattr(args, kind):
            continue
        for n in sizes:
            took = results[kind, n]
            linear = results[kind, first]["seconds"] * n / first
            rows.append((f"{stage} after the search, s (N={n:,}; baseline linear from N={first:,})",
                         took["seconds"], linear, linear / took["seconds"]))
            if kind == "ood":
                matrix = n * d * 4 / 2**20  # the features alone
                rows.append((f"ood_scores peak RSS, MiB (N={n:,}; baseline the N x {d:,} features alone)",
                             took["peak_mb"], matrix, matrix / took["peak_mb"]))
            else:
                rows.append((f"near_duplicates peak RSS, MiB (N={n:,})", took["peak_mb"], took["peak_mb"], 1.0))
                rows.append((f"planted near-copies grouped with their source (N={n:,}; baseline the planted rows)",
                             took["found"], took["planted"], took["found"] / max(took["planted"], 1)))
        if len(sizes) >= 2:
            fits[stage] = growth(sizes, [results[kind, n]["seconds"] for n in sizes])
    _common.print_table(rows, _common.machine_label("cpu"))
    for method, (_, b) in fits.items():
        key = dict((stage, kind) for kind, stage in AFTER_SEARCH).get(method, method)
        fitted = ", ".join(f"{n:,}" for n in sizes if (key, n) in results)
        print(f"{method}: time grows as N^{b:.2f} (fitted on N = {fitted})")
    big = [n for n in sizes if ("exact", n) not in results]
    if big:
        print("approximate only at N = " + ", ".join(f"{n:,} ({results['approximate', n]['seconds']:.0f} s, "
                                                     f"{results['approximate', n]['peak_mb']:.0f} MiB)" for n in big))


if __name__ == "__main__":
    main()

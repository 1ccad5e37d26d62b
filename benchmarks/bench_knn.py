"""Speed of the kNN outlier score: ours (exact blocked cosine kNN) against cleanlab's.

Both score the same N x D features in the same run: ours with
``animal_assets.core.ood.knn_ood_scores`` (optionally on ``dims`` principal axes, projected first; each pair of
row blocks is multiplied once for the queries of both, and the output names the float32
product it ran on), the baseline
with ``cleanlab.outlier.OutOfDistribution().fit_score(features=...)`` (scikit-learn's brute-force
cosine ``NearestNeighbors``). Each method runs in its own process, which reports its wall time and
its peak resident memory while scoring (features included).

    python benchmarks/bench_knn.py                      # 30,000 x 1,280 clustered features
    python benchmarks/bench_knn.py --features emb.npy --dims none,512,256,128
    python benchmarks/bench_knn.py --quick              # 2,000 x 256, seconds
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

SCRIPT = str(Path(__file__).resolve())


def clustered_features(n: int, d: int, *, seed: int = 0, clusters: int = 50,
                       outlier_share: float = 0.05) -> np.ndarray:
    """Random float32 features (n, d): tight clusters plus a share of scattered outliers."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d), dtype=np.float32)
    features = centres[rng.integers(0, clusters, n)]
    features += 0.6 * rng.standard_normal((n, d), dtype=np.float32)
    n_out = int(outlier_share * n)
    features[rng.choice(n, n_out, replace=False)] = rng.standard_normal((n_out, d), dtype=np.float32)
    # Non-negative like pooled CNN activations.
    return np.abs(features, out=features)


def worker(method: str, features_path: str, scores_path: str, k: int, device: str) -> None:
    """Score the features with one method in this process and report time and peak memory."""
    from animal_assets.core.profiling import measure, rss_mb

    features = np.load(features_path)
    extra = {}
    if method == "cleanlab":
        from cleanlab.outlier import OutOfDistribution

        before = rss_mb()
        with measure() as stats:
            # cleanlab's score is high for typical rows; negate so higher = more outlying.
            scores = -OutOfDistribution(params={"k": k}).fit_score(features=features, verbose=False)
    else:
        import torch

        from animal_assets.core import knn
        from animal_assets.core.ood import knn_ood_scores

        dims = None if method == "ours" else int(method.split("=")[1])
        on_cpu = not device.startswith("cuda")
        extra["product"] = "oneDNN" if on_cpu and knn._onednn_available() else "torch.mm"
        # Warm-up: CUDA context, cuBLAS handles and the thread pool are not part of the method.
        knn_ood_scores(features[:64], k=min(k, 10), device=device)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        before = rss_mb()
        with measure() as stats:
            # the projection is part of the method's time
            searched = features if dims is None else _common.project_features(features, dims, device=device)
            scores = knn_ood_scores(searched, k=k, device=device)
        if device.startswith("cuda"):
            extra["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    np.save(scores_path, np.asarray(scores, dtype=np.float32))
    _common.report({"seconds": stats.seconds, "peak_mb": stats.peak_rss_mb,
                    "added_mb": max(stats.peak_rss_mb - before, 0.0), **extra})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2,000 x 256 features: seconds on a CPU")
    parser.add_argument("--n", type=int, default=30000, help="rows of generated features")
    parser.add_argument("--d", type=int, default=1280, help="columns of generated features")
    parser.add_argument("--features", help="an (N, D) .npy file to score instead of generated features")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--dims", default="none",
                        help="comma list of our variants: none (all D) or a number of principal axes")
    parser.add_argument("--device", default="auto", help="for ours; cleanlab always runs on the CPU")
    parser.add_argument("--threads", type=int,
                        help="CPU threads for both methods (OMP/MKL/OpenBLAS); default: the libraries' own")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--scores", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    device = _common.pick_device(args.device)
    thread_env = {name: str(args.threads) for name in
                  ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")} if args.threads else {}
    if args.worker:
        worker(args.worker, args.features, args.scores, args.k, device)
        return

    with tempfile.TemporaryDirectory(prefix="bench_knn_") as tmp:
        if args.features:
            features_path, source = args.features, Path(args.features).name
            n, d = np.load(features_path, mmap_mode="r").shape
        else:
            n, d = (2000, 256) if args.quick else (args.n, args.d)
            features_path, source = str(Path(tmp) / "features.npy"), "clustered random"
            np.save(features_path, clustered_features(n, d))
        dims_list = [v.strip().lower() for v in ("none,64" if args.quick else args.dims).split(",")]
        methods = ["ours" if v == "none" else f"ours:dims={int(v)}" for v in dims_list]
        threads = f", {args.threads} CPU thread(s) per method" if args.threads else ""
        _common.print_header(f"kNN outlier scores, {n:,} x {d:,} float32 ({source}), k={args.k}{threads}")
        results, scores = {}, {}
        for method in ["cleanlab", *methods]:
            out = str(Path(tmp) / f"{method.replace(':', '_').replace('=', '')}.npy")
            start = time.perf_counter()
            results[method] = _common.run_worker(SCRIPT, [
                "--worker", method, "--features", features_path, "--scores", out,
                "--k", str(args.k), "--device", device], env=thread_env)
            results[method]["process_s"] = time.perf_counter() - start
            scores[method] = np.load(out)

    base = results["cleanlab"]
    rows = []
    for method in methods:
        res, label = results[method], method.replace("ours:", "")
        label = "exact" if label == "ours" else label
        rows.append((f"wall time, s ({label})", res["seconds"], base["seconds"],
                     base["seconds"] / res["seconds"]))
        rows.append((f"peak RSS while scoring, MiB ({label})", res["peak_mb"], base["peak_mb"],
                     base["peak_mb"] / res["peak_mb"]))
        rows.append((f"added peak RSS while scoring, MiB ({label})", res["added_mb"],
                     base["added_mb"], base["added_mb"] / max(res["added_mb"], 1.0)))
    _common.print_table(rows, _common.machine_label(device))
    print("ours runs on the device in the machine column; cleanlab on the CPU.")
    products = sorted({results[method].get("product", "?") for method in methods})
    print(f"ours: symmetric blocks (each pair of row blocks multiplied once, for both blocks' "
          f"queries), float32 product on {', '.join(products)}.")
    for method in methods:
        line = (f"{method}: top-10 % outliers shared with cleanlab "
                f"{_common.top_overlap(scores[method], scores['cleanlab']):.3f}")
        if method != "ours" and "ours" in scores:
            line += f", with exact ours {_common.top_overlap(scores[method], scores['ours']):.3f}"
        if "gpu_peak_mb" in results[method]:
            line += f", GPU peak {results[method]['gpu_peak_mb']:.0f} MiB"
        print(line)


if __name__ == "__main__":
    main()

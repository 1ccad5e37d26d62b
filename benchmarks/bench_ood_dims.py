"""What projecting onto fewer principal axes costs in OOD detection, and what it saves in time.

On a dataset with ground truth (the built-in demo, or any folder holding ``train-set/`` and a
``truth.json`` in which ``"true": -1`` marks an out-of-distribution image), the images are embedded
once with EfficientNet-Lite0 and scored with ``knn_ood_scores`` at each ``dims``; "ours" is the
score on ``dims`` axes, "baseline" the exact score on all 1,280 dimensions. The AUROC difference
comes with a paired bootstrap 95 % interval (1,000 resamples of the images, seeded).

    python benchmarks/bench_ood_dims.py                       # the demo (1,466 images), 128 px
    python benchmarks/bench_ood_dims.py --dataset cifar_bench  # from python -m animal_assets.core.synthetic.benchmark
    python benchmarks/bench_ood_dims.py --quick               # the tiny demo at 64 px
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

import _common


def load_truth_set(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 64, 64, 3) uint8 and an OOD mask (N,) from ``root/train-set`` + ``root/truth.json``."""
    from PIL import Image

    truth = json.loads((root / "truth.json").read_text())
    ids = sorted(truth)
    imgs = root / "train-set" / "imgs"
    images = np.stack([np.asarray(Image.open(imgs / f"{i}.jpg").convert("RGB")) for i in ids])
    return images, np.array([truth[i]["true"] == -1 for i in ids])


def bootstrap_diff(y: np.ndarray, a: np.ndarray, b: np.ndarray, *, rounds: int = 1000,
                   seed: int = 0) -> tuple[float, float]:
    """95 % paired bootstrap interval of AUROC(a) - AUROC(b) over resampled rows."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(rounds):
        idx = rng.integers(0, len(y), len(y))
        if y[idx].all() or not y[idx].any():
            continue
        diffs.append(roc_auc_score(y[idx], a[idx]) - roc_auc_score(y[idx], b[idx]))
    low, high = np.percentile(diffs, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny demo, 64 px, dims 64 and 16")
    parser.add_argument("--dataset", help="a folder with train-set/ and truth.json; default: build the demo")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--dims", default="512,256,128", help="comma list of axes to keep")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    device = _common.pick_device(args.device)
    image_size = 64 if args.quick else args.image_size
    dims_list = [int(v) for v in ("64,16" if args.quick else args.dims).split(",")]

    from sklearn.metrics import roc_auc_score

    from animal_assets.core.embed import embed_images
    from animal_assets.core.ood import knn_ood_scores

    with tempfile.TemporaryDirectory(prefix="bench_ood_dims_") as tmp:
        if args.dataset:
            root, source = Path(args.dataset), Path(args.dataset).name
        else:
            from animal_assets.core.synthetic.demo import make_demo_dataset

            size = "tiny" if args.quick else "demo"
            root, source = Path(tmp) / "demo", f"demo ({size})"
            make_demo_dataset(root, size=size)
        images, is_ood = load_truth_set(root)
    start = time.perf_counter()
    features = embed_images(images, image_size=image_size, device=device)
    embed_s = time.perf_counter() - start
    _common.print_header(f"OOD AUROC and kNN time per dims, {source}: {len(images):,} images, "
                         f"{int(is_ood.sum())} OOD, embedded at {image_size} px, k={args.k}")

    def search(part, dims, k):
        projected = part if dims is None else _common.project_features(part, dims, device=device)
        return knn_ood_scores(projected, k=k, device=device)

    def score(dims):
        search(features[:64], dims, min(args.k, 10))  # warm-up
        t0 = time.perf_counter()
        scores = search(features, dims, args.k)
        return scores, time.perf_counter() - t0

    exact, exact_s = score(None)
    exact_auc = roc_auc_score(is_ood, exact)
    rows, notes = [], []
    for dims in dims_list:
        scores, seconds = score(dims)
        auc = roc_auc_score(is_ood, scores)
        rows.append((f"OOD AUROC (dims={dims})", auc, exact_auc, auc / exact_auc))
        rows.append((f"kNN wall time, s (dims={dims})", seconds, exact_s, exact_s / seconds))
        low, high = bootstrap_diff(is_ood, scores, exact)
        notes.append(f"dims={dims}: AUROC - exact {auc - exact_auc:+.4f}, 95 % CI [{low:+.4f}, "
                     f"{high:+.4f}]; top-10 % shared with exact {_common.top_overlap(scores, exact):.3f}")
    _common.print_table(rows, _common.machine_label(device))
    print(f"embedding took {embed_s:.1f} s; baseline = exact kNN on all {features.shape[1]} dimensions")
    print("\n".join(notes))


if __name__ == "__main__":
    main()

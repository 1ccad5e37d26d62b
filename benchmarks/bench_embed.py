"""Embedding throughput of EfficientNet-Lite0 at several input sizes: ours against a PIL pipeline.

Ours is ``animal_assets.core.embed.embed_images`` as the pipeline calls it (``stages=True``: the
head features plus every block's pooled statistics): uint8 batches go to the device, are resized
there (bilinear) and run under ``inference_mode`` with bf16 autocast on CUDA. The baseline is the
usual inference loop: a ``DataLoader`` (2 workers on a CPU, 8 on a GPU) whose dataset resizes each
image with PIL and applies ToTensor + Normalize, and the same encoder in float32. Both see the same
decoded 64x64 images (no JPEG decoding on either side), batch 256, on the same device.

    python benchmarks/bench_embed.py                  # n=1024 on a CPU, 16384 on a GPU
    python benchmarks/bench_embed.py --images images.npy --n 4096
    python benchmarks/bench_embed.py --quick          # 32 images, seconds
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

import _common


def synthetic_images(n: int, *, seed: int = 0) -> np.ndarray:
    """Smooth random 64x64 RGB images (n, 64, 64, 3) uint8."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (n, 8, 8, 3)).astype(np.float32)
    images = np.repeat(np.repeat(low, 8, axis=1), 8, axis=2)
    images += rng.normal(0.0, 6.0, images.shape).astype(np.float32)
    return np.clip(images, 0, 255).astype(np.uint8)


class _PilDataset:
    """Map-style dataset: uint8 image i -> PIL resize -> normalised float tensor (3, s, s)."""

    def __init__(self, images: np.ndarray, size: int) -> None:
        from torchvision import transforms

        from animal_assets.core.embed import PIXEL_MEAN, PIXEL_STD

        self.images = images
        self.transform = transforms.Compose([
            transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.ToTensor(),
            # ToTensor divides by 255; this gives the encoder's (v - 127) / 128.
            transforms.Normalize([PIXEL_MEAN / 255.0] * 3, [PIXEL_STD / 255.0] * 3),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i]))


def baseline_embed(images: np.ndarray, size: int, batch_size: int, device: str, workers: int) -> np.ndarray:
    import torch

    from animal_assets.core.embed import load_encoder

    dev = torch.device(device)
    model = load_encoder(dev)
    loader = torch.utils.data.DataLoader(_PilDataset(images, size), batch_size=batch_size,
                                         num_workers=workers, pin_memory=dev.type == "cuda")
    out = []
    with torch.inference_mode():
        for x in loader:
            out.append(model(x.to(dev, non_blocking=True)).cpu())
    return torch.cat(out).numpy()


def timed(fn) -> float:
    import torch

    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 images")
    parser.add_argument("--n", type=int, help="images; default 16384 on a GPU, 1024 on a CPU")
    parser.add_argument("--sizes", default="64,96,128", help="comma list of encoder input sizes")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--images", help="an (N, 64, 64, 3) uint8 .npy file; the first n are used")
    parser.add_argument("--workers", type=int, help="baseline DataLoader workers; default 2 on a CPU, 8 on a GPU")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    device = _common.pick_device(args.device)
    on_cuda = device.startswith("cuda")
    workers = args.workers if args.workers is not None else (8 if on_cuda else 2)
    n = 32 if args.quick else (args.n or (16384 if on_cuda else 1024))
    if args.images:
        images = np.ascontiguousarray(np.load(args.images, mmap_mode="r")[:n])
        source = Path(args.images).name
    else:
        images, source = synthetic_images(n), "synthetic"
    n = len(images)
    sizes = [int(s) for s in args.sizes.split(",")]

    from animal_assets.core.embed import FEATURE_DIM, embed_images

    _common.print_header(f"EfficientNet-Lite0 embeddings of {n:,} 64x64 images ({source}), "
                         f"batch {args.batch_size}, baseline DataLoader workers {workers}")
    rows, diffs = [], []
    for size in sizes:
        # Warm-up: weights load, CUDA context and cuDNN kernel choice are one-off costs.
        warm = images[: min(n, args.batch_size)]
        embed_images(warm, image_size=size, batch_size=args.batch_size, device=device, stages=True)
        baseline_embed(warm, size, args.batch_size, device, 0)
        result = {}
        ours_s = timed(lambda: result.setdefault(
            "ours", embed_images(images, image_size=size, batch_size=args.batch_size, device=device,
                                 stages=True)[:, :FEATURE_DIM]))
        base_s = timed(lambda: result.setdefault(
            "base", baseline_embed(images, size, args.batch_size, device, workers)))
        rows.append((f"images/s at {size}x{size}", n / ours_s, n / base_s, base_s / ours_s))
        cos = np.sum(result["ours"] * result["base"], axis=1) / np.maximum(
            np.linalg.norm(result["ours"], axis=1) * np.linalg.norm(result["base"], axis=1), 1e-12)
        diffs.append(f"{size}: {cos.min():.4f}")
    _common.print_table(rows, _common.machine_label(device))
    print("lowest cosine similarity between ours and the baseline's embedding of an image, per size: "
          + ", ".join(diffs))


if __name__ == "__main__":
    main()

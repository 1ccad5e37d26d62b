"""bf16 autocast against float32: ResNet-34 training and EfficientNet-Lite0 embedding speed.

Ours is the bf16 path (``precision="bf16"``: bf16 autocast, and channels_last for training), the
baseline the float32 path (``precision="fp32"``), both through the project's own functions:
``train.train_resnet34`` (images/s of the last epoch's loop, so epoch 1's one-off costs stay
out) and ``embed.embed_images`` (``stages=True``, as the pipeline calls it). Each run happens in
a fresh worker process. Below the table: what ``precision="auto"`` picks on this machine, and
the lowest cosine similarity between the two paths' embeddings of the same image.
"""
from __future__ import annotations

import argparse
import time

import _common
from _common import machine_label, pick_device, print_header, print_table, report, run_worker


def _images(n: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(n, 64, 64, 3), dtype=np.uint8)


def worker(args) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads or torch.get_num_threads())
    if args.task == "train":
        from animal_assets.core.train import TrainConfig, train_resnet34

        images = _images(args.n)
        labels = np.arange(args.n) % 10
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=args.device,
                             precision=args.precision)
        result = train_resnet34(images, labels, num_classes=10, config=config)
        report({"images_per_s": result.history[-1]["images_per_s"], "precision": result.precision})
        return
    from animal_assets.core.embed import embed_images

    images = _images(args.n)
    embed_images(images[: args.batch_size], image_size=args.size, batch_size=args.batch_size,
                 device=args.device, stages=True, precision=args.precision)  # warm-up
    start = time.perf_counter()
    feats = embed_images(images, image_size=args.size, batch_size=args.batch_size,
                         device=args.device, stages=True, precision=args.precision)
    seconds = time.perf_counter() - start
    np.save(args.out, feats)
    report({"images_per_s": args.n / seconds})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 training images, 64 to embed")
    parser.add_argument("--n", type=int, default=512, help="training images (embedding: 2x)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs; the last is timed")
    parser.add_argument("--sizes", default="64,128", help="comma list of encoder input sizes")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    if args.quick:
        args.n, args.batch_size, args.epochs, args.sizes = 32, 16, 1, "64"
    if args.worker:
        worker(args)
        return
    import tempfile
    from pathlib import Path

    import numpy as np
    import torch

    from animal_assets.core.precision import resolve_precision

    device = pick_device(args.device)
    print_header("bf16 autocast vs float32")
    common = ["--device", device] + (["--threads", str(args.threads)] if args.threads else [])
    rows = []
    train = {p: run_worker(__file__, ["--worker", "1", "--task", "train", "--precision", p,
                                      "--n", str(args.n), "--batch-size", str(args.batch_size),
                                      "--epochs", str(args.epochs), *common])
             for p in ("bf16", "fp32")}
    rows.append((f"ResNet-34 training images/s (batch {args.batch_size}, epoch {args.epochs} loop)",
                 train["bf16"]["images_per_s"], train["fp32"]["images_per_s"],
                 train["bf16"]["images_per_s"] / train["fp32"]["images_per_s"]))
    similarity = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            rates, feats = {}, {}
            for p in ("bf16", "fp32"):
                out = str(Path(tmp) / f"{p}-{size}.npy")
                rates[p] = run_worker(__file__, [
                    "--worker", "1", "--task", "embed", "--precision", p, "--n", str(2 * args.n),
                    "--batch-size", "128", "--size", str(size), "--out", out, *common,
                ])["images_per_s"]
                feats[p] = np.load(out)
            rows.append((f"embedding images/s at {size} px", rates["bf16"], rates["fp32"],
                         rates["bf16"] / rates["fp32"]))
            a, b = (torch.nn.functional.normalize(torch.from_numpy(feats[p]), dim=1) for p in ("bf16", "fp32"))
            similarity[size] = float((a * b).sum(1).min())
    print_table(rows, machine_label(device))
    print(f"precision='auto' resolves to {resolve_precision('auto', torch.device(device))} on this machine")
    for size, value in similarity.items():
        print(f"lowest cosine similarity of bf16 vs fp32 embeddings at {size} px: {value:.4f}")


if __name__ == "__main__":
    main()

"""Training speed of ResNet-34 at 64x64, one epoch by default: ours against the usual torchvision loop.

Ours is ``animal_assets.core.train.train_resnet34`` with ``epochs=1``: the uint8 images live on the
device, batches come from a ``randperm`` and flip + shift run on the device. The baseline is the
loop most tutorials write: the same images as JPEG files in an ``ImageFolder`` layout, a
``DataLoader`` with PIL transforms (RandomHorizontalFlip, RandomCrop(64, padding=4), ToTensor,
Normalize) and worker processes. Both train the same ``resnet34(weights=None)`` with the same
batch size, SGD settings, OneCycle schedule and label smoothing; on CUDA both use bf16 autocast
and channels_last. Each runs in its own process; images/s counts the epoch's loop only. Epoch 1
includes one-off costs (cuDNN autotuning of each batch shape, lazy kernel loading); with
``--epochs 3`` the warm epochs get their own row. On CUDA a throwaway process trains two batches
first, so that neither method pays for reading the CUDA libraries from disk.

    python benchmarks/bench_train.py                  # n=2048 on a CPU, n=30000 on a GPU
    python benchmarks/bench_train.py --n 30000 --batch-size 512
    python benchmarks/bench_train.py --quick          # 64 images, batch 32
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import _common

SCRIPT = str(Path(__file__).resolve())
NUM_CLASSES = 10


def synthetic_images(n: int, *, seed: int = 0) -> np.ndarray:
    """Smooth random 64x64 RGB images (n, 64, 64, 3) uint8 with JPEG sizes near real photos'."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 8, 8, generator=gen) * 255.0
    x = F.interpolate(low, size=(64, 64), mode="bicubic", align_corners=False)
    x = x + 4.0 * torch.randn(x.shape, generator=gen)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def write_image_folder(root: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """The images as JPEG files in torchvision's ImageFolder layout ``root/{class}/{i}.jpg``."""
    from animal_assets.core.ds801 import encode_jpeg

    for c in range(NUM_CLASSES):
        (root / f"class_{c}").mkdir(parents=True, exist_ok=True)
    for i, (image, label) in enumerate(zip(images, labels)):
        (root / f"class_{label}" / f"{i:06d}.jpg").write_bytes(encode_jpeg(image))


def train_config(n: int, batch_size: int, device: str, epochs: int):
    """The full recipe for ``epochs`` epochs; warm-up stretched to at least 1.5 steps, since
    ``OneCycleLR`` divides by zero when ``pct_start * total_steps <= 1`` (e.g. 4 steps)."""
    from animal_assets.core.train import TrainConfig

    steps = epochs * -(-n // batch_size)
    if steps < 2:
        raise ValueError(f"bench_train.py: need at least 2 batches, got n={n}, batch size {batch_size}")
    pct_start = max(TrainConfig.pct_start, 1.5 / steps)
    return TrainConfig(epochs=epochs, batch_size=batch_size, device=device, pct_start=pct_start)


def run_ours(data_dir: Path, batch_size: int, device: str, epochs: int) -> dict:
    from animal_assets.core.train import train_resnet34

    images = np.load(data_dir / "images.npy")
    labels = np.load(data_dir / "labels.npy")
    result = train_resnet34(images, labels, num_classes=NUM_CLASSES,
                            config=train_config(len(images), batch_size, device, epochs))
    return {"images_per_s": [row["images_per_s"] for row in result.history],
            "loss": result.history[0]["train_loss"], "seconds": result.seconds}


def run_baseline(data_dir: Path, batch_size: int, device: str, workers: int, epochs: int) -> dict:
    import torch
    import torch.nn.functional as F
    from torchvision import datasets, transforms

    from animal_assets.core.train import NORM_MEAN, NORM_STD, build_model

    dev = torch.device(device)
    on_cuda = dev.type == "cuda"
    t_start = time.perf_counter()
    torch.backends.cudnn.benchmark = on_cuda
    dataset = datasets.ImageFolder(str(data_dir / "jpeg"), transform=transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.RandomCrop(64, padding=4),
        transforms.ToTensor(),
        transforms.Normalize(NORM_MEAN, NORM_STD),
    ]))
    cfg = train_config(len(dataset), batch_size, device, epochs)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=on_cuda,
        generator=torch.Generator().manual_seed(cfg.seed))
    torch.manual_seed(cfg.seed)
    model = build_model(NUM_CLASSES)
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.max_lr / cfg.div_factor,
                                momentum=cfg.momentum, nesterov=cfg.nesterov,
                                weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.max_lr, total_steps=epochs * len(loader), pct_start=cfg.pct_start,
        div_factor=cfg.div_factor, final_div_factor=cfg.final_div_factor, cycle_momentum=False)
    model.train()
    n, rates, first_loss = len(dataset), [], None
    for _ in range(epochs):
        loss_sum = torch.zeros((), device=dev)
        t_epoch = time.perf_counter()
        for x, y in loader:
            x = x.to(dev, non_blocking=True).contiguous(memory_format=memory_format)
            y = y.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=on_cuda):
                loss = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().float() * len(y)
        if on_cuda:
            torch.cuda.synchronize(dev)
        rates.append(n / (time.perf_counter() - t_epoch))
        first_loss = float(loss_sum) / n if first_loss is None else first_loss
    return {"images_per_s": rates, "loss": first_loss, "seconds": time.perf_counter() - t_start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 images, batch 32")
    parser.add_argument("--n", type=int, help="images; default 30000 on a GPU, 2048 on a CPU")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--images", help="an (N, 64, 64, 3) uint8 .npy file; the first n are used")
    parser.add_argument("--workers", type=int, help="baseline DataLoader workers; default 2 on a CPU, 8 on a GPU")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs per method; from 2 on, the warm epochs get their own row")
    parser.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                        help="train a few untimed steps in a throwaway process first (default: on CUDA)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    _common.IN_PROCESS = _common.IN_PROCESS or args.quick
    device = _common.pick_device(args.device)
    on_cuda = device.startswith("cuda")
    workers = args.workers if args.workers is not None else (8 if on_cuda else 2)
    n = 64 if args.quick else (args.n or (30000 if on_cuda else 2048))
    batch_size = 32 if args.quick else args.batch_size
    if args.worker == "warmup":
        # Reads the CUDA libraries (cuDNN, cuBLAS) into the page cache, so the method that runs
        # first does not pay for loading them from disk in its timed first epoch.
        _common.report(run_ours(Path(args.data), batch_size, device, 1))
        return
    if args.worker == "ours":
        _common.report(run_ours(Path(args.data), batch_size, device, args.epochs))
        return
    if args.worker == "baseline":
        _common.report(run_baseline(Path(args.data), batch_size, device, workers, args.epochs))
        return

    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        data = Path(tmp)
        if args.images:
            images = np.load(args.images, mmap_mode="r")[:n]
            source = Path(args.images).name
        else:
            images, source = synthetic_images(n), "synthetic"
        n = len(images)
        labels = np.random.default_rng(0).integers(0, NUM_CLASSES, n)
        np.save(data / "images.npy", np.ascontiguousarray(images))
        np.save(data / "labels.npy", labels)
        write_image_folder(data / "jpeg", images, labels)
        _common.print_header(f"ResNet-34 training at 64x64, {args.epochs} epoch(s) of {n:,} images ({source}), "
                             f"batch {batch_size}, baseline DataLoader workers {workers}")
        common = ["--data", str(data), "--device", device, "--batch-size", str(batch_size),
                  "--workers", str(workers), "--epochs", str(args.epochs),
                  *(["--quick"] if args.quick else ["--n", str(n)])]
        if args.warmup if args.warmup is not None else on_cuda:
            warm = data / "warmup"
            warm.mkdir()
            np.save(warm / "images.npy", np.ascontiguousarray(images[: 2 * batch_size]))
            np.save(warm / "labels.npy", labels[: 2 * batch_size])
            _common.run_worker(SCRIPT, ["--worker", "warmup", *common, "--data", str(warm)])
        ours = _common.run_worker(SCRIPT, ["--worker", "ours", *common])
        base = _common.run_worker(SCRIPT, ["--worker", "baseline", *common])
    rows = [("training images/s (epoch 1 loop)", ours["images_per_s"][0], base["images_per_s"][0],
             ours["images_per_s"][0] / base["images_per_s"][0])]
    if args.epochs > 1:
        # Harmonic mean: images over the summed time of the warm epochs.
        warm_ours = 1.0 / np.mean([1.0 / r for r in ours["images_per_s"][1:]])
        warm_base = 1.0 / np.mean([1.0 / r for r in base["images_per_s"][1:]])
        rows.append((f"training images/s (epochs 2-{args.epochs}, warm)", warm_ours, warm_base,
                     warm_ours / warm_base))
    rows.append((f"wall time of {args.epochs} epoch(s) incl. model build and data upload, s",
                 ours["seconds"], base["seconds"], base["seconds"] / ours["seconds"]))
    _common.print_table(rows, _common.machine_label(device))
    print(f"mean training loss: ours {ours['loss']:.3f}, baseline {base['loss']:.3f}")


if __name__ == "__main__":
    main()

"""Training on several processes at once: PyTorch DDP under torchrun.

:func:`train_in_processes` writes the training arrays to a private folder and starts
``python -m torch.distributed.run --standalone --nproc-per-node N -m animal_assets.core.distributed
FOLDER``. Each process joins the group (NCCL with one GPU each on CUDA, gloo on the CPU) and runs
:func:`animal_assets.core.train.train_resnet34`, which shares every step's batch among them (see
that module for the gradients and BatchNorm). The first process prints each epoch and progress
step as a line for the caller and writes the weights and the history; the caller rebuilds
torchvision's ResNet-34 from them. :func:`train_resnet34` calls this itself when
``config.processes`` > 1, so every caller of the trainer (the graph's ``resnet34_model``, the
ablation, the dagster-free runner) trains the same way.

On a cluster the same module is the entry point of a multi-node torchrun; see README, "Scaling
out".
"""
from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from animal_assets.core.train import TrainConfig, TrainResult, build_model, train_resnet34

#: Lines the first process prints for the caller: this prefix, then one JSON object.
PROGRESS = "animal-assets-ddp "


def train_in_processes(train_images: np.ndarray, train_labels: np.ndarray, *, num_classes: int,
                       config: TrainConfig, val_images: np.ndarray | None = None,
                       val_labels: np.ndarray | None = None,
                       on_epoch: Callable[[dict[str, Any]], None] | None = None,
                       on_batch: Callable[[int, int], None] | None = None) -> TrainResult:
    """:func:`~animal_assets.core.train.train_resnet34` on ``config.processes`` processes.

    The arguments and the result are those of ``train_resnet34``; ``on_epoch`` and ``on_batch``
    are called in this process as the first training process reports.

    Raises
    ------
    ValueError
        When CUDA is asked for and fewer GPUs than processes are visible.
    RuntimeError
        When a training process fails; the message ends with its last output lines.
    """
    from animal_assets.core.device import resolve_device
    from animal_assets.core.jobs import core_share

    device = resolve_device(config.device)
    if device.type == "cuda" and torch.cuda.device_count() < config.processes:
        raise ValueError(f"train: processes={config.processes} needs as many GPUs, "
                         f"{torch.cuda.device_count()} visible")
    env = dict(os.environ)
    if device.type == "cpu":  # the processes share the cores
        env["OMP_NUM_THREADS"] = str(core_share(config.processes))
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="animal-assets-ddp-") as tmp:
        folder = Path(tmp)
        np.save(folder / "train_images.npy", np.ascontiguousarray(train_images))
        np.save(folder / "train_labels.npy", np.asarray(train_labels, dtype=np.int64))
        if val_images is not None:
            np.save(folder / "val_images.npy", np.ascontiguousarray(val_images))
            np.save(folder / "val_labels.npy", np.asarray(val_labels, dtype=np.int64))
        job = {"num_classes": num_classes, "config": config.to_dict()}
        (folder / "job.json").write_text(json.dumps(job))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={config.processes}", "-m", __name__, str(folder)]
        tail: collections.deque[str] = collections.deque(maxlen=20)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=env) as proc:
            for line in proc.stdout:
                if not line.startswith(PROGRESS):
                    tail.append(line.rstrip())
                    continue
                message = json.loads(line[len(PROGRESS):])
                if "epoch" in message and on_epoch is not None:
                    on_epoch(message["epoch"])
                elif "step" in message and on_batch is not None:
                    on_batch(*message["step"])
        if proc.returncode != 0:
            raise RuntimeError(f"train: DDP training on {config.processes} processes failed "
                               f"(exit {proc.returncode}):\n" + "\n".join(tail))
        saved = torch.load(folder / "result.pt", map_location="cpu", weights_only=True)
    model = build_model(num_classes)
    model.load_state_dict(saved["state_dict"])
    model.eval()
    return TrainResult(model=model, history=json.loads(saved["history"]),
                       seconds=time.perf_counter() - t_start, device=saved["device"], config=config,
                       precision=saved["precision"])


def _report(message: dict[str, Any]) -> None:
    print(PROGRESS + json.dumps(message), flush=True)


def main(argv: list[str] | None = None) -> int:
    """One training process: torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; the
    argument is the folder :func:`train_in_processes` wrote."""
    import torch.distributed as tdist

    from animal_assets.core.device import resolve_device

    folder = Path((argv if argv is not None else sys.argv[1:])[0])
    job = json.loads((folder / "job.json").read_text())
    config = TrainConfig.from_dict(job["config"])
    rank = int(os.environ["RANK"])
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    tdist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        val = folder / "val_images.npy"
        first = rank == 0
        result = train_resnet34(
            np.load(folder / "train_images.npy"), np.load(folder / "train_labels.npy"),
            num_classes=job["num_classes"], config=config,
            val_images=np.load(val) if val.exists() else None,
            val_labels=np.load(folder / "val_labels.npy") if val.exists() else None,
            on_epoch=(lambda row: _report({"epoch": row})) if first else None,
            on_batch=(lambda done, total: _report({"step": [done, total]})) if first else None,
        )
        if first:
            partial = folder / "result.pt.partial"
            torch.save({"state_dict": result.model.state_dict(), "history": json.dumps(result.history),
                        "device": result.device, "precision": result.precision}, partial)
            partial.replace(folder / "result.pt")
    finally:
        tdist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

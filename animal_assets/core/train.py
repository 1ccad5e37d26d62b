"""Train torchvision's ResNet-34 from scratch on 64x64 images, predict with it, save and load it.

The whole training set lives on the device as one uint8 NCHW tensor; each epoch walks a seeded
``torch.randperm`` over it, and every batch is converted to float, augmented and normalised on
the device (see :mod:`animal_assets.core.augment`). The network is exactly
``torchvision.models.resnet34(weights=None, num_classes=K)``; normalisation happens outside it with
the fixed constants :data:`NORM_MEAN` / :data:`NORM_STD`.

``precision`` chooses float32 or bf16 autocast (:mod:`animal_assets.core.precision`; ``auto``
takes bf16 on CUDA and on CPUs with bf16 in hardware). On the CPU the same seed, config and precision give
identical weights. On CUDA, cuDNN autotuning trades that bit-exactness for speed.

``processes`` > 1 trains with PyTorch DDP on that many processes started by torchrun
(:mod:`animal_assets.core.distributed`). Every process draws the same batch order and
augmentations for the whole batch of ``batch_size`` images and trains on its share of the rows;
the gradients are averaged so that each step is the step one process takes on the whole batch.
BatchNorm: on CUDA the layers become ``SyncBatchNorm`` (statistics over the whole batch); on the
CPU, where ``SyncBatchNorm`` does not run, each process normalises with its own share's
statistics and the running statistics are those of the first process (DDP broadcasts them).
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
import torchvision

from animal_assets.core.augment import augment_batch, mixup
from animal_assets.core.device import resolve_device
from animal_assets.core.precision import PRECISIONS, Precision, autocast, resolve_precision

# ImageNet statistics; close enough for natural photos, and BatchNorm absorbs the rest.
NORM_MEAN = (0.485, 0.456, 0.406)
NORM_STD = (0.229, 0.224, 0.225)
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Recipe for :func:`train_resnet34`. The defaults are the full GPU recipe."""

    epochs: int = 30  # passes over balanced_train
    batch_size: int = 512  # images per optimiser step
    max_lr: float = 0.4  # linear scaling of the classic 0.1 per 128 images
    pct_start: float = 0.25  # fraction of all steps spent warming up to max_lr before annealing
    div_factor: float = 25.0  # OneCycle starts at max_lr / div_factor
    final_div_factor: float = 1e4  # and ends at that start value / final_div_factor
    momentum: float = 0.9  # momentum of the SGD optimiser
    nesterov: bool = True  # Nesterov momentum instead of the classic kind
    weight_decay: float = 5e-4  # L2 penalty of SGD
    label_smoothing: float = 0.1  # softens targets; helps with the label noise left after cleaning
    flip: bool = True  # random horizontal flips
    translate: int = 4  # pixels, random shift with reflect fill (= pad 4 + random crop)
    rotate_deg: float = 0.0  # largest random rotation, in degrees; 0: none
    mixup_alpha: float = 0.0  # 0 disables Mixup; 0.2 is a common value
    seed: int = 0  # weight initialisation, batch order and augmentation
    device: str = "auto"  # "auto" picks CUDA when available, else the CPU
    # Training arithmetic. "auto": bf16 autocast on CUDA and on CPUs with bf16 in hardware
    # (AMX, AVX-512 BF16), float32 elsewhere.
    precision: Precision = "auto"
    channels_last: bool = True  # NHWC memory layout with bf16 (tensor cores, AMX); fp32 keeps NCHW
    eval_batch_size: int = 1024  # images per forward pass when scoring val_split
    # Processes that train together with PyTorch DDP under torchrun: one per GPU (NCCL), or CPU
    # processes (gloo) that share the cores; batch_size stays the whole step's batch. 1: this
    # process alone.
    processes: int = 1

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.TrainConfig: {name} must be >= 1, got {getattr(self, name)}")
        if self.max_lr <= 0 or not 0 < self.pct_start < 1:
            raise ValueError("train.TrainConfig: max_lr must be > 0 and pct_start in (0, 1)")
        if self.translate < 0 or self.rotate_deg < 0 or self.mixup_alpha < 0:
            raise ValueError("train.TrainConfig: translate, rotate_deg and mixup_alpha must be >= 0")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"train.TrainConfig: label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.TrainConfig: precision must be one of {PRECISIONS}, got {self.precision!r}")

    @classmethod
    def demo(cls, **overrides: Any) -> TrainConfig:
        """A short recipe that learns a small, easy set quickly enough for a CPU."""
        # Batch 64 gives enough steps in few epochs; max_lr 0.1 diverged early for some seeds.
        base = dict(epochs=12, batch_size=64, max_lr=0.05, pct_start=0.2, eval_batch_size=256)
        return cls(**{**base, **overrides})

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build a config from a mapping (e.g. Dagster run config); unknown keys are an error."""
        values = dict(values)
        if "bf16" in values and "precision" not in values:  # checkpoints before ``precision``
            values["precision"] = "auto" if values.pop("bf16") else "fp32"
        values.pop("max_threads", None)  # checkpoints from before torch's threads were the environment's
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"train.TrainConfig.from_dict: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Return the config as a plain dict of JSON-friendly values."""
        return dataclasses.asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train_resnet34`; ``model`` is in eval mode and on the CPU."""

    model: torch.nn.Module
    history: list[dict[str, Any]]
    seconds: float
    device: str
    config: TrainConfig
    precision: str = "fp32"  # what ``config.precision`` resolved to on ``device``


def build_model(num_classes: int) -> torch.nn.Module:
    """Return an untrained ``torchvision.models.resnet34`` with ``num_classes`` outputs."""
    return torchvision.models.resnet34(weights=None, num_classes=num_classes)


def _check_images(images: np.ndarray, where: str) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"train.{where}: images must be a uint8 array (N, H, W, 3), got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")


def _check_labels(labels: np.ndarray, n: int, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"train.{where}: labels must be integers of shape ({n},), got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"train.{where}: labels must lie in 0..{num_classes - 1}")
    return labels.astype(np.int64)


def _to_device_uint8(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).contiguous()


class _Normaliser:
    """Maps uint8 or [0, 255] float NCHW batches to normalised float32 batches.

    The constants are put on the device once; building them per batch would cost a blocking
    host-to-device copy on CUDA.
    """

    def __init__(self, device: torch.device, channels_last: bool) -> None:
        self.mean = torch.tensor(NORM_MEAN, device=device).view(1, 3, 1, 1) * 255.0
        self.inv_std = 1.0 / (torch.tensor(NORM_STD, device=device).view(1, 3, 1, 1) * 255.0)
        self.channels_last = channels_last

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) * self.inv_std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


@torch.no_grad()
def _logits(model: torch.nn.Module, data: torch.Tensor, *, batch_size: int, precision: str,
            normalise: _Normaliser) -> torch.Tensor:
    """Float32 logits (N, K) for uint8 NCHW ``data`` already on the model's device."""
    outs = []
    for start in range(0, data.shape[0], batch_size):
        x = normalise(data[start:start + batch_size])
        with autocast(data.device, precision):
            outs.append(model(x).float())
    return torch.cat(outs) if outs else torch.empty(0, model.fc.out_features, device=data.device)


def _one_cycle(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """OneCycle over ``total_steps``. Each phase needs more than one step, so very short runs
    stretch the warm-up, and a run of one or two steps keeps the starting learning rate."""
    if total_steps < 3:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    pct_start = min(max(config.pct_start, 1.5 / total_steps), 1.0 - 1.5 / total_steps)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, total_steps=total_steps, pct_start=pct_start,
        div_factor=config.div_factor, final_div_factor=config.final_div_factor,
        cycle_momentum=False)  # keep config.momentum fixed instead of cycling 0.95 -> 0.85


def _process_group() -> tuple[int, int] | None:
    """(rank, number of processes) of the DDP group this process trains in; None outside one."""
    if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
        return tdist.get_rank(), tdist.get_world_size()
    return None


def _distributed(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` (on ``device``) wrapped for DDP; on CUDA its BatchNorm layers become
    ``SyncBatchNorm`` first (in place: the optimiser sees the same parameters)."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index])
    return DistributedDataParallel(model)


def _my_share(x: torch.Tensor, y_a: torch.Tensor, y_b: torch.Tensor, group: tuple[int, int],
              channels_last: bool):
    """This process's rows of the whole batch; the factor on its mean loss that makes DDP's
    average of the processes' gradients the whole batch's gradient; and whether its loss counts
    in the epoch's figures. A batch with fewer rows than processes is trained whole by every
    process and counted by the first."""
    rank, world = group
    n = len(y_a)
    if n < world:
        return x, y_a, y_b, 1.0, rank == 0
    rows = slice(rank, None, world)
    mine = x[rows].contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return mine, y_a[rows], y_b[rows], world * len(mine) / n, True


def train_resnet34(train_images: np.ndarray, train_labels: np.ndarray, *, num_classes: int,
                   config: TrainConfig, val_images: np.ndarray | None = None,
                   val_labels: np.ndarray | None = None,
                   on_epoch: Callable[[dict[str, Any]], None] | None = None,
                   on_batch: Callable[[int, int], None] | None = None) -> TrainResult:
    """Train ``resnet34(weights=None, num_classes=num_classes)`` from scratch.

    Parameters
    ----------
    train_images : np.ndarray
        uint8 images (N, H, W, 3), normally 64x64.
    train_labels : np.ndarray
        Integer labels (N,) in ``0..num_classes-1``.
    num_classes : int
        K, the number of outputs.
    config : TrainConfig
        The recipe.
    val_images, val_labels : np.ndarray, optional
        uint8 images (M, H, W, 3) and labels (M,) scored after every epoch.
    on_epoch : callable, optional
        Called with each history row as soon as the epoch ends.
    on_batch : callable, optional
        Called as ``on_batch(done, total)`` with optimiser steps over the whole run, about 20
        times per epoch and after the last step.

    Returns
    -------
    TrainResult
        The model (eval mode, on the CPU), one history row per epoch with keys ``epoch``,
        ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``val_balanced_acc`` (None without
        a validation set), ``lr``, ``seconds``, ``images_per_s``; total seconds; device string.
    """
    if num_classes < 2:
        raise ValueError(f"train.train_resnet34: num_classes must be >= 2, got {num_classes}")
    _check_images(train_images, "train_resnet34")
    if len(train_images) == 0:
        raise ValueError("train.train_resnet34: the training set is empty")
    labels_np = _check_labels(train_labels, len(train_images), num_classes, "train_resnet34")
    if (val_images is None) != (val_labels is None):
        raise ValueError("train.train_resnet34: pass both val_images and val_labels, or neither")
    if val_images is not None:
        _check_images(val_images, "train_resnet34 (val)")
        val_labels_np = _check_labels(val_labels, len(val_images), num_classes, "train_resnet34 (val)")
    group = _process_group()
    if config.processes > 1 and group is None:
        from animal_assets.core.distributed import train_in_processes

        return train_in_processes(train_images, labels_np, num_classes=num_classes, config=config,
                                  val_images=val_images, val_labels=None if val_images is None else val_labels_np,
                                  on_epoch=on_epoch, on_batch=on_batch)

    device = resolve_device(config.device)
    on_cuda = device.type == "cuda"
    precision = resolve_precision(config.precision, device)
    channels_last = config.channels_last and precision == "bf16"
    old_benchmark = torch.backends.cudnn.benchmark
    if on_cuda:
        torch.backends.cudnn.benchmark = True  # fixed input shapes, so autotuning pays off
    try:
        t_start = time.perf_counter()
        # fork_rng keeps the weight init seeded without touching the caller's global RNG state.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = build_model(num_classes)
        model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        net = model if group is None else _distributed(model, device)
        normalise = _Normaliser(device, channels_last)

        data = _to_device_uint8(train_images, device)
        targets = torch.from_numpy(labels_np).to(device)
        if val_images is not None:
            val_data = _to_device_uint8(val_images, device)
            val_targets = torch.from_numpy(val_labels_np).to(device)

        n = data.shape[0]
        steps_per_epoch = math.ceil(n / config.batch_size)
        total_steps = config.epochs * steps_per_epoch
        report_every = max(1, steps_per_epoch // 20)
        optimizer = torch.optim.SGD(model.parameters(), lr=config.max_lr / config.div_factor,
                                    momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=config.weight_decay)
        scheduler = _one_cycle(optimizer, config, total_steps)
        # Separate streams, so changing the augmentations never changes the data order. The
        # augmentation stream lives on the device so a batch needs no host-to-device copy;
        # Mixup draws its weight on the host, so its stream stays on the CPU.
        order_gen = torch.Generator().manual_seed(config.seed)
        aug_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        mix_gen = torch.Generator().manual_seed(config.seed + 2)

        history: list[dict[str, Any]] = []
        step = 0
        for epoch in range(1, config.epochs + 1):
            t_epoch = time.perf_counter()
            net.train()
            loss_sum = torch.zeros((), device=device)
            correct_sum = torch.zeros((), device=device)
            perm = torch.randperm(n, generator=order_gen).to(device, non_blocking=True)
            for start in range(0, n, config.batch_size):
                idx = perm[start:start + config.batch_size]
                x = augment_batch(data[idx].float(), generator=aug_gen, flip=config.flip,
                                  translate=config.translate, rotate_deg=config.rotate_deg)
                x = normalise(x)
                y_a = y_b = targets[idx]
                lam = 1.0
                if config.mixup_alpha > 0:
                    x, y_a, y_b, lam = mixup(x, y_a, alpha=config.mixup_alpha, generator=mix_gen)
                share, counted = 1.0, True
                if group is not None:
                    x, y_a, y_b, share, counted = _my_share(x, y_a, y_b, group, channels_last)
                with autocast(device, precision):
                    out = net(x)
                    loss = lam * F.cross_entropy(out, y_a, label_smoothing=config.label_smoothing)
                    if lam < 1.0:
                        loss = loss + (1.0 - lam) * F.cross_entropy(out, y_b, label_smoothing=config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                (loss * share).backward()  # share is 1.0 on one process: the same gradients
                optimizer.step()
                scheduler.step()
                step += 1
                if counted:
                    pred = out.detach().argmax(1)
                    # Summed on the device so the loop never waits for the GPU.
                    loss_sum += loss.detach().float() * len(y_a)
                    correct_sum += lam * (pred == y_a).sum() + (1.0 - lam) * (pred == y_b).sum()
                if on_batch is not None and (step % report_every == 0 or step == total_steps):
                    on_batch(step, total_steps)
            if group is not None:
                tdist.all_reduce(loss_sum)
                tdist.all_reduce(correct_sum)
            if on_cuda:
                torch.cuda.synchronize(device)
            train_seconds = time.perf_counter() - t_epoch
            row: dict[str, Any] = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / n,
                "train_acc": float(correct_sum) / n,
                "val_loss": None, "val_acc": None, "val_balanced_acc": None,
                "lr": float(optimizer.param_groups[0]["lr"]),
            }
            if val_images is not None and len(val_images) and (group is None or group[0] == 0):
                model.eval()
                logits = _logits(model, val_data, batch_size=config.eval_batch_size, precision=precision,
                                 normalise=normalise)
                val_pred = logits.argmax(1).cpu().numpy()
                row["val_loss"] = float(F.cross_entropy(logits, val_targets))
                row["val_acc"] = float((val_pred == val_labels_np).mean())
                # imported here: the processes that torchrun starts import this module, and
                # scikit-learn would add a second to each start
                from sklearn.metrics import balanced_accuracy_score

                row["val_balanced_acc"] = float(balanced_accuracy_score(val_labels_np, val_pred))
            row["seconds"] = time.perf_counter() - t_epoch
            row["images_per_s"] = n / train_seconds
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
        model.eval()
        model = model.to("cpu", memory_format=torch.contiguous_format)
        if group is not None and on_cuda:  # back from SyncBatchNorm to torchvision's own layers
            plain = build_model(num_classes)
            plain.load_state_dict(model.state_dict())
            model = plain.eval()
        return TrainResult(model=model, history=history, seconds=time.perf_counter() - t_start,
                           device=str(device), config=config, precision=precision)
    finally:
        torch.backends.cudnn.benchmark = old_benchmark


def predict_proba(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 1024,
                  device: str = "auto", precision: Precision = "auto") -> np.ndarray:
    """Class probabilities for uint8 images.

    The model is moved to ``device`` for the call and back to where it was afterwards.

    Parameters
    ----------
    model : torch.nn.Module
        A ResNet-34 from :func:`train_resnet34` or
        :func:`animal_assets.core.checkpoint.load_checkpoint`.
    images : np.ndarray
        uint8 images (N, H, W, 3).
    batch_size : int
        Images per forward pass.
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    precision : {"auto", "fp32", "bf16"}
        Arithmetic on CUDA (:func:`animal_assets.core.precision.resolve_precision`); on the
        CPU the scores are always float32, so they do not depend on how the model was trained.

    Returns
    -------
    np.ndarray
        float32 probabilities (N, K); rows sum to 1.
    """
    _check_images(images, "predict_proba")
    if batch_size < 1:
        raise ValueError(f"train.predict_proba: batch_size must be >= 1, got {batch_size}")
    if precision not in PRECISIONS:
        raise ValueError(f"train.predict_proba: precision must be one of {PRECISIONS}, got {precision!r}")
    target = resolve_device(device)
    first = next(model.parameters())
    home = first.device
    was_training = model.training
    model.eval()
    model.to(target)
    normalise = _Normaliser(target, channels_last=False)
    precision = resolve_precision(precision, target) if target.type == "cuda" else "fp32"
    try:
        probs = []
        for start in range(0, len(images), batch_size):
            chunk = _to_device_uint8(images[start:start + batch_size], target)
            probs.append(torch.softmax(_logits(model, chunk, batch_size=batch_size, precision=precision,
                                               normalise=normalise), dim=1).cpu())
        k = model.fc.out_features
        return torch.cat(probs).numpy().astype(np.float32) if probs else np.zeros((0, k), np.float32)
    finally:
        model.to(home)
        model.train(was_training)


def predict(model: torch.nn.Module, images: np.ndarray, *, batch_size: int = 1024, device: str = "auto",
            precision: Precision = "auto") -> np.ndarray:
    """Predicted class (N,) int64 for uint8 images (N, H, W, 3); see :func:`predict_proba`."""
    probs = predict_proba(model, images, batch_size=batch_size, device=device, precision=precision)
    return probs.argmax(1).astype(np.int64)

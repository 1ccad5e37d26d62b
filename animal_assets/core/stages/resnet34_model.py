"""Stage ``resnet34_model``: torchvision's ``resnet34(weights=None)`` trained from scratch on
``balanced_train`` (the trainer is :mod:`animal_assets.core.train`)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.checkpoint import load_checkpoint, save_checkpoint
from animal_assets.core.export import Split
from animal_assets.core.ingest import RawImages
from animal_assets.core.stages.balanced_train import BalancedTrain
from animal_assets.core.stages.base import FileRef, Pictures, RunContext, Table
from animal_assets.core.train import TrainConfig

NAME = "resnet34_model"


@dataclass(frozen=True)
class Resnet34Model:
    checkpoint_path: str
    history: tuple = field(hash=False)
    device: str
    seconds: float
    num_classes: int
    precision: str = "fp32"  # what the training ran in ("auto" resolved)


def run(config: TrainConfig, ctx: RunContext, *, raw_images: RawImages,
        balanced_train: BalancedTrain, val_split: Split) -> Resnet34Model:
    on_epoch = on_batch = None
    if ctx.training_progress is not None:
        on_epoch, on_batch = ctx.training_progress(config.epochs)
    return train_model(balanced_train, val_split, ctx.folder(NAME),
                       dataclasses.replace(config, device=ctx.device),
                       num_classes=raw_images.num_classes, on_epoch=on_epoch, on_batch=on_batch)


def train_model(
    balanced: BalancedTrain, val: Split, out_dir: str | Path, config: TrainConfig, *,
    num_classes: int, on_epoch=None, on_batch=None,
) -> Resnet34Model:
    """Train torchvision's ResNet-34 from scratch on the balanced export; keep a checkpoint."""
    from animal_assets.core import train

    result = train.train_resnet34(
        np.load(balanced.train.images_path), np.load(balanced.train.labels_path),
        num_classes=num_classes, config=config, val_images=np.load(val.images_path),
        val_labels=np.load(val.labels_path), on_epoch=on_epoch, on_batch=on_batch,
    )
    path = Path(out_dir) / "resnet34.pt"
    save_checkpoint(
        path, result.model, num_classes=num_classes, config=config, history=result.history,
        precision=result.precision,
    )
    return Resnet34Model(
        checkpoint_path=str(path), history=tuple(result.history), device=result.device,
        seconds=result.seconds, num_classes=num_classes, precision=result.precision,
    )


def trainer_of(model: Resnet34Model, *, device: str) -> TrainConfig:
    """The trainer config ``model`` was trained with, on ``device``."""

    _, meta = load_checkpoint(model.checkpoint_path)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    trainer = TrainConfig(**{k: v for k, v in meta["config"].items() if k in known})
    return dataclasses.replace(trainer, device=device)


def predict_split(model: Resnet34Model, images: np.ndarray, *, device: str) -> np.ndarray:
    """Class predictions (N,) of the trained model, in the arithmetic it was trained in."""
    from animal_assets.core import train

    net, _ = load_checkpoint(model.checkpoint_path, device=device)
    probs = train.predict_proba(net, images, batch_size=512, device=device, precision=model.precision)
    return probs.argmax(axis=1)


def describe(model: Resnet34Model, ctx: RunContext, **_) -> dict:
    from animal_assets.core import plots

    history = pd.DataFrame(list(model.history))
    last = model.history[-1] if model.history else {}
    pictures = Pictures(Path(model.checkpoint_path).parent)
    if model.history:
        pictures.add("plot_training_curves", "training_curves.png",
                     plots.training_curves(model.history), alt="training curves")
    return {
        "device": model.device, "precision": model.precision, "epochs": len(model.history),
        "train_seconds": round(model.seconds, 1),
        "val_balanced_accuracy": float("nan") if last.get("val_balanced_acc") is None
        else float(last["val_balanced_acc"]),
        "history": Table(history.round(4), 100),
        **pictures.entries(),
        "checkpoint": FileRef(model.checkpoint_path),
    }

"""The trained model on disk: torchvision's ResNet-34 weights with the trainer config, history
and precision they came from, so a checkpoint can be scored, retrained alike or reloaded."""
from __future__ import annotations

import os
from typing import Any

import torch

from animal_assets.core.atomic import atomic_path
from animal_assets.core.device import resolve_device
from animal_assets.core.train import CHECKPOINT_FORMAT, NORM_MEAN, NORM_STD, TrainConfig, build_model

def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, *, num_classes: int,
                    config: TrainConfig, history: list[dict[str, Any]], precision: str | None = None) -> None:
    """Write the weights and plain metadata to ``path`` atomically (loadable with ``weights_only``).

    ``precision`` is what the training ran in (``"fp32"`` or ``"bf16"``), stored beside the
    requested ``config.precision``.
    """
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": "torchvision.models.resnet34",
        "num_classes": int(num_classes),
        "norm_mean": list(NORM_MEAN),
        "norm_std": list(NORM_STD),
        "config": config.to_dict(),
        "precision": precision,
        "history": [dict(row) for row in history],
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | os.PathLike, *, device: str = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Returns
    -------
    model : torch.nn.Module
        ResNet-34 in eval mode on ``device``.
    meta : dict
        ``num_classes``, ``config`` (dict; rebuild with ``TrainConfig.from_dict``), ``precision``
        (what the training ran in), ``history``, ``arch``, ``format``, ``norm_mean``, ``norm_std``.
    """
    target = resolve_device(device)
    payload = torch.load(path, map_location=target, weights_only=True)
    if not isinstance(payload, dict) or payload.get("arch") != "torchvision.models.resnet34":
        raise ValueError(f"train.load_checkpoint: {path} is not a ResNet-34 checkpoint of this project")
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"train.load_checkpoint: {path} has format {payload.get('format')}, "
                         f"expected {CHECKPOINT_FORMAT}")
    model = build_model(payload["num_classes"])
    model.load_state_dict(payload["state_dict"])
    model.to(target).eval()
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    return model, meta

"""Parameters of every pipeline step, in one place, with their defaults (the full recipe).

The Dagster ``Config`` classes are built from these dataclasses (:mod:`animal_assets.configs`),
and the dagster-free runner reads the same run-config YAML into them, so a value means the same
thing in the UI, on the command line and on a machine without dagster.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from animal_assets.core.precision import Precision


@dataclass(frozen=True)
class RawImagesParams:
    # strict: a broken file name or label stops the graph; quarantine: the file is set aside.
    format_policy: Literal["strict", "quarantine"] = "strict"
    # quarantine: an image that is not a 64x64 RGB JPEG is set aside; strict: it stops the graph.
    decode_policy: Literal["strict", "quarantine"] = "quarantine"


@dataclass(frozen=True)
class EmbeddingsParams:
    image_size: int = 128  # encoder input; the 64x64 images are upsampled on the device
    batch_size: int = 256
    # Append every encoder block's pooled mean (and, for the deeper blocks, std) to the 1,280
    # head features: 4,592 values per image. The kNN scores use the head; the outlier
    # refinement and the label probe use all of them (see core/embed.py for what it buys).
    stages: bool = True
    # "auto": bf16 autocast on CUDA and on CPUs with AMX bf16 tiles, float32 elsewhere.
    precision: Precision = "auto"


@dataclass(frozen=True)
class OodParams:
    k: int = 10  # neighbours in the mean cosine kNN distance
    # Share of images flagged as out of distribution; None estimates it from the refined
    # scores (ood.estimate_outlier_share: a 3- or 4-component mixture, its upper components flagged).
    # A fixed 0.10 drops clean images when there is less junk and keeps junk when there is more.
    fraction: float | None = None
    # "knn_distance": mean cosine distance to the k nearest neighbours; "label_entropy": entropy
    # of the given labels of the label_k nearest neighbours (catches dense clusters of junk that
    # carry random labels, which are near each other and so look ordinary to the distance).
    # "auto": label_entropy when every class has at least 2 * label_k given images (enough for
    # a neighbourhood's labels to mean something), else knn_distance (with fewer, a neighbourhood
    # mixes classes and label entropy ranks the OOD images worse than the distance).
    method: Literal["auto", "knn_distance", "label_entropy"] = "auto"
    label_k: int = 50
    # Self-training rounds that sharpen the score (ood_refine.py): a linear model learns to tell
    # the top refine_share of the ranking from its bottom refine_in_share. 0 keeps the raw score.
    refine_rounds: int = 3
    # Small: a pseudo-OOD set larger than the true OOD share is partly clean images, and where
    # more of the set is OOD a small share loses nothing.
    refine_share: float = 0.025
    refine_in_share: float = 0.7  # wide: most of a set is in distribution


@dataclass(frozen=True)
class ValSplitParams:
    per_class: int = 100  # validation images per class, as the course's validation sets had
    max_fraction: float = 0.2  # never more than this share of a class's trustworthy images
    seed: int = 0


@dataclass(frozen=True)
class BalanceParams:
    max_factor: float = 3.0  # a class grows by oversampling to at most this multiple of itself
    rotate_deg: float = 10.0  # augmentation of the generated copies
    translate: int = 4
    seed: int = 0


def step_params() -> dict[str, type]:
    """The parameter dataclass of each configurable asset, by asset name."""
    from animal_assets.core.ablation import AblationParams
    from animal_assets.core.cleaning import CleaningConfig
    from animal_assets.core.train import TrainConfig

    return {
        "raw_images": RawImagesParams,
        "embeddings": EmbeddingsParams,
        "ood_scores": OodParams,
        "clean_labels": CleaningConfig,
        "val_split": ValSplitParams,
        "balanced_train": BalanceParams,
        "resnet34_model": TrainConfig,
        "ablation_report": AblationParams,
    }


def params_from_run_config(run_config: dict) -> dict[str, object]:
    """Parameters of every step from a Dagster run config (``ops: {asset: {config: {...}}}``)."""
    ops = (run_config or {}).get("ops", {}) or {}
    out = {}
    for name, cls in step_params().items():
        values = (ops.get(name) or {}).get("config", {}) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"run config ops.{name}: unknown field(s) {sorted(unknown)}")
        out[name] = cls(**values)
    return out


RUN_CONFIGS = Path(__file__).resolve().parents[1] / "run_configs"


def load_run_config(name_or_path: str) -> dict:
    """A shipped run config by name ("demo", "default") or a YAML/JSON file path."""
    path = RUN_CONFIGS / f"{name_or_path}.yaml"
    if not path.exists():
        path = Path(name_or_path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"run config {name_or_path}: no such shipped config or file")
    text = path.read_text()
    if path.suffix == ".json":
        return json.loads(text)
    try:
        import yaml
    except ImportError as err:  # pragma: no cover - yaml ships with dagster, not always alone
        raise RuntimeError(f"{path}: reading YAML needs pyyaml; pass a .json config") from err
    try:
        config = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not a readable YAML run config ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a run config must be a mapping (ops: {{asset: {{config: ...}}}})")
    return config

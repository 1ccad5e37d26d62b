"""Stage ``ablation_report``: what each step buys. ``resnet34_model``'s trainer retrained on
each preprocessing recipe (raw, OOD removed, labels corrected, full), all scored on
``val_split`` and the test set (the recipes are :mod:`animal_assets.core.ablation`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.ablation import AblationConfig
from animal_assets.core.atomic import write_json
from animal_assets.core.checkpoint import load_checkpoint
from animal_assets.core.export import Split
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.stages.balanced_train import BalancedTrain
from animal_assets.core.stages.base import FileRef, Json, Markdown, Pictures, RunContext
from animal_assets.core.stages.clean_labels import CleanLabels, read_decisions
from animal_assets.core.stages.eval_report import read_test_set
from animal_assets.core.stages.raw_images import check_aligned
from animal_assets.core.stages.resnet34_model import Resnet34Model, trainer_of

NAME = "ablation_report"


def run(config: AblationConfig, ctx: RunContext, *, raw_images: RawImages,
        clean_labels: CleanLabels, val_split: Split, balanced_train: BalancedTrain,
        resnet34_model: Resnet34Model) -> dict:
    """Every recipe trained with the trainer config ``resnet34_model`` was trained with."""
    return ablate(raw_images, clean_labels, val_split, balanced_train, ctx.folder(NAME), config,
                  trainer_of(resnet34_model, device=ctx.device), test_set=ctx.test_set,
                  model=resnet34_model, log=ctx.log)


def ablate(
    raw: RawImages, clean: CleanLabels, val: Split, balanced: BalancedTrain, out_dir: str | Path,
    params: AblationConfig, train_config, *, test_set: str | None = None,
    model: Resnet34Model | None = None, log=print,
) -> dict:
    """Train the same trainer on every recipe of :mod:`animal_assets.core.ablation`; write
    ``ablation.json``.

    ``model``, trained with ``train_config`` on ``balanced``, is the ``full`` recipe at its own
    seed instead of a second training run.
    """
    from animal_assets.core import ablation

    check_aligned(raw, clean)
    out_dir = Path(out_dir)
    images, _ = load_raw_images(raw, mmap=True)
    test_images = test_labels = None
    if test_set:
        test_images, test_labels = read_test_set(test_set, out_dir / "test_set", raw.num_classes)
    result = ablation.run_ablation(
        images=images, decisions=read_decisions(clean),
        val_sources=set(pd.read_csv(val.ids_path)["source_id"].astype(str)),
        val_images=np.load(val.images_path), val_labels=np.load(val.labels_path),
        full_images=np.load(balanced.train.images_path),
        full_labels=np.load(balanced.train.labels_path), num_classes=raw.num_classes,
        train_config=train_config, params=params, test_images=test_images,
        test_labels=test_labels, log=log,
        full_model=None if model is None else load_checkpoint(model.checkpoint_path)[0],
    )
    write_json(out_dir / "ablation.json", result)
    result["path"] = str(out_dir / "ablation.json")
    return result


def describe(result: dict, ctx: RunContext, **_) -> dict:
    from animal_assets.core import plots

    recipes = result["recipes"]
    pictures = Pictures(Path(result["path"]).parent)
    for part, title in (("val_balanced_accuracy", "val_split"), ("test_balanced_accuracy", "test set")):
        rows = [(name, e[part]) for name, e in recipes.items() if part in e]
        if rows:
            pictures.add(f"plot_{part}", f"{part}.png", plots.comparison_plot(
                [name for name, _ in rows], [v["mean"] for _, v in rows], [v["std"] for _, v in rows],
                metric=f"balanced accuracy on {title}", title=f"ablation: balanced accuracy, {title}",
            ), alt=f"ablation on {title}")
    ctx.log(result["markdown"])
    return {
        "table": Markdown(result["markdown"]),
        **{f"{name}_val_balanced_accuracy": float(e["val_balanced_accuracy"]["mean"])
           for name, e in recipes.items()},
        "runs": Json(result["runs"]), **pictures.entries(),
        "report_file": FileRef(result["path"]),
    }

"""Ablation: the same trainer on each preprocessing recipe, scored on one fixed evaluation set.

Which step buys how much? Each recipe is a training set built from the graph's own outputs:

* ``raw``: every usable image with its given label;
* ``ood_removed``: minus the images flagged out of distribution;
* ``labels_corrected``: the cleaned labels (relabelled, label issues and duplicate copies
  dropped), before balancing;
* ``full``: the exported ``balanced_train`` (cleaned, balanced, augmented), the default recipe.

Every recipe leaves out the ``val_split`` images and their byte-identical copies, so all of
them are scored on the same images, which none trained on, and on an external clean test set
when one is given. Each recipe is trained once per seed with the same ``TrainConfig``; the
``full`` recipe at the trainer's own seed and settings is the model ``resnet34_model`` already
trained, so it is scored, not trained a second time.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

RECIPES = ("raw", "ood_removed", "labels_corrected", "full")


@dataclass(frozen=True)
class AblationConfig:
    recipes: list[str] = field(default_factory=lambda: list(RECIPES))  # training sets, in order
    seeds: list[int] = field(default_factory=lambda: [0])  # one model per recipe and seed
    epochs: int | None = None  # epochs of each ablation model; None: the trainer config's

    def __post_init__(self) -> None:
        unknown = [r for r in self.recipes if r not in RECIPES]
        if unknown or not self.recipes:
            raise ValueError(f"ablation.py: recipes must be a non-empty subset of {RECIPES}, "
                             f"got {list(self.recipes)}")
        if not self.seeds:
            raise ValueError("ablation.py: seeds must name at least one seed")
        if self.epochs is not None and self.epochs < 1:
            raise ValueError(f"ablation.py: epochs must be >= 1, got {self.epochs}")


def recipe_rows(decisions: pd.DataFrame, val_sources: set[str]) -> dict[str, np.ndarray]:
    """Row indices (into ``decisions``) and labels of every recipe but ``full``.

    Parameters
    ----------
    decisions : pandas.DataFrame
        ``clean_labels`` decisions: ``id``, ``given``, ``label``, ``reason``, ``dup_group``.
    val_sources : set of str
        Ids of the raw images in ``val_split``.

    Returns
    -------
    dict
        ``{recipe: (rows, labels)}`` for ``raw``, ``ood_removed`` and ``labels_corrected``.
    """
    in_val = decisions["id"].isin(val_sources).to_numpy()
    groups = decisions["dup_group"].to_numpy()
    held = np.isin(groups, groups[in_val])  # a copy of a validation image is that image
    given = decisions["given"].to_numpy(dtype=np.int64)
    final = decisions["label"].to_numpy(dtype=np.int64)
    ood = decisions["reason"].isin(["ood", "quality"]).to_numpy()  # the junk the input held
    raw = np.flatnonzero(~held)
    no_ood = np.flatnonzero(~held & ~ood)
    cleaned = np.flatnonzero(~held & (final >= 0))
    return {"raw": (raw, given[raw]), "ood_removed": (no_ood, given[no_ood]),
            "labels_corrected": (cleaned, final[cleaned])}


def run_ablation(
    *,
    images: np.ndarray,
    decisions: pd.DataFrame,
    val_sources: set[str],
    val_images: np.ndarray,
    val_labels: np.ndarray,
    full_images: np.ndarray,
    full_labels: np.ndarray,
    num_classes: int,
    train_config,
    params: AblationConfig = AblationConfig(),
    test_images: np.ndarray | None = None,
    test_labels: np.ndarray | None = None,
    full_model=None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train and score every recipe and seed.

    Parameters
    ----------
    images : np.ndarray, uint8, shape (N, 64, 64, 3)
        The usable raw images, in the order of ``decisions``.
    decisions : pandas.DataFrame, N rows
        See :func:`recipe_rows`.
    val_sources : set of str
        Raw ids of the validation images.
    val_images, val_labels : np.ndarray, shapes (V, 64, 64, 3) and (V,)
        The fixed evaluation set.
    full_images, full_labels : np.ndarray
        The ``balanced_train`` arrays.
    num_classes : int
        K.
    train_config : TrainConfig
        The trainer's settings; ``seed`` (and ``epochs`` when ``params.epochs`` is set) are
        replaced per run.
    params : AblationConfig
    test_images, test_labels : np.ndarray, optional
        An external clean test set.
    full_model : torch.nn.Module, optional
        The model already trained with ``train_config`` on the ``full`` arrays (the
        ``resnet34_model`` asset). It is the ``full`` recipe's model at ``train_config.seed``
        when that run would use the same settings, instead of training it a second time.
    log : callable
        Progress lines.

    Returns
    -------
    dict
        ``runs`` (one row per recipe and seed: ``recipe``, ``seed``, ``n_train``,
        ``val_balanced_accuracy``, ``test_balanced_accuracy``, ``seconds``, ``reused``: the
        ``full_model``), ``recipes`` (per
        recipe: ``n_train`` and mean / std of each accuracy) and ``markdown``.
    """
    from animal_assets.core import evaluate as metrics
    from animal_assets.core import train

    sets = recipe_rows(decisions, val_sources)
    runs = []
    for recipe in params.recipes:
        if recipe == "full":
            x, y = full_images, np.asarray(full_labels, dtype=np.int64)
        else:
            rows, y = sets[recipe]
            x = images[rows]
        for seed in params.seeds:
            config = dataclasses.replace(train_config, seed=int(seed))
            if params.epochs is not None:
                config = dataclasses.replace(config, epochs=params.epochs)
            if recipe == "full" and full_model is not None and config == train_config:
                log(f"[ablation] {recipe} seed {seed}: resnet34_model itself (the same trainer, "
                    "seed and training set)")
                model, seconds = full_model, 0.0
            else:
                model, seconds = _train(x, y, num_classes, config, f"{recipe} seed {seed}", log)
            row = {"recipe": recipe, "seed": int(seed), "n_train": int(len(y)),
                   "seconds": round(seconds, 1), "reused": model is full_model}
            for name, xs, ys in (("val", val_images, val_labels), ("test", test_images, test_labels)):
                if xs is None:
                    continue
                pred = train.predict(model, xs, device=config.device, precision=config.precision)
                row[f"{name}_balanced_accuracy"] = metrics.classification_report(
                    np.asarray(ys, dtype=np.int64), pred, num_classes=num_classes,
                )["balanced_accuracy"]
            log(f"[ablation] {recipe} seed {seed}: {row}")
            runs.append(row)
    return summarise(runs)


def _train(x: np.ndarray, y: np.ndarray, num_classes: int, config, name: str,
           log: Callable[[str], None]):
    """Train one ablation model; returns it with its training seconds."""
    from animal_assets.core import train

    log(f"[ablation] {name}: training on {len(y)} images")

    def on_epoch(row: dict) -> None:
        log(f"[ablation] {name}: epoch {row['epoch']}/{config.epochs}, loss {row['train_loss']:.4f}")

    result = train.train_resnet34(np.ascontiguousarray(x), y, num_classes=num_classes,
                                  config=config, on_epoch=on_epoch)
    return result.model, result.seconds


def summarise(runs: list[dict]) -> dict:
    """Per recipe: training-set size, seed count and mean / std of each accuracy; and markdown."""
    table = pd.DataFrame(runs)
    recipes = {}
    for recipe, part in table.groupby("recipe", sort=False):
        entry = {"n_train": int(part["n_train"].iloc[0]), "seeds": len(part)}
        for col in ("val_balanced_accuracy", "test_balanced_accuracy"):
            if col in part:
                entry[col] = {"mean": float(part[col].mean()),
                              "std": float(part[col].std(ddof=0))}
        recipes[recipe] = entry
    return {"runs": runs, "recipes": recipes, "markdown": markdown(recipes)}


def markdown(recipes: dict) -> str:
    """The comparison table: one row per recipe, mean ± std over seeds (the value alone from
    one seed, which gives no spread)."""
    has_test = any("test_balanced_accuracy" in e for e in recipes.values())
    head = "| recipe | train images | seeds | val balanced acc |" + (" test balanced acc |" if has_test else "")
    rows = [head, "|" + " --- |" * (5 if has_test else 4)]
    for recipe, e in recipes.items():
        cells = [recipe, str(e["n_train"]), str(e["seeds"])]
        for col in ("val_balanced_accuracy",) + (("test_balanced_accuracy",) if has_test else ()):
            v = e.get(col)
            if not v:
                cells.append("")
            else:
                cells.append(f"{v['mean']:.3f}" + (f" ± {v['std']:.3f}" if e["seeds"] > 1 else ""))
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)

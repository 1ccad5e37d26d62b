"""Stage ``clean_labels``: keep, relabel or drop each image, then a person's review over the
automatic decisions.

The probe is :mod:`animal_assets.core.probe`, the noise model
:mod:`animal_assets.core.noise_model`, the decision rules :mod:`animal_assets.core.cleaning` and
the review file's rules :mod:`animal_assets.core.review`."""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.atomic import atomic_path
from animal_assets.core.cleaning import CleaningConfig
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.stages.base import FileRef, Json, Pictures, RunContext, Table
from animal_assets.core.stages.embeddings import Embeddings
from animal_assets.core.stages.ood_scores import OodScores
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "clean_labels"

GALLERY_CAPTIONS = {
    "relabelled": "given -> new label, probability of the new label; framed: a reviewer's decision",
    "dropped": "reason, given label, id; framed: a reviewer's decision",
    "duplicate_conflicts": "byte-identical copies with different given labels: group, given "
                           "label, what it became (drop (copy): a copy of the kept image)",
}


@dataclass(frozen=True)
class CleanLabels:
    """Keep / relabel / drop decision per usable image, with its reason."""

    path: str  # CSV, columns of cleaning.decide plus id and sha256
    raw_version: str
    summary: dict = field(hash=False)


def run(config: CleaningConfig, ctx: RunContext, *, raw_images: RawImages,
        embeddings: Embeddings, ood_scores: OodScores) -> CleanLabels:
    """The automatic decisions (``clean_labels/auto``), then ``ctx.review`` applied over them
    (``clean_labels/decisions.csv``)."""
    auto = clean_label_decisions(raw_images, embeddings, ood_scores, ctx.folder(NAME, "auto"),
                                 config)
    clean, _, _ = reviewed_clean_labels(auto, ctx.review, ctx.folder(NAME),
                                        num_classes=raw_images.num_classes,
                                        class_names=ctx.names(raw_images.num_classes))
    return clean


def clean_label_decisions(
    raw: RawImages, embeddings: Embeddings, ood_scores: OodScores, out_dir: str | Path,
    config: CleaningConfig,
) -> CleanLabels:
    """Decide keep / relabel / drop for every usable image (see :mod:`animal_assets.core.cleaning`)."""
    from animal_assets.core import cleaning, noise_model
    from animal_assets.core.probe import select_probe_c

    check_aligned(raw, embeddings, ood_scores)
    _, manifest = load_raw_images(raw, mmap=True)  # the manifest only
    features = np.load(embeddings.path)
    ood_table = pd.read_csv(ood_scores.path)
    labels = manifest["given"].to_numpy(dtype=np.int64)
    ood_flags = ood_table["flag"].to_numpy(dtype=bool)
    groups = cleaning.duplicate_groups(manifest["sha256"].tolist())
    probe_kwargs = config.probe_kwargs()
    if probe_kwargs["c"] is None:
        probe_kwargs["c"] = select_probe_c(
            features, labels, num_classes=raw.num_classes, train_mask=~ood_flags, seed=config.seed,
            class_weight=config.class_weight,
        )
    result = noise_model.noise_posteriors(
        features, labels, num_classes=raw.num_classes, train_mask=~ood_flags, groups=groups,
        rounds=config.em_rounds, min_rate=config.min_noise_rate,
        prior_images=config.noise_prior_images, probe_kwargs=probe_kwargs,
    )
    pred_probs = result.balanced()
    decisions = cleaning.decide(
        labels, pred_probs, ood_flags=ood_flags, dup_group=groups, num_classes=raw.num_classes,
        config=config,
    )
    decisions.insert(0, "id", manifest["id"].to_numpy())
    decisions["sha256"] = manifest["sha256"].to_numpy()
    decisions["dup_group"] = groups
    decisions["ood_score"] = ood_table["score"].to_numpy()
    for k in range(raw.num_classes):
        decisions[f"p{k}"] = pred_probs[:, k].astype(np.float32)
    path = Path(out_dir) / "decisions.csv"
    with atomic_path(path) as tmp:
        decisions.to_csv(tmp, index=False)
    summary = cleaning.summarise(decisions, num_classes=raw.num_classes)
    summary["probe_c"] = probe_kwargs["c"]
    # T[true, given]: how often each class was labelled as each other class.
    summary["transition"] = np.round(result.transition, 4).tolist()
    summary["prior"] = np.round(result.prior, 4).tolist()  # estimated P(true class)
    return CleanLabels(path=str(path), raw_version=raw_version(raw), summary=summary)


def reviewed_clean_labels(
    auto: CleanLabels, review_path: str | os.PathLike | None, out_dir: str | os.PathLike, *,
    num_classes: int, class_names: Sequence[str] = (),
) -> tuple[CleanLabels, pd.DataFrame, str]:
    """Apply a review file to automatic decisions and write the final decisions table.

    Parameters
    ----------
    auto : CleanLabels
        The automatic decisions (written elsewhere, e.g. ``out_dir/auto``).
    review_path : path-like or None
        The review file; None or empty: no review.
    out_dir : path-like
        Where ``decisions.csv`` (final) and ``review_template.csv`` are written.
    num_classes : int
        K.
    class_names : sequence of str, optional
        Names accepted and written in the ``label`` column.

    Returns
    -------
    tuple of (CleanLabels, pandas.DataFrame, str)
        The final handle (its summary gains ``by_source`` and ``review_version``), the final
        decisions and the review's data version.
    """
    from animal_assets.core import review
    from animal_assets.core.cleaning import summarise

    decisions = read_decisions(auto)
    version = review.review_version(review_path)
    table = review.empty_review() if version == review.NO_REVIEW else review.read_review(
        review_path, known_ids=decisions["id"].astype(str).tolist(),
        given=decisions["given"].to_numpy(dtype=np.int64), num_classes=num_classes,
        class_names=class_names,
    )
    final = review.apply_review(decisions, table, num_classes=num_classes)
    out_dir = Path(out_dir)
    path = out_dir / "decisions.csv"
    with atomic_path(path) as tmp:
        final.to_csv(tmp, index=False)
    with atomic_path(out_dir / "review_template.csv") as tmp:
        review.template(decisions, class_names=class_names).to_csv(tmp, index=False)
    summary = summarise(final, num_classes=num_classes)
    # what the automatic decisions were made under: the probe's strength and the noise model
    summary.update({key: auto.summary[key] for key in ("probe_c", "transition", "prior")
                    if key in auto.summary})
    summary["by_source"] = {s: int((final["source"] == s).sum()) for s in ("auto", "review")}
    summary["review_version"] = version
    return CleanLabels(path=str(path), raw_version=auto.raw_version, summary=summary), final, version


def read_decisions(clean: CleanLabels) -> pd.DataFrame:
    return pd.read_csv(clean.path, keep_default_na=False)


def describe(clean: CleanLabels, ctx: RunContext, *, raw_images: RawImages, **_) -> dict:
    from animal_assets.core import media, plots

    d = read_decisions(clean)
    version = clean.summary.get("review_version")
    names = ctx.names(raw_images.num_classes)
    changed = d[d["action"] != "keep"].sort_values("confidence", ascending=False)
    reviewed = d[d["source"] == "review"]
    ctx.log(f"decisions: {d['action'].value_counts().to_dict()}; {len(reviewed)} from the review "
            f"({version})")
    images, _ = load_raw_images(raw_images, mmap=True)
    pictures = Pictures(Path(clean.path).parent)
    galleries = media.decision_galleries(images, d, names)
    for key in ("relabelled", "dropped", "duplicate_conflicts"):
        pictures.add(f"gallery_{key}", f"{key}.jpg", galleries.get(key), alt=key.replace("_", " "),
                     caption=GALLERY_CAPTIONS[key])
    k = raw_images.num_classes
    label = d["label"].to_numpy()
    pictures.add("plot_class_counts", "class_counts.png", plots.class_counts_plot({
        "given": np.bincount(d["given"].to_numpy(), minlength=k).tolist(),
        "after cleaning": np.bincount(label[label >= 0], minlength=k).tolist(),
    }, names, title="images per class"), alt="images per class, given and after cleaning")
    review_rows = reviewed.assign(auto=reviewed["auto_action"] + " " + reviewed["auto_label"].astype(str),
                                  review=reviewed["action"] + " " + reviewed["label"].astype(str))
    return {
        "actions": Json(d["action"].value_counts().to_dict()),
        "reasons": Json(d[d["reason"] != ""]["reason"].value_counts().to_dict()),
        "summary": Json(clean.summary),
        "changed_preview": Table(
            changed[["id", "given", "label", "action", "reason", "confidence", "source"]], 20
        ),
        "n_reviewed": len(reviewed),
        "review_version": version,
        "review": Table(review_rows[["id", "auto", "review", "review_note"]], 50),
        **pictures.entries(),
        "decisions_file": FileRef(clean.path),
        "dagster/row_count": len(d),
        "review_template": FileRef(str(Path(clean.path).parent / "review_template.csv")),
    }

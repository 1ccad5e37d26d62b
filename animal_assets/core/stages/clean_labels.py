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
from animal_assets.core.stages.image_quality import ImageQuality, read_drops
from animal_assets.core.stages.near_duplicates import NearDuplicates, read_groups
from animal_assets.core.stages.ood_scores import OodScores
from animal_assets.core.stages.raw_images import check_aligned, raw_version

NAME = "clean_labels"

#: Beside the automatic decisions (``clean_labels/auto``): the label probe's out-of-fold class
#: probabilities on the given labels, (N, K) float32 in the decisions' row order.
PROBE_PROBS = "probe_probs.npy"
#: The subfolder of the automatic decisions, before the review.
AUTO = "auto"

GALLERY_CAPTIONS = {
    "relabelled": "given -> new label, probability of the new label; framed: a reviewer's decision",
    "dropped": "reason, given label, id; framed: a reviewer's decision",
    "duplicate_conflicts": "copies (byte-identical or near-copies) with different given labels: "
                           "group, given label, what it became (drop (copy): a byte-identical "
                           "copy of the kept image)",
}


@dataclass(frozen=True)
class CleanLabels:
    """Keep / relabel / drop decision per usable image, with its reason."""

    path: str  # CSV, columns of cleaning.decide plus id and sha256
    raw_version: str
    summary: dict = field(hash=False)


def run(config: CleaningConfig, ctx: RunContext, *, raw_images: RawImages,
        image_quality: ImageQuality, embeddings: Embeddings, ood_scores: OodScores,
        near_duplicates: NearDuplicates) -> CleanLabels:
    """The automatic decisions (``clean_labels/auto``), then ``ctx.review`` applied over them
    (``clean_labels/decisions.csv``)."""
    auto = clean_label_decisions(raw_images, embeddings, ood_scores, ctx.folder(NAME, AUTO),
                                 config, image_quality=image_quality,
                                 near_duplicates=near_duplicates)
    clean, _, _ = reviewed_clean_labels(auto, ctx.review, ctx.folder(NAME),
                                        num_classes=raw_images.num_classes,
                                        class_names=ctx.names(raw_images.num_classes))
    return clean


def clean_label_decisions(
    raw: RawImages, embeddings: Embeddings, ood_scores: OodScores, out_dir: str | Path,
    config: CleaningConfig, *, image_quality: ImageQuality | None = None,
    near_duplicates: NearDuplicates | None = None,
) -> CleanLabels:
    """Decide keep / relabel / drop for every usable image (see :mod:`animal_assets.core.cleaning`).

    The images ``image_quality`` drops (its ``drop`` policy) are left out like the OOD ones: the
    probe does not learn from them and they are dropped, with the reason ``quality``. The labels
    of each of ``near_duplicates``' groups are decided together, as those of byte-identical
    copies are.
    """
    from animal_assets.core import cleaning, noise_model
    from animal_assets.core.probe import select_probe_c

    check_aligned(raw, embeddings, ood_scores,
                  *[handle for handle in (image_quality, near_duplicates) if handle])
    _, manifest = load_raw_images(raw, mmap=True)  # the manifest only
    features = np.load(embeddings.path)
    ood_table = pd.read_csv(ood_scores.path)
    labels = manifest["given"].to_numpy(dtype=np.int64)
    groups = cleaning.duplicate_groups(manifest["sha256"].tolist())
    near_group = read_groups(near_duplicates) if near_duplicates else None
    ood_flags = ood_table["flag"].to_numpy(dtype=bool)
    quality = read_drops(image_quality) if image_quality else np.zeros(len(labels), dtype=bool)
    learn = ~(ood_flags | quality)  # the images the probe learns from
    probe_kwargs = config.probe_kwargs()
    if probe_kwargs["c"] is None:
        probe_kwargs["c"] = select_probe_c(
            features, labels, num_classes=raw.num_classes, train_mask=learn, seed=config.seed,
            class_weight=config.class_weight,
        )
    result = noise_model.noise_posteriors(
        features, labels, num_classes=raw.num_classes, train_mask=learn, groups=groups,
        rounds=config.em_rounds, min_rate=config.min_noise_rate,
        prior_images=config.noise_prior_images, probe_kwargs=probe_kwargs,
    )
    pred_probs = result.balanced()
    decisions = cleaning.decide(
        labels, pred_probs, ood_flags=ood_flags, quality_flags=quality, dup_group=groups,
        num_classes=raw.num_classes, config=config, near_group=near_group,
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
    # what cleanlab and its kind take as pred_probs: the first probe's out-of-fold probabilities
    with atomic_path(Path(out_dir) / PROBE_PROBS) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, result.probe_probs.astype(np.float32))
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


def read_probe_probs(clean: CleanLabels) -> np.ndarray:
    """The label probe's out-of-fold probabilities kept beside the automatic decisions."""
    return np.load(Path(clean.path).parent / AUTO / PROBE_PROBS)


def read_decisions(clean: CleanLabels) -> pd.DataFrame:
    return pd.read_csv(clean.path, keep_default_na=False)


def describe(clean: CleanLabels, ctx: RunContext, *, raw_images: RawImages,
             embeddings: Embeddings | None = None, **_) -> dict:
    from animal_assets.core import media, plots

    d = read_decisions(clean)
    version = clean.summary.get("review_version")
    names = ctx.names(raw_images.num_classes)
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
    if embeddings is not None:
        pictures.add("plot_embedding_map", "embedding_map.png", embedding_map(d, embeddings, names),
                     alt="embedding map", caption=EMBEDDING_MAP_CAPTION)
    review_rows = reviewed.assign(auto=reviewed["auto_action"] + " " + reviewed["auto_label"].astype(str),
                                  review=reviewed["action"] + " " + reviewed["label"].astype(str))
    counts = d["action"].value_counts()
    return {
        "n_images": len(d),
        "n_kept": int(counts.get("keep", 0)),
        "n_relabelled": int(counts.get("relabel", 0)),
        "n_dropped": int(counts.get("drop", 0)),
        "actions": Json(counts.to_dict()),
        "reasons": Json(d[d["reason"] != ""]["reason"].value_counts().to_dict()),
        "summary": Json(clean.summary),
        "decisions_preview": Table(decision_preview(d, names), 60),
        "relabels_by_pair": Table(relabels_by_pair(d, names), 50),
        "class_counts": Table(class_counts(clean.summary, names), 100),
        **({"noise_matrix": Table(noise_matrix(clean.summary, names), 100),
            "class_prior": Table(pd.DataFrame({"class": names, "prior": np.round(
                clean.summary["prior"], 3)}), 100)}
           if "transition" in clean.summary else {}),
        "n_reviewed": len(reviewed),
        "review_version": version,
        "review": Table(review_rows[["id", "auto", "review", "review_note"]], 50),
        **pictures.entries(),
        "decisions_file": FileRef(clean.path),
        "dagster/row_count": len(d),
        "review_template": FileRef(str(Path(clean.path).parent / "review_template.csv")),
    }


EMBEDDING_MAP_CAPTION = (
    "t-SNE of the encoder's head features, coloured by given label; every image relabelled or "
    "dropped is marked (up to half of the points), the rest a seeded sample of the kept ones")


def embedding_map(d: pd.DataFrame, embeddings: Embeddings, names: Sequence[str]) -> bytes | None:
    """The embedding map of the decisions ``d`` (rows aligned with the features), or None for
    fewer than 5 images."""
    from animal_assets.core import plots, projection

    if len(d) < 5:
        return None
    action = d["action"].to_numpy()
    rows = projection.sample_rows(action != "keep")
    features = np.load(embeddings.path, mmap_mode="r")
    if len(features) != len(d):
        raise ValueError(f"clean_labels: {len(d)} decisions for {len(features)} feature rows")
    xy = projection.tsne_map(np.asarray(features[rows, : embeddings.head_dim]))
    picked = d.iloc[rows]
    marks = np.select(
        [picked["action"] == "relabel", picked["reason"] == "ood", picked["action"] == "drop"],
        ["relabelled", "out of distribution", "dropped"], "")
    return plots.embedding_map(xy, picked["given"].to_numpy(), marks, names, title=(
        f"embedding map: {len(rows):,} of {len(d):,} images"))


def _named(labels: pd.Series, names: Sequence[str]) -> pd.Series:
    return labels.map(lambda k: "dropped" if int(k) < 0 else names[int(k)])


def decision_preview(d: pd.DataFrame, names: Sequence[str], per_group: int = 5) -> pd.DataFrame:
    """The ``per_group`` most confident decisions of each (action, reason, source), so every
    kind of decision shows: labels by class name, "dropped" for a dropped image."""
    rows = (d.sort_values(["confidence", "id"], ascending=[False, True])
            .groupby(["action", "reason", "source"], sort=True).head(per_group))
    order = {"relabel": 0, "drop": 1, "keep": 2}
    rows = rows.sort_values(["action", "reason", "source", "confidence"],
                            key=lambda c: c.map(order) if c.name == "action" else c,
                            ascending=[True, True, True, False])
    return pd.DataFrame({
        "id": rows["id"], "given": _named(rows["given"], names), "label": _named(rows["label"], names),
        "action": rows["action"], "reason": rows["reason"].replace("", "-"),
        "confidence": rows["confidence"].astype(float).round(3), "source": rows["source"],
    })


def relabels_by_pair(d: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """How many images moved from each given class to each new one, most first."""
    moved = d[d["action"] == "relabel"]
    pairs = moved.groupby(["given", "label"]).size().rename("images").reset_index()
    pairs = pairs.sort_values(["images", "given", "label"], ascending=[False, True, True])
    return pd.DataFrame({"given": _named(pairs["given"], names),
                         "relabelled_to": _named(pairs["label"], names), "images": pairs["images"]})


def class_counts(summary: dict, names: Sequence[str]) -> pd.DataFrame:
    """Per class: images given, kept as given, relabelled out and in, dropped, and after."""
    rows = summary["per_class"]
    return pd.DataFrame({
        "class": list(names),
        **{column: [int(r[key]) for r in rows] for column, key in (
            ("given", "given"), ("kept", "kept_as_given"), ("relabelled_out", "relabelled_out"),
            ("relabelled_in", "relabelled_in"), ("dropped", "dropped"), ("after", "final"))},
    })


def noise_matrix(summary: dict, names: Sequence[str]) -> pd.DataFrame:
    """The estimated noise model: row = true class, column = given class, P(given | true)."""
    matrix = np.round(np.asarray(summary["transition"], dtype=np.float64), 3)
    return pd.DataFrame({"true": list(names),
                         **{f"given {n}": matrix[:, i] for i, n in enumerate(names)}})

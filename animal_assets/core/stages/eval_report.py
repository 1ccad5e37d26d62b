"""Stage ``eval_report``: balanced accuracy of the model on ``val_split`` and on an external
clean test set, and the cleaning scored against a truth file when there is one (the metrics are
:mod:`animal_assets.core.evaluate` and :mod:`animal_assets.core.scoring`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core.atomic import write_json
from animal_assets.core.export import Split
from animal_assets.core.ingest import load_raw_images, read_dataset
from animal_assets.core.stages.base import FileRef, Markdown, Pictures, RunContext
from animal_assets.core.stages.clean_labels import CleanLabels, read_decisions
from animal_assets.core.stages.ood_scores import OodScores
from animal_assets.core.stages.resnet34_model import Resnet34Model, predict_split

NAME = "eval_report"


@dataclass(frozen=True)
class EvalReportConfig:
    # the report's check warns when val_split's balanced accuracy is below this
    min_val_balanced_accuracy: float = 0.5


def run(config: EvalReportConfig | None, ctx: RunContext, *, resnet34_model: Resnet34Model,
        val_split: Split, clean_labels: CleanLabels, ood_scores: OodScores) -> dict:
    """The test set and the truth file are inputs of the run (``ctx``)."""
    config = config or EvalReportConfig()
    report = evaluate(resnet34_model, val_split, clean_labels, ood_scores, ctx.folder(NAME),
                      device=ctx.device, class_names=ctx.names(resnet34_model.num_classes),
                      test_set=ctx.test_set, truth_path=ctx.truth_path)
    return {**report, "min_val_balanced_accuracy": config.min_val_balanced_accuracy}


def evaluate(
    model: Resnet34Model, val: Split, clean: CleanLabels, ood_scores: OodScores,
    out_dir: str | Path, *, device: str, class_names: list[str] | None = None,
    test_set: str | None = None, truth_path: str | None = None,
) -> dict:
    """Balanced accuracy on ``val_split`` (and on an external clean test set), plus cleaning
    scores against a truth file when one is given. Writes ``report.json`` under ``out_dir``."""
    from animal_assets.core import evaluate as metrics
    from animal_assets.core.scoring import cleaning_scores

    out_dir = Path(out_dir)
    k = model.num_classes
    report: dict = {"num_classes": k, "class_names": class_names}
    report["val_split"] = metrics.classification_report(
        np.load(val.labels_path), predict_split(model, np.load(val.images_path), device=device),
        num_classes=k, class_names=class_names,
    )
    if test_set:
        images, labels = read_test_set(test_set, out_dir / "test_set", k)
        report["test_set"] = metrics.classification_report(
            labels, predict_split(model, images, device=device), num_classes=k,
            class_names=class_names,
        )
        report["test_set"]["path"] = str(test_set)
    if truth_path:
        from animal_assets.core.truth import read_truth

        decisions = read_decisions(clean)
        decisions["flag_ood"] = pd.read_csv(ood_scores.path)["flag"].to_numpy(dtype=bool)
        truth = read_truth(truth_path, num_classes=k)
        if truth and not decisions["id"].isin(truth.keys()).any():
            raise ValueError(f"{truth_path}: none of the truth file's {len(truth)} ids is a usable "
                             "image of the dataset; a truth file scores the dataset it was made with")
        report["cleaning"] = cleaning_scores(decisions, truth, num_classes=k)
        report["cleaning"]["truth_path"] = str(truth_path)
        # what the noise model estimated, beside the truth
        report["cleaning"]["estimated"] = {key: clean.summary[key] for key in ("prior", "transition")
                                           if key in clean.summary}
    report["training"] = {"device": model.device, "seconds": model.seconds,
                          "epochs": len(model.history)}
    write_json(out_dir / "report.json", report)
    report["path"] = str(out_dir / "report.json")
    return report


def read_test_set(test_set: str, out_dir: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and labels of an external clean test set, checked against K."""
    test_raw = read_dataset(test_set, out_dir)
    if test_raw.blocking or test_raw.n_usable == 0:
        raise ValueError(f"test set {test_set}: breaks the format rules; see {test_raw.violations_path}")
    if test_raw.num_classes != num_classes:
        raise ValueError(
            f"test set {test_set}: labels have K={test_raw.num_classes}, the model has K={num_classes}"
        )
    images, manifest = load_raw_images(test_raw)
    return images, manifest["given"].to_numpy(dtype=np.int64)


def summary_markdown(report: dict) -> str:
    """The report at a glance, short enough for the UI to show without a click (under 1,000
    characters): balanced accuracy and the weakest class per split, and the cleaning's headline
    scores against the truth."""
    rows = ["| | balanced accuracy | weakest class (recall) |", "| --- | ---: | --- |"]
    for part, title in (("val_split", "val_split"), ("test_set", "test set")):
        if part in report:
            r = report[part]
            scored = [c for c in r["per_class"] if c["recall"] is not None]
            weakest = min(scored, key=lambda c: c["recall"]) if scored else None
            rows.append(f"| {title} | {r['balanced_accuracy']:.3f} | "
                        + (f"{weakest['name']} ({weakest['recall']:.2f}) |" if weakest else "- |"))
    if "cleaning" in report:
        c = report["cleaning"]
        la = c["label_accuracy"]
        rows += ["", f"cleaning vs truth: label accuracy {la['raw']:.3f} → {la['cleaned']:.3f}"
                 + (f", OOD AUROC {c['ood']['auroc']:.3f}" if "ood" in c else "")
                 + f", label-issue F1 {c['label_issues']['f1']:.3f}"]
    return "\n".join(rows)


def describe(report: dict, ctx: RunContext, *, clean_labels: CleanLabels,
             resnet34_model: Resnet34Model, **_) -> dict:
    from animal_assets.core import plots
    from animal_assets.core.evaluate import to_markdown
    from animal_assets.core.scoring import scores_markdown

    names = ctx.names(resnet34_model.num_classes)
    md = ["## val_split", to_markdown(report["val_split"])]
    described: dict = {"summary": Markdown(summary_markdown(report)),
                       "val_balanced_accuracy": report["val_split"]["balanced_accuracy"]}
    pictures = Pictures(Path(report["path"]).parent)
    for part, title in (("val_split", "val_split"), ("test_set", "external test set")):
        if part in report:
            pictures.add(f"plot_confusion_{part}", f"confusion_{part}.png", plots.confusion_plot(
                report[part]["confusion_matrix"], names, title=f"confusion matrix, {title}",
            ), alt=f"confusion matrix on {title}")
    if "test_set" in report:
        md += ["## external test set", to_markdown(report["test_set"])]
        described["test_balanced_accuracy"] = report["test_set"]["balanced_accuracy"]
    by_source = clean_labels.summary.get("by_source", {})
    if by_source.get("review"):
        md += ["## review", f"{by_source['review']} decisions were made by a reviewer and "
               f"overrule the automatic ones ({clean_labels.summary.get('review_version')}); "
               "they are marked `source = review` in clean_labels' decisions.csv."]
    if "cleaning" in report:
        md += ["## cleaning vs truth", scores_markdown(report["cleaning"], class_names=names,
                                                         estimated=report["cleaning"]["estimated"])]
        if "ood" in report["cleaning"]:
            described["ood_auroc"] = report["cleaning"]["ood"]["auroc"]
        described["label_issue_f1"] = report["cleaning"]["label_issues"]["f1"]
    described["report"] = Markdown("\n\n".join(md))
    described.update(pictures.entries())
    described["report_file"] = FileRef(report["path"])
    return described

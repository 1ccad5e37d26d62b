"""Validate every input a run will need, once, before anything is written.

Both runners call :func:`preflight` first (the ``animal-assets`` command before the Dagster run
starts, :mod:`animal_assets.core.pipeline` before its first step) and the ``raw_images`` asset
calls it again, so a run launched from the UI gets the same checks. It reads only small files
(the labels files, the truth file, the review file), never an image, and raises
:class:`InputError`, one line naming the path and the rule, on the first problem:

- **overlap**: no folder the graph writes or replaces (``OUT/<asset>``) may contain or be an
  input (the dataset, the test set, the truth file, the review file), and the output folder may
  not lie inside an input, since creating it would already modify that input;
- **output**: the output folder is a folder (or can be made) on a writable file system, and
  neither its asset folders nor its lock file is a symbolic link (the tool never follows a link
  out of the output folder); an asset folder that exists is the tool's own (it carries the
  ownership marker, or holds nothing but what the tool writes there), so no file the tool did
  not write is ever replaced;
- **test set**: it exists and its labels have the dataset's K;
- **truth file**: it parses with the dataset's K and at least one of its ids is in the dataset;
- **review file**: it exists, is plain UTF-8 (no byte-order mark, like the labels file) and
  meets every rule of :func:`~animal_assets.core.review.read_review`, its ids checked against
  the labels file (an image that the decoding later quarantines is caught by ``clean_labels``);
- **class names**: one per class.

Every path goes through :func:`expand` (``~`` expanded, made absolute), and paths are compared
after resolving links.
"""
from __future__ import annotations

import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from animal_assets.core.atomic import LOCK_FILE, ForeignFolderError, check_owned, claim_folder
from animal_assets.core.ingest import peek_labels
from animal_assets.core.shards import ShardNames

#: The folders the graph writes or replaces under the output folder, one per asset, each with
#: the names the tool writes in it: a folder that holds only these (or nothing) but no ownership
#: marker was written before the marker existed, and is adopted (see :func:`claim_asset_folder`).
OUTPUT_FOLDERS: dict[str, Collection[str]] = {
    # the input read in shards (ANIMAL_ASSETS_SHARDS > 1): one folder per shard, e.g. 03-of-16
    "raw_image_shards": ShardNames(),
    "raw_images": frozenset({"files", "images.npy", "manifest.csv", "raw.json", "violations.json"}),
    "image_quality": frozenset({"image_quality.csv", "quality_issues.jpg", "shards"}),
    "embeddings": frozenset({"embeddings.npy", "cache", "shards"}),
    "neighbours": frozenset({"indices.npy", "distances.npy"}),
    "ood_scores": frozenset({"ood_scores.csv", "most_outlying.jpg", "scores.png"}),
    "near_duplicates": frozenset({"near_duplicates.csv", "pairs.csv", "groups.csv",
                                  "near_copies.jpg"}),
    "clean_labels": frozenset({"auto", "decisions.csv", "review_template.csv", "class_counts.png",
                               "dropped.jpg", "duplicate_conflicts.jpg", "relabelled.jpg",
                               "embedding_map.png"}),
    "val_split": frozenset({"ds801", "ids.csv", "images.npy", "labels.npy"}),
    "balanced_train": frozenset({"train", "ds801-clean.zip", "class_counts.png", "generated.jpg"}),
    "resnet34_model": frozenset({"resnet34.pt", "training_curves.png"}),
    "eval_report": frozenset({"report.json", "confusion_val_split.png", "confusion_test_set.png",
                              "test_set"}),
    "ablation_report": frozenset({"ablation.json", "val_balanced_accuracy.png",
                                  "test_balanced_accuracy.png", "test_set"}),
}


#: Where the graph writes when no output folder is given.
DEFAULT_OUTPUT = "var/outputs"

#: The environment variables that name a run's inputs (what ``dagster dev`` reads, and what the
#: ``animal-assets`` command sets from its flags).
ENV = {
    "dataset": "ANIMAL_ASSETS_DATASET",
    "truth": "ANIMAL_ASSETS_TRUTH",
    "test_set": "ANIMAL_ASSETS_TEST_SET",
    "class_names": "ANIMAL_ASSETS_CLASS_NAMES",
    "output": "ANIMAL_ASSETS_OUTPUT",
    "device": "ANIMAL_ASSETS_DEVICE",
    "review": "ANIMAL_ASSETS_REVIEW",
}


class InputError(ValueError):
    """An input of the run breaks a rule; the message names the path and the rule in one line."""


@dataclass(frozen=True)
class RunInputs:
    """A run's inputs as the environment names them (:data:`ENV`); empty strings are unset."""

    dataset: str = ""
    truth: str = ""
    test_set: str = ""
    review: str = ""
    class_names: tuple[str, ...] = ()
    output: str = DEFAULT_OUTPUT
    device: str = "auto"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RunInputs:
        env = (os.environ if environ is None else environ).get
        return cls(
            dataset=env(ENV["dataset"], ""), truth=env(ENV["truth"], ""),
            test_set=env(ENV["test_set"], ""), review=env(ENV["review"], ""),
            class_names=tuple(n for n in env(ENV["class_names"], "").split(",") if n),
            output=env(ENV["output"], "") or DEFAULT_OUTPUT, device=env(ENV["device"], "") or "auto",
        )

    def check(self, *, summary_json: str | os.PathLike | None = None) -> Checked:
        """:func:`preflight` on these inputs (an empty dataset is the built-in demo)."""
        return preflight(
            self.dataset or None, self.output, test_set=self.test_set or None,
            truth=self.truth or None, review=self.review or None,
            class_names=list(self.class_names) or None, summary_json=summary_json,
        )


def expand(path: str | os.PathLike) -> Path:
    """``path`` with ``~`` expanded, made absolute (links are not resolved)."""
    return Path(os.path.expanduser(os.fspath(path))).absolute()


def _real(path: str | os.PathLike) -> Path:
    return Path(os.path.realpath(expand(path)))


@dataclass(frozen=True)
class Checked:
    """What the preflight learnt: the dataset's K (None when its labels file could not be read
    alone; ``raw_images`` then says why) and how many truth ids are in the dataset."""

    num_classes: int | None
    n_truth_matched: int | None = None


def check_overlap(
    output: str | os.PathLike, inputs: dict[str, str | os.PathLike | None], *,
    summary_json: str | os.PathLike | None = None,
) -> None:
    """Refuse an output folder (or a summary file) that would write into or over an input.

    Parameters
    ----------
    output : path
        The output folder; the graph writes ``output/<asset>`` for each of :data:`OUTPUT_FOLDERS`.
    inputs : dict of str to path or None
        Each input by what it is ("dataset", "test set", ...); None entries are skipped.
    summary_json : path, optional
        The run summary file, which must not be or lie inside an input either.

    Raises
    ------
    InputError
    """
    out = _real(output)
    written = [out / name for name in OUTPUT_FOLDERS]
    for what, given in inputs.items():
        if not given:
            continue
        src = _real(given)
        if out == src or (src.is_dir() and out.is_relative_to(src)):
            raise InputError(
                f"{out}: the output folder must not be or lie inside the {what} {src}: writing "
                "there would modify the input; choose an output folder outside it")
        for folder in written:
            if src == folder or src.is_relative_to(folder):
                raise InputError(
                    f"{src}: the {what} lies inside {folder}, which the graph replaces with its "
                    "own output; copy it elsewhere or choose another output folder")
        if summary_json:
            target = _real(summary_json)
            if target == src or (src.is_dir() and target.is_relative_to(src)):
                raise InputError(
                    f"{target}: the summary file must not be or lie inside the {what} {src}")


def _writable_folder(path: Path, what: str) -> None:
    probe = path
    while not probe.exists():
        if probe == probe.parent:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise InputError(f"{path}: cannot create the {what} there: {probe} is a file, not a folder")
    if probe == path and not path.is_dir():
        raise InputError(f"{path}: the {what} is a file, not a folder; choose a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise InputError(f"{path}: the {what} is not writable ({probe} is read-only)")


def check_output(output: str | os.PathLike, *, summary_json: str | os.PathLike | None = None) -> None:
    """Refuse an output folder that is a file or not writable, or whose asset folders or lock
    file are symbolic links, and a summary path that is a folder or cannot be written.

    Raises
    ------
    InputError
    """
    out = expand(output)
    _writable_folder(out, "output folder")
    for name, known in OUTPUT_FOLDERS.items():
        try:
            check_owned(out / name, known=known)
        except ForeignFolderError as err:
            raise InputError(str(err)) from None
    if (out / LOCK_FILE).is_symlink():
        raise InputError(f"{out / LOCK_FILE}: the output folder's lock file is a symbolic link, "
                         "and the tool never follows a link out of the output folder; remove it")
    if summary_json:
        target = expand(summary_json)
        if target.is_dir():
            raise InputError(f"{target}: the summary file (--json) is a folder; give a file path")
        _writable_folder(target.parent, "summary file's folder")


def output_path(output: str | os.PathLike, *parts: str) -> Path:
    """``output/parts...`` with its parent created; an asset's folder (``parts[0]``) is checked
    to be the tool's first (:func:`claim_asset_folder`)."""
    if parts and parts[0] in OUTPUT_FOLDERS:
        claim_asset_folder(output, parts[0])
    path = expand(output).joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def claim_asset_folder(output: str | os.PathLike, name: str) -> Path:
    """The asset ``name``'s folder under ``output``, checked to be the tool's and marked as such
    when it exists (:func:`~animal_assets.core.atomic.claim_folder`); both runners call this
    before a step writes there.

    Raises
    ------
    ForeignFolderError
        When the folder holds files the tool did not write, or is a link or a file.
    """
    return claim_folder(expand(output) / name, known=OUTPUT_FOLDERS[name])


def _peek_k(path: Path, what: str) -> int | None:
    if not path.exists():
        raise InputError(f"{path}: the {what} does not exist")
    table = peek_labels(path)
    return None if table is None else table.num_classes


def preflight(
    dataset: str | os.PathLike | None, output: str | os.PathLike, *,
    test_set: str | os.PathLike | None = None, truth: str | os.PathLike | None = None,
    review: str | os.PathLike | None = None, class_names: list[str] | None = None,
    summary_json: str | os.PathLike | None = None,
) -> Checked:
    """Check every input of a run, before anything is written (see the module docstring).

    Parameters
    ----------
    dataset : path or None
        The dataset (folder or archive); None is the built-in demo, made on first use: the
        other inputs are then checked without its K.
    output : path
        The output folder.
    test_set, truth, review : path, optional
        The external test set, the ground-truth file and the review file, when given.
    class_names : list of str, optional
        Names for the classes, in label order.
    summary_json : path, optional
        Where the run summary will be written.

    Returns
    -------
    Checked

    Raises
    ------
    InputError
        On the first broken rule.
    """
    inputs = {"dataset": dataset, "test set": test_set, "truth file": truth, "review file": review}
    check_overlap(output, inputs, summary_json=summary_json)
    check_output(output, summary_json=summary_json)
    if review and not expand(review).is_file():
        raise InputError(f"{expand(review)}: the review file does not exist")
    table = None
    if dataset is not None:
        dataset = expand(dataset)
        if not dataset.exists():
            raise InputError(f"{dataset}: the dataset does not exist")
        table = peek_labels(dataset)
    k = None if table is None else table.num_classes
    if test_set:
        test_k = _peek_k(expand(test_set), "test set")
        if test_k is None:
            raise InputError(f"{expand(test_set)}: the test set has no readable labels file "
                             "(data-labels.json at the top or inside one wrapping folder)")
        if k is not None and test_k != k:
            raise InputError(f"{expand(test_set)}: the test set's labels have K={test_k}, the "
                             f"dataset's K={k}; it must use the same classes in the same order")
    if class_names and k is not None and len(class_names) != k:
        raise InputError(f"--class-names lists {len(class_names)} names, the labels of {dataset} "
                         f"have K={k}; give one name per class, in label order")
    matched = None
    if truth:
        from animal_assets.core.truth import read_truth

        path = expand(truth)
        if not path.is_file():
            raise InputError(f"{path}: the truth file does not exist")
        try:
            entries = read_truth(path, num_classes=k)
        except (ValueError, UnicodeDecodeError) as err:
            raise InputError(str(err).splitlines()[0]) from None
        if table is not None:
            matched = len(set(entries) & set(table.values))
            if entries and matched == 0:
                raise InputError(
                    f"{path}: none of the truth file's {len(entries)} ids is an image of "
                    f"{dataset}; a truth file scores the dataset it was made with")
    if review:
        from animal_assets.core.review import ReviewError, check_field_counts, read_review

        try:
            if table is not None and table.classes:
                # every rule of the review, against the images whose labels meet the rules
                read_review(expand(review), known_ids=list(table.classes),
                            given=list(table.classes.values()), num_classes=k,
                            class_names=class_names or ())
            else:  # the labels could not be read alone: the rules that need the file only
                check_field_counts(expand(review))
        except ReviewError as err:
            raise InputError(str(err)) from None
    return Checked(k, matched)

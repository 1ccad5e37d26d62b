"""Resources: where the input dataset is, where outputs go, and which device computes."""
from __future__ import annotations

from pathlib import Path

import dagster as dg

from animal_assets.core.preflight import (
    DEFAULT_OUTPUT, RunInputs, claim_asset_folder, expand, output_path, preflight,
)
from animal_assets.core.stages.base import class_names


class StorageResource(dg.ConfigurableResource):
    """The output folder. Every asset writes its files under ``{root}/{asset name}/``."""

    root: str = DEFAULT_OUTPUT

    def path(self, *parts: str) -> Path:
        """``root/parts...`` (:func:`~animal_assets.core.preflight.output_path`)."""
        return output_path(self.root, *parts)

    def mark(self, name: str) -> None:
        """Mark the asset ``name``'s folder as the tool's once its step has written it."""
        claim_asset_folder(self.root, name)


class DatasetResource(dg.ConfigurableResource):
    """The input dataset (a folder or a .zip/.tar.gz/.tgz archive in the DS801 format).

    Left empty, the graph runs on the built-in demo dataset, generated deterministically from
    ``demo_seed`` on first use. ``truth_path`` (a ground-truth file) and ``test_set`` (an
    external clean test set in the same format and class order) are optional and only used
    for scoring in ``eval_report``. ``review_path`` is a person's review of the cleaning
    decisions (CSV: id, action, label, note; see :mod:`animal_assets.core.review`); empty: none.
    """

    path: str = ""
    truth_path: str = ""
    test_set: str = ""
    review_path: str = ""
    class_names: list[str] = []
    demo_seed: int = 0
    demo_size: str = "demo"  # "demo" (~1.8k images) or "tiny" (~200, for tests)

    def is_demo(self) -> bool:
        return not self.path

    def resolve(self, storage: StorageResource) -> tuple[str, str | None]:
        """Return (dataset path, truth path or None), generating the demo dataset if needed."""
        if not self.is_demo():
            return str(expand(self.path)), str(expand(self.truth_path)) if self.truth_path else None
        from animal_assets.core.synthetic.demo import make_demo_dataset
        from animal_assets.core.truth import DATASET_DIRNAME, TRUTH_FILE

        folder = storage.path("demo_dataset", f"{self.demo_size}-seed{self.demo_seed}")
        dataset, truth = folder / DATASET_DIRNAME, folder / TRUTH_FILE
        if not (dataset.exists() and truth.exists()):
            made = make_demo_dataset(folder, seed=self.demo_seed, size=self.demo_size)
            dataset, truth = Path(made.dataset_dir), Path(made.truth_path)
        return str(dataset), str(expand(self.truth_path)) if self.truth_path else str(truth)

    def check(self, storage: StorageResource, *, summary_json: str | None = None) -> None:
        """Validate every configured input against the rules of :mod:`animal_assets.core.preflight`
        before anything is written; raises ``InputError`` with one line."""
        preflight(
            None if self.is_demo() else self.path, storage.root, test_set=self.test_set or None,
            truth=self.truth_path or None, review=self.review_path or None,
            class_names=list(self.class_names) or None, summary_json=summary_json,
        )

    def names(self, num_classes: int) -> list[str]:
        return class_names(self.class_names, num_classes)


class DeviceResource(dg.ConfigurableResource):
    """The torch device for embedding and training: "auto" picks CUDA when present."""

    device: str = "auto"


def default_resources() -> dict:
    """Resources read from the environment (:class:`RunInputs`), so a shell or a Makefile can
    pick the dataset."""
    inputs = RunInputs.from_env()
    return {
        "storage": StorageResource(root=inputs.output),
        "dataset": DatasetResource(
            path=inputs.dataset, truth_path=inputs.truth, test_set=inputs.test_set,
            review_path=inputs.review, class_names=list(inputs.class_names),
        ),
        "compute": DeviceResource(device=inputs.device),
    }

"""Ground-truth files: what a benchmark or the demo did to each image, for scoring only.

``{"img_{uuid}": {"true": 3, "given": 5, "kind": "flipped"}}``: ``true`` is the class index or
-1 for an out-of-distribution image, ``kind`` one of :data:`KINDS`. The files are written by
:func:`animal_assets.core.synthetic.noise.write_noisy_dataset` beside the dataset folder, so
nothing that cleans the dataset reads them.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from animal_assets.core.ds801 import IMAGE_ID

KINDS = ("clean", "flipped", "ood", "dup_conflict")
DATASET_DIRNAME = "train-set"
TRUTH_FILE = "truth.json"
_ID_RE = re.compile(IMAGE_ID, re.ASCII)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_truth(path: str | os.PathLike, *, num_classes: int | None = None) -> dict[str, dict]:
    """Read and validate a ``truth.json``.

    Parameters
    ----------
    path : path
        The truth file.
    num_classes : int, optional
        When given, every ``given`` and ``true`` label must also be below it.

    Returns
    -------
    dict
        ``{"img_{uuid}": {"true": int, "given": int, "kind": str}}``.

    Raises
    ------
    ValueError
        Naming the offending key and rule, when the file breaks the format.
    """
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the top level must be a JSON object")
    for key, entry in data.items():
        where = f"{path}: {key!r}"
        if not _ID_RE.fullmatch(key):
            raise ValueError(f"{where}: key must look like img_{{uuid}}")
        if not isinstance(entry, dict) or set(entry) != {"true", "given", "kind"}:
            raise ValueError(f"{where}: value must be an object with exactly true, given, kind")
        true, given, kind = entry["true"], entry["given"], entry["kind"]
        if not _is_int(true) or true < -1:
            raise ValueError(f"{where}: 'true' must be an integer >= -1, got {true!r}")
        if not _is_int(given) or given < 0:
            raise ValueError(f"{where}: 'given' must be an integer >= 0, got {given!r}")
        if num_classes is not None and max(true, given) >= num_classes:
            raise ValueError(f"{where}: labels must be below num_classes={num_classes}")
        if kind not in KINDS:
            raise ValueError(f"{where}: 'kind' must be one of {KINDS}, got {kind!r}")
        if (kind == "ood") != (true == -1):
            raise ValueError(f"{where}: 'true' is -1 exactly for kind 'ood'")
        if kind == "clean" and given != true:
            raise ValueError(f"{where}: a 'clean' item must have given == true")
        if kind == "flipped" and given == true:
            raise ValueError(f"{where}: a 'flipped' item must have given != true")
    return data

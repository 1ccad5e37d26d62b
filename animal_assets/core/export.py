"""DS801 exports with the decoded arrays the trainer reads, and their deterministic zip."""
from __future__ import annotations

import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core import ds801
from animal_assets.core.atomic import atomic_path, save_npy

#: The time of every member of the exported zip (the earliest a zip can hold).
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Split:
    """A DS801 export plus the decoded arrays the trainer reads (decoded from the export)."""

    dir: str  # the DS801 folder (imgs/ + data-labels.json)
    images_path: str  # (N, 64, 64, 3) uint8 .npy
    labels_path: str  # (N,) int64 .npy
    ids_path: str  # CSV: id, label, source_id, generated
    counts: tuple[int, ...]


def export_split(
    out_dir: Path, *, ids, labels, jpegs, source_ids, generated, num_classes: int,
) -> Split:
    """Write a DS801 folder plus arrays decoded from exactly the exported JPEG bytes."""
    from animal_assets.core.formats import decode_image

    ds_dir = out_dir / "ds801"
    ds801.write_ds801(ds_dir, zip(ids, jpegs, labels), num_classes=num_classes)
    images = np.empty((len(ids), ds801.IMAGE_SIZE, ds801.IMAGE_SIZE, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        array, reason, _ = decode_image(data, name=f"{ids[i]}.jpg")
        if array is None:
            raise RuntimeError(f"{ids[i]}.jpg: exported image does not decode ({reason})")
        images[i] = array
    labels = np.asarray(labels, dtype=np.int64)
    save_npy(out_dir / "images.npy", images)
    save_npy(out_dir / "labels.npy", labels)
    table = pd.DataFrame(
        {"id": ids, "label": labels, "source_id": source_ids, "generated": generated}
    )
    with atomic_path(out_dir / "ids.csv") as tmp:
        table.to_csv(tmp, index=False)
    counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    return Split(
        dir=str(ds_dir), images_path=str(out_dir / "images.npy"),
        labels_path=str(out_dir / "labels.npy"), ids_path=str(out_dir / "ids.csv"),
        counts=counts,
    )


def relocate(split_: Split, tmp: Path, final: Path) -> Split:
    """Rewrite the paths of a Split written inside an atomic temporary folder."""
    def move(p: str) -> str:
        return str(final / Path(p).relative_to(tmp))

    return Split(
        dir=move(split_.dir), images_path=move(split_.images_path),
        labels_path=move(split_.labels_path), ids_path=move(split_.ids_path),
        counts=split_.counts,
    )


def zip_tree(path: Path, folders: dict[str, Path]) -> None:
    """Store ``folders`` (prefix -> folder) in one zip whose bytes depend on the files only."""
    # JPEGs do not compress; storing keeps the archive quick to write and to read.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for prefix, folder in folders.items():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    # fixed time, mode and system instead of the file's: the same export gives
                    # the same archive bytes
                    info = zipfile.ZipInfo(f"{prefix}/{file.relative_to(folder).as_posix()}",
                                           date_time=ZIP_DATE_TIME)
                    info.create_system = 3  # Unix, so the mode bits below are meaningful
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    zf.writestr(info, file.read_bytes(), compress_type=zipfile.ZIP_STORED)

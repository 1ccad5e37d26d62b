"""The DS801 dataset format: names, constants and an atomic writer.

A DS801 dataset is a folder holding ``imgs/img_{uuid}.jpg`` (64x64 RGB JPEG) and
``data-labels.json`` mapping ``"img_{uuid}"`` to a one-hot list of K JSON integers.
The validation rules live in :mod:`animal_assets.core.formats`; this module only knows how to
name and write such a folder.
"""
from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from animal_assets.core.atomic import atomic_dir

IMAGES_DIR = "imgs"
LABELS_FILE = "data-labels.json"
IMAGE_SIZE = 64
#: An image id: ``img_`` and a lowercase UUID (its file is the id plus ``.jpg``).
IMAGE_ID = r"img_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
JPEG_QUALITY = 95  # high enough that re-encoded copies keep the detail the model learns from


def new_image_id(rng: np.random.Generator) -> str:
    """Return a fresh ``img_{uuid4}`` id drawn from ``rng`` (deterministic for a seeded rng)."""
    return f"img_{uuid.UUID(bytes=rng.bytes(16), version=4)}"


#: Namespace of the uuid5 ids of generated images (any fixed uuid would do; this one is random).
GENERATED_NAMESPACE = uuid.UUID("5b0c3f1e-8d2a-4c57-9e61-2f4a7d9b3c08")


def derived_image_id(source_id: str, copy: int, *, seed: int, taken: set[str]) -> str:
    """Return a deterministic ``img_{uuid}`` id for the ``copy``-th image generated from
    ``source_id``, unique against ``taken`` (which it joins).

    The uuid is a uuid5 of the source id, the copy index, the seed and an attempt counter: the
    same inputs give the same ids, and an id already in ``taken`` (an image of the input, e.g.
    one a previous run generated and exported) is drawn again with the next attempt.
    """
    attempt = 0
    while True:
        image_id = f"img_{uuid.uuid5(GENERATED_NAMESPACE, f'{source_id}/{copy}/{seed}/{attempt}')}"
        if image_id not in taken:
            taken.add(image_id)
            return image_id
        attempt += 1


def one_hot(label: int, num_classes: int) -> list[int]:
    """Return the DS801 label list for class ``label``: K JSON integers with a single 1."""
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} is outside 0..{num_classes - 1}")
    return [1 if k == label else 0 for k in range(num_classes)]


def encode_jpeg(image: np.ndarray, *, quality: int = JPEG_QUALITY) -> bytes:
    """Encode an ``(H, W, 3)`` uint8 RGB array as JPEG bytes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {image.dtype} {image.shape}")
    buf = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_ds801(
    out_dir: str | os.PathLike,
    items: Iterable[tuple[str, bytes, int]],
    *,
    num_classes: int,
) -> Path:
    """Write a DS801 folder atomically.

    Parameters
    ----------
    out_dir : path
        Folder to create or replace (replaced only once everything is written).
    items : iterable of (image_id, jpeg_bytes, label)
        ``image_id`` is ``img_{uuid}`` without extension; ``label`` a class index in 0..K-1.
    num_classes : int
        K, the length of every one-hot label list.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    labels: dict[str, list[int]] = {}
    # a DS801 folder holds its images and labels only: no ownership marker; one that holds
    # anything else is never replaced
    with atomic_dir(out_dir, known=(IMAGES_DIR, LABELS_FILE), mark=False) as tmp:
        imgs = tmp / IMAGES_DIR
        imgs.mkdir()
        for image_id, data, label in items:
            if image_id in labels:
                raise ValueError(f"{image_id}: written twice to {out_dir}")
            labels[image_id] = one_hot(int(label), num_classes)
            (imgs / f"{image_id}.jpg").write_bytes(data)
        (tmp / LABELS_FILE).write_text(json.dumps(labels, sort_keys=True) + "\n")
    return out_dir

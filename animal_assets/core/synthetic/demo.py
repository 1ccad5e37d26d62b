"""The built-in demo dataset: noisy handwritten digits, built offline and deterministically.

scikit-learn ships 1,797 labelled 8x8 digit images and two photographs; both are on disk, so the
demo needs no download. Digits are upscaled to 64x64 RGB with a seeded jitter of size, position
and colours; the out-of-distribution images are random crops of the two photographs. Known noise
(:mod:`animal_assets.core.synthetic.noise`) is injected on top, mirroring the DS801 set: five pairs of
look-alike classes confused with each other, OOD images, imbalance and conflicting duplicates.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from animal_assets.core.atomic import atomic_dir
from animal_assets.core.ds801 import IMAGE_SIZE
from animal_assets.core.synthetic.noise import NoiseSpec, inject_noise, n_ood_for, substream, write_noisy_dataset
from animal_assets.core.truth import DATASET_DIRNAME, TRUTH_FILE

NUM_CLASSES = 10
CLASS_NAMES = tuple(str(d) for d in range(NUM_CLASSES))
# Five look-alike pairs covering all ten digits, like the five animal pairs of DS801:
# 0/6 a closed loop, 6 with a stem; 1/7 a single stroke, 7 with a top bar; 2/5 mirror images in
# seven-segment form; 3/8 the same right half, 8 closed on the left; 4/9 open versus closed top.
DEMO_PAIRS = ((0, 6), (1, 7), (2, 5), (3, 8), (4, 9))
# Imbalance of up to 2x; the second class of some pairs is the smaller one, as in DS801.
DEMO_CLASS_KEEP = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.55, 0.5)
_CROP_TRIES = 5
_MIN_CROP_STD = 15.0
_TURNS = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
          Image.Transpose.ROTATE_270)
SIZES = {
    # size: (digits per class before class_keep, None = all; n_dup_conflicts)
    "demo": (None, 10),
    "tiny": (24, 4),
}


def demo_spec(size: str = "demo") -> NoiseSpec:
    """Return the noise injected into the demo of the given ``size`` ("demo" or "tiny")."""
    if size not in SIZES:
        raise ValueError(f"demo size must be one of {sorted(SIZES)}, got {size!r}")
    return NoiseSpec(
        pairs=DEMO_PAIRS,
        pair_flip_rate=0.15,
        symmetric_flip_rate=0.02,
        ood_fraction=0.06,
        class_keep=DEMO_CLASS_KEEP,
        n_dup_conflicts=SIZES[size][1],
    )


@dataclass(frozen=True)
class DemoDataset:
    """Where a demo dataset was written and what it holds."""

    dataset_dir: Path
    truth_path: Path
    num_classes: int
    counts: dict[str, int]  # items per kind: clean, flipped, ood, dup_conflict
    class_names: tuple[str, ...] = CLASS_NAMES


def render_digits(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Render 8x8 digit intensities as 64x64 RGB images with jittered size, place and colours.

    Parameters
    ----------
    digits : ndarray, shape (N, 8, 8)
        Intensities in 0..16 (scikit-learn's digits).
    rng : numpy.random.Generator
        Source of the jitter.

    Returns
    -------
    ndarray, shape (N, 64, 64, 3), uint8
    """
    out = np.empty((len(digits), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, digit in enumerate(digits):
        side = int(rng.integers(40, 57))
        x0, y0 = rng.integers(0, IMAGE_SIZE - side + 1, 2)
        dark = rng.random() < 0.5
        # background and stroke on opposite ends of the range keep every digit clearly legible
        low, high = rng.uniform(0, 70, 3), rng.uniform(185, 255, 3)
        bg, fg = (low, high) if dark else (high, low)
        glyph = Image.fromarray((digit / 16.0).astype(np.float32), mode="F")
        glyph = np.asarray(glyph.resize((side, side), Image.Resampling.BILINEAR))
        alpha = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
        alpha[y0:y0 + side, x0:x0 + side] = np.clip(glyph, 0.0, 1.0)
        out[i] = np.rint(bg + (fg - bg) * alpha[..., None]).astype(np.uint8)
    return out


def photo_crops(n: int, rng: np.random.Generator) -> np.ndarray:
    """Cut ``n`` varied 64x64 crops from scikit-learn's sample photos (china.jpg, flower.jpg).

    Crop sides are log-uniform between 16 and 300 px, aspect 3:4 to 4:3, anywhere in the photo,
    half of them mirrored or turned, so the crops range from texture close-ups to whole scenes.
    Near-flat patches are redrawn (a few tries, then kept).

    Returns
    -------
    ndarray, shape (n, 64, 64, 3), uint8
    """
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(p) for p in load_sample_images().images]
    out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i in range(n):
        for _ in range(_CROP_TRIES):
            photo = photos[int(rng.integers(len(photos)))]
            w, h = photo.size
            side = float(np.exp(rng.uniform(np.log(16), np.log(300))))
            aspect = float(np.exp(rng.uniform(np.log(0.75), np.log(4 / 3))))
            cw, ch = min(w, side * np.sqrt(aspect)), min(h, side / np.sqrt(aspect))
            x0, y0 = rng.uniform(0, w - cw), rng.uniform(0, h - ch)
            crop = photo.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR,
                                box=(x0, y0, x0 + cw, y0 + ch))
            if rng.random() < 0.5:
                crop = crop.transpose(_TURNS[int(rng.integers(len(_TURNS)))])
            out[i] = np.asarray(crop)
            # skip near-flat patches (open sky, blurred background): they look like nothing
            if out[i].reshape(-1, 3).std(axis=0).mean() >= _MIN_CROP_STD:
                break
    return out


def make_demo_dataset(out_dir: str | os.PathLike, *, seed: int = 0, size: str = "demo") -> DemoDataset:
    """Build the noisy digits demo into ``out_dir`` (created or replaced atomically).

    ``out_dir/train-set`` is the DS801 dataset and ``out_dir/truth.json`` its ground truth.
    "demo" uses all 1,797 digits (about 1,460 items after imbalance, 6 % OOD, 10 conflicting
    duplicates); "tiny" uses 24 digits per class (about 200 items) for fast tests.

    Parameters
    ----------
    out_dir : path
        Folder to create or replace.
    seed : int
        The same seed gives byte-identical files.
    size : {"demo", "tiny"}
        How many digits to use.

    Returns
    -------
    DemoDataset
    """
    from sklearn.datasets import load_digits

    spec = demo_spec(size)
    per_class = SIZES[size][0]
    digits = load_digits()
    images, labels = digits.images, digits.target.astype(np.int64)
    if per_class is not None:
        pick_rng = substream(seed, "demo-pick")
        chosen = [np.sort(pick_rng.choice(np.flatnonzero(labels == c), per_class, replace=False))
                  for c in range(NUM_CLASSES)]
        chosen = np.concatenate(chosen)
        images, labels = images[chosen], labels[chosen]
    clean = render_digits(images, substream(seed, "demo-render"))
    # an upper bound on the OOD count (class_keep only lowers it), so the pool always suffices
    n_pool = n_ood_for(len(labels) + spec.n_dup_conflicts, spec.ood_fraction) + 1
    ood = photo_crops(n_pool, substream(seed, "demo-ood"))
    noisy = inject_noise(clean, labels, ood, spec, num_classes=NUM_CLASSES, seed=seed)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, known=(DATASET_DIRNAME, TRUTH_FILE)) as tmp:
        write_noisy_dataset(tmp, noisy, num_classes=NUM_CLASSES, seed=seed)
    return DemoDataset(
        dataset_dir=out_dir / DATASET_DIRNAME,
        truth_path=out_dir / TRUTH_FILE,
        num_classes=NUM_CLASSES,
        counts=noisy.counts(),
    )

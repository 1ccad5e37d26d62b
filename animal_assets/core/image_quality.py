"""Image-quality scores per image: dark, light, low information, blurry, grayscale, padded.

Each kind has a score and a flag (the score past its threshold in :class:`Thresholds`). The
scores are computed on the decoded uint8 pixels, chunk by chunk, in NumPy:

* **dark** / **light**: luma ``Y = 0.299 R + 0.587 G + 0.114 B`` in [0, 1]. ``dark`` is the 95th
  percentile of an image's luma (even its bright parts are dark), ``light`` the 5th percentile
  (even its dark parts are washed out).
* **low information**: Shannon entropy of the 256-bin luma histogram, in bits (0 for a
  constant image, 8 at most). A near-constant or two-tone image carries little to learn from.
* **blurry**: the share of the luma's variance left in its finest detail, ``var(L) / (var(L) +
  var(Y))`` with ``L`` the 4-neighbour Laplacian, computed without the borders. The ratio does not
  depend on contrast or brightness, only on how the variance spreads over spatial frequencies,
  which works at 64 px where absolute Laplacian variances depend on content. An image
  upsampled from a quarter of its size, or blurred with a Gaussian of 1.5 px, keeps a small share.
* **grayscale**: the 99th percentile over pixels of the channel spread ``max(R, G, B) - min(R, G,
  B)``, in 0-255. A grayscale picture stored as RGB keeps only JPEG's chroma noise.
* **padded**: the share of the image covered by uniform bands along its borders (letterboxing,
  pillarboxing, frames): a band is a run of outer rows (or columns) that stay near the colour
  of the band's first row (see :func:`_band`), ending at a straight edge where the picture
  starts. Only bands on both of two opposite sides count; a plain studio background is content.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

KINDS = ("dark", "light", "low_information", "blurry", "grayscale", "padded")
EDGE_LINES = 3  # lines past a band in which its edge is looked for
EDGE_SHARE = 0.5  # share of the line past a band that must leave its colour
MIN_BAND = 2  # lines a band must have on each of two opposite sides
PAD_MEAN = 6.0  # mean uint8 levels a padding line may differ from the band's colour
PAD_MAX = 32.0  # uint8 levels any of its pixels may differ (JPEG's ringing along the edge)
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class Thresholds:
    """Where each score becomes a flag."""

    dark_below: float = 0.25  # 95th percentile of luma below this: dark
    light_above: float = 0.85  # 5th percentile of luma above this: light
    low_information_below: float = 2.5  # bits of luma entropy below this: low information
    blurry_below: float = 0.05  # share of variance in the finest detail below this: blurry
    grayscale_below: float = 12.0  # 99th percentile of the channel spread below this: grayscale
    padded_above: float = 0.12  # share of the image in uniform border bands above this: padded

    def flags(self, scores: pd.DataFrame) -> pd.DataFrame:
        """One bool column per kind of :data:`KINDS`."""
        return pd.DataFrame({
            "dark": scores["dark"].to_numpy() < self.dark_below,
            "light": scores["light"].to_numpy() > self.light_above,
            "low_information": scores["low_information"].to_numpy() < self.low_information_below,
            "blurry": scores["blurry"].to_numpy() < self.blurry_below,
            "grayscale": scores["grayscale"].to_numpy() < self.grayscale_below,
            "padded": scores["padded"].to_numpy() > self.padded_above,
        }, index=scores.index)


def _entropy(luma8: np.ndarray) -> np.ndarray:
    n, pixels = luma8.shape
    offsets = (np.arange(n, dtype=np.int64) * 256)[:, None]
    counts = np.bincount((luma8 + offsets).ravel(), minlength=n * 256).reshape(n, 256)
    p = counts / float(pixels)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=1)


def _quantile(values: np.ndarray, q: float) -> np.ndarray:
    """Per-row order statistic at ``q`` (the lower one: no interpolation), in linear time."""
    k = min(values.shape[1] - 1, int(q * (values.shape[1] - 1)))
    return np.partition(values, k, axis=1)[:, k]


def _band(lines: np.ndarray) -> np.ndarray:
    """Lines in the padding band at the start of each image's ``lines`` axis: lines (n, L, W, 3).

    A line belongs while it and all earlier lines stay near the first line's mean colour: a mean
    deviation of at most ``PAD_MEAN`` and no pixel past ``PAD_MAX`` (JPEG's ringing along the
    band's edge stays within these). The band counts only if it ends at an edge: at least
    ``EDGE_SHARE`` of the pixels of one of the next ``EDGE_LINES`` lines leave the colour by more
    than ``PAD_MAX``, as where a picture starts under a letterbox bar; a plain background ends
    where an object's outline first touches it, in a few pixels of a line. At most half the
    lines are looked at.
    """
    n, length = lines.shape[:2]
    colour = lines[:, 0].mean(axis=1)  # (n, 3)
    band = np.zeros(n, dtype=np.int64)
    # line by line, only the images whose band has not ended yet: most end at the first line
    active = np.arange(n)
    for line in range((length + 1) // 2):
        if not len(active):
            break
        dev = np.abs(lines[active, line] - colour[active, None, :]).max(axis=2)  # (active, W)
        active = active[(dev.mean(axis=1) <= PAD_MEAN) & (dev.max(axis=1) <= PAD_MAX)]
        band[active] += 1
    after = lines[np.arange(n)[:, None], np.minimum(band[:, None] + np.arange(EDGE_LINES), length - 1)]
    leaves = (np.abs(after - colour[:, None, None, :]) > PAD_MAX).any(axis=3).mean(axis=2).max(axis=1)
    return np.where(leaves >= EDGE_SHARE, band, 0)


def _padded(images: np.ndarray) -> np.ndarray:
    _, h, w, _ = images.shape
    columns = images.transpose(0, 2, 1, 3)
    top, bottom = _band(images), _band(images[:, ::-1])
    left, right = _band(columns), _band(columns[:, ::-1])
    # letterboxing and pillarboxing pad both opposite sides; a plain background touching one
    # edge is content
    rows = np.where(np.minimum(top, bottom) >= MIN_BAND, np.minimum(top + bottom, h), 0)
    cols = np.where(np.minimum(left, right) >= MIN_BAND, np.minimum(left + right, w), 0)
    covered = rows * w + cols * h - rows * cols
    return covered / float(h * w)


def score_images(images: np.ndarray, *, chunk: int = 2048) -> pd.DataFrame:
    """The six scores of every image (see the module docstring).

    Parameters
    ----------
    images : np.ndarray, uint8, shape (N, H, W, 3)
        RGB pixels (may be a memory map: it is read chunk by chunk).
    chunk : int
        Images per step; steps run side by side in threads (:mod:`animal_assets.core.jobs`).

    Returns
    -------
    pandas.DataFrame
        N rows, the columns of :data:`KINDS`, float64.
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[3] != 3:
        raise ValueError("image_quality.py: images must be a uint8 array (N, H, W, 3), got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    if images.shape[1] < 3 or images.shape[2] < 3:
        raise ValueError(f"image_quality.py: images must be at least 3x3 pixels, got {images.shape[1:3]}")
    from animal_assets.core.jobs import map_ordered

    def score(start: int) -> pd.DataFrame:
        x = np.asarray(images[start:start + chunk])
        n = len(x)
        luma = (x.astype(np.float32) @ _LUMA) / 255.0  # (n, H, W)
        flat = luma.reshape(n, -1)
        lap = (4.0 * luma[:, 1:-1, 1:-1] - luma[:, :-2, 1:-1] - luma[:, 2:, 1:-1]
               - luma[:, 1:-1, :-2] - luma[:, 1:-1, 2:])
        var_l = lap.reshape(n, -1).var(axis=1, dtype=np.float64)
        var_y = luma[:, 1:-1, 1:-1].reshape(n, -1).var(axis=1, dtype=np.float64)
        total = var_l + var_y
        r, g, b = x[..., 0], x[..., 1], x[..., 2]
        spread = (np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)).reshape(n, -1)
        return pd.DataFrame({
            "dark": _quantile(flat, 0.95),
            "light": _quantile(flat, 0.05),
            "low_information": _entropy(np.clip(np.rint(flat * 255.0), 0, 255).astype(np.int64)),
            # a constant image has no detail to lose: 1.0 keeps it off the blurry list (it is
            # low-information instead)
            "blurry": np.where(total > 1e-12, var_l / np.where(total > 1e-12, total, 1.0), 1.0),
            "grayscale": _quantile(spread, 0.99),
            "padded": _padded(x),
        })

    # the chunks are independent: scored side by side, joined in order
    parts = list(map_ordered(score, range(0, len(images), chunk)))
    if not parts:
        return pd.DataFrame({kind: np.zeros(0) for kind in KINDS})
    return pd.concat(parts, ignore_index=True).astype(np.float64)


def issues(flags: pd.DataFrame) -> pd.Series:
    """The kinds flagged per image, comma-separated ("" for none)."""
    arr = flags[list(KINDS)].to_numpy(dtype=bool)
    return pd.Series([",".join(k for k, f in zip(KINDS, row) if f) for row in arr], index=flags.index)

"""Batch image augmentations that run on whatever device holds the batch.

Every function works on a whole NCHW batch at once (no Python loop over images) and draws its
randomness from an explicit ``torch.Generator``, so a seeded generator replays the same
augmentations. Random numbers are drawn on the generator's device and then moved to the batch's
device; with a CPU generator the augmentations are therefore identical on CPU and CUDA.

:func:`augment_uint8_images` applies the same transforms offline to HWC uint8 numpy images, to
make the extra copies used to oversample rare classes.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

PAD_MODES = ("reflect", "zeros")
ROTATE_PAD_MODES = ("reflection", "zeros", "border")


def _check_batch(x: torch.Tensor, where: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise ValueError(f"augment.{where}: expected an NCHW tensor, got {getattr(x, 'shape', type(x))}")


def _uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device, non_blocking=True)


def random_flip(x: torch.Tensor, *, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``.

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), any dtype and device.
    generator : torch.Generator
        Source of the per-image coin flips.
    p : float
        Probability that an image is mirrored.

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    _check_batch(x, "random_flip")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment.random_flip: p must lie in [0, 1], got {p}")
    mask = (_uniform(x.shape[0], generator, x.device) < p).view(-1, 1, 1, 1)
    return torch.where(mask, x.flip(3), x)


def _source_index(idx: torch.Tensor, size: int, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Map possibly out-of-range pixel indices to valid ones; also return an in-range mask."""
    inside = (idx >= 0) & (idx < size)
    if mode == "reflect":
        # Mirror without repeating the edge pixel, the same rule as F.pad(mode="reflect").
        period = 2 * (size - 1) if size > 1 else 1
        idx = torch.remainder(idx, period)
        idx = torch.where(idx >= size, period - idx, idx)
        return idx, torch.ones_like(inside)
    return idx.clamp(0, size - 1), inside


def shift_images(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, *, mode: str = "reflect") -> torch.Tensor:
    """Move image ``n`` down by ``dy[n]`` and right by ``dx[n]`` pixels, filling the gap.

    Equivalent to padding each image and cropping it back to H x W at an offset, done for the
    whole batch with one gather.

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), any dtype and device.
    dy, dx : torch.Tensor
        Integer shifts (N,); negative values move up / left.
    mode : {"reflect", "zeros"}
        How the uncovered border is filled.

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    _check_batch(x, "shift_images")
    if mode not in PAD_MODES:
        raise ValueError(f"augment.shift_images: mode must be one of {PAD_MODES}, got {mode!r}")
    n, _, h, w = x.shape
    dy = dy.to(device=x.device, dtype=torch.long).view(n, 1)
    dx = dx.to(device=x.device, dtype=torch.long).view(n, 1)
    rows, row_ok = _source_index(torch.arange(h, device=x.device).view(1, h) - dy, h, mode)
    cols, col_ok = _source_index(torch.arange(w, device=x.device).view(1, w) - dx, w, mode)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    # Advanced indexing on dims 0, 2, 3 puts the channel axis last: (N, H, W, C).
    out = x[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)].permute(0, 3, 1, 2)
    if mode == "zeros":
        keep = (row_ok.view(n, 1, h, 1) & col_ok.view(n, 1, 1, w))
        out = out * keep.to(out.dtype)
    return out.contiguous()


def random_translate(x: torch.Tensor, *, max_shift: int, generator: torch.Generator,
                     mode: str = "reflect") -> torch.Tensor:
    """Shift each image by a random whole number of pixels in ``[-max_shift, max_shift]`` per axis.

    This is the usual "pad by ``max_shift`` and random-crop back" augmentation.

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), any dtype and device.
    max_shift : int
        Largest shift in pixels; 0 returns ``x`` unchanged.
    generator : torch.Generator
        Source of the shifts.
    mode : {"reflect", "zeros"}
        How the uncovered border is filled.

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    _check_batch(x, "random_translate")
    if max_shift < 0:
        raise ValueError(f"augment.random_translate: max_shift must be >= 0, got {max_shift}")
    if max_shift == 0:
        return x
    n = x.shape[0]
    shifts = torch.randint(-max_shift, max_shift + 1, (2, n), generator=generator, device=generator.device)
    return shift_images(x, shifts[0], shifts[1], mode=mode)


def rotate_images(x: torch.Tensor, degrees: torch.Tensor, *, padding_mode: str = "reflection") -> torch.Tensor:
    """Rotate image ``n`` counter-clockwise by ``degrees[n]`` about its centre (bilinear).

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), float or uint8 (uint8 is rounded back to uint8).
    degrees : torch.Tensor
        Angles (N,) in degrees.
    padding_mode : {"reflection", "zeros", "border"}
        How pixels rotated in from outside the frame are filled (``grid_sample`` modes).

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    _check_batch(x, "rotate_images")
    if padding_mode not in ROTATE_PAD_MODES:
        raise ValueError(f"augment.rotate_images: padding_mode must be one of {ROTATE_PAD_MODES}, "
                         f"got {padding_mode!r}")
    n, _, h, w = x.shape
    rad = degrees.to(device=x.device, dtype=torch.float32) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    # affine_grid maps output to input coordinates in [-1, 1]; the aspect terms keep
    # non-square images from shearing.
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=torch.float32)
    theta[:, 0, 0] = cos
    theta[:, 0, 1] = -sin * h / w
    theta[:, 1, 0] = sin * w / h
    theta[:, 1, 1] = cos
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    if x.is_floating_point():
        return out.to(x.dtype)
    info = torch.iinfo(x.dtype)
    return out.round().clamp(info.min, info.max).to(x.dtype)


def random_rotate(x: torch.Tensor, *, max_degrees: float, generator: torch.Generator,
                  padding_mode: str = "reflection") -> torch.Tensor:
    """Rotate each image by an angle drawn uniformly from ``[-max_degrees, max_degrees]``.

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), float or uint8.
    max_degrees : float
        Largest rotation; 0 returns ``x`` unchanged.
    generator : torch.Generator
        Source of the angles.
    padding_mode : {"reflection", "zeros", "border"}
        See :func:`rotate_images`.

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    _check_batch(x, "random_rotate")
    if max_degrees < 0:
        raise ValueError(f"augment.random_rotate: max_degrees must be >= 0, got {max_degrees}")
    if max_degrees == 0:
        return x
    angles = (_uniform(x.shape[0], generator, x.device) * 2.0 - 1.0) * max_degrees
    return rotate_images(x, angles, padding_mode=padding_mode)


def mixup(x: torch.Tensor, y: torch.Tensor, *, alpha: float,
          generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Blend the batch with a shuffled copy of itself (Mixup, one weight per batch).

    Train with ``lam * loss(out, y_a) + (1 - lam) * loss(out, y_b)``.

    Parameters
    ----------
    x : torch.Tensor
        Float batch (N, C, H, W).
    y : torch.Tensor
        Integer labels (N,).
    alpha : float
        Beta(alpha, alpha) concentration; must be > 0.
    generator : torch.Generator
        Source of the weight and of the pairing.

    Returns
    -------
    mixed : torch.Tensor
        ``lam * x + (1 - lam) * x[perm]``, shape (N, C, H, W).
    y_a, y_b : torch.Tensor
        ``y`` and ``y[perm]``, shape (N,).
    lam : float
        Weight of ``x`` in [0, 1].
    """
    _check_batch(x, "mixup")
    if not x.is_floating_point():
        raise TypeError("augment.mixup: x must be a float tensor (blend after converting from uint8)")
    if alpha <= 0:
        raise ValueError(f"augment.mixup: alpha must be > 0, got {alpha}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"augment.mixup: {x.shape[0]} images but {y.shape[0]} labels")
    # torch's Beta sampler takes no generator; a seed drawn from it keeps the whole draw replayable.
    # With a CUDA generator this waits for the device, so pass a CPU generator on CUDA runs.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator, device=generator.device).to(x.device, non_blocking=True)
    mixed = x * lam + x[perm] * (1.0 - lam)
    return mixed, y, y[perm], lam


def augment_batch(x: torch.Tensor, *, generator: torch.Generator, flip: bool, translate: int,
                  rotate_deg: float, pad_mode: str = "reflect") -> torch.Tensor:
    """Apply rotation, then translation, then horizontal flip, each only when enabled.

    Parameters
    ----------
    x : torch.Tensor
        Batch (N, C, H, W), float or uint8.
    generator : torch.Generator
        Source of all random draws.
    flip : bool
        Mirror half of the images left-right.
    translate : int
        Largest shift in pixels (0 disables).
    rotate_deg : float
        Largest rotation in degrees (0 disables).
    pad_mode : {"reflect", "zeros"}
        Fill for translated and rotated borders.

    Returns
    -------
    torch.Tensor
        Batch (N, C, H, W) of the same dtype and device.
    """
    if rotate_deg > 0:
        x = random_rotate(x, max_degrees=rotate_deg, generator=generator,
                          padding_mode="reflection" if pad_mode == "reflect" else "zeros")
    if translate > 0:
        x = random_translate(x, max_shift=translate, generator=generator, mode=pad_mode)
    if flip:
        x = random_flip(x, generator=generator)
    return x


def augment_uint8_images(images: np.ndarray, *, rotate_deg: float, translate: int, flip: bool,
                         seed: int, chunk_size: int = 1024) -> np.ndarray:
    """Return one randomly augmented copy of each image, deterministic for a given ``seed``.

    Parameters
    ----------
    images : np.ndarray
        uint8 images (N, H, W, 3).
    rotate_deg : float
        Largest rotation in degrees (0 disables).
    translate : int
        Largest shift in pixels (0 disables).
    flip : bool
        Mirror half of the images left-right.
    seed : int
        Seed of the augmentation draws.
    chunk_size : int
        Images processed at a time, to bound memory.

    Returns
    -------
    np.ndarray
        uint8 images (N, H, W, 3).
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError("augment.augment_uint8_images: images must be a uint8 array (N, H, W, 3), got "
                         f"{getattr(images, 'dtype', type(images))} {getattr(images, 'shape', '')}")
    if chunk_size < 1 or translate < 0 or rotate_deg < 0:
        raise ValueError("augment.augment_uint8_images: chunk_size must be >= 1 and translate, rotate_deg >= 0")
    n = len(images)
    generator = torch.Generator().manual_seed(int(seed))
    # Draw every image's parameters up front so the result does not depend on chunk_size.
    angles = (torch.rand(n, generator=generator) * 2.0 - 1.0) * rotate_deg
    shifts = torch.randint(-translate, translate + 1, (2, n), generator=generator)
    mirror = torch.rand(n, generator=generator) < 0.5
    out = np.empty_like(images)
    for start in range(0, n, chunk_size):
        part = slice(start, start + chunk_size)
        batch = torch.from_numpy(images[part]).permute(0, 3, 1, 2)
        if rotate_deg > 0:
            batch = rotate_images(batch, angles[part])
        if translate > 0:
            batch = shift_images(batch, shifts[0, part], shifts[1, part])
        if flip:
            batch = torch.where(mirror[part].view(-1, 1, 1, 1), batch.flip(3), batch)
        out[part] = batch.permute(0, 2, 3, 1).numpy()
    return out

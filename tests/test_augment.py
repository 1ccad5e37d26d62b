"""Tests for the batch augmentations in animal_assets.core.augment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from animal_assets.core.augment import (augment_batch, augment_uint8_images, mixup, random_flip,
                                        random_rotate, random_translate, rotate_images, shift_images)


def _batch(dtype: torch.dtype, n: int = 6, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    x = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.int64)
    return x.to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("name", ["flip", "translate", "rotate", "all"])
def test_shapes_and_dtypes_are_kept(dtype, name):
    x = _batch(dtype)
    ops = {
        "flip": lambda: random_flip(x, generator=_gen()),
        "translate": lambda: random_translate(x, max_shift=4, generator=_gen()),
        "rotate": lambda: random_rotate(x, max_degrees=15, generator=_gen()),
        "all": lambda: augment_batch(x, generator=_gen(), flip=True, translate=4, rotate_deg=10),
    }
    out = ops[name]()
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert out.device == x.device


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_flip_twice_with_same_draws_is_identity(dtype):
    x = _batch(dtype, n=32)
    once = random_flip(x, generator=_gen(5))
    twice = random_flip(once, generator=_gen(5))
    assert torch.equal(twice, x)
    flipped = [not torch.equal(once[i], x[i]) for i in range(len(x))]
    for i, was_flipped in enumerate(flipped):
        assert torch.equal(once[i], x[i].flip(2) if was_flipped else x[i])
    assert 0 < sum(flipped) < len(x)  # p=0.5 over 32 images: some of each


@pytest.mark.parametrize("p,expect", [(0.0, "same"), (1.0, "mirrored")])
def test_flip_probability_extremes(p, expect):
    x = _batch(torch.float32)
    out = random_flip(x, generator=_gen(), p=p)
    assert torch.equal(out, x if expect == "same" else x.flip(3))


@pytest.mark.parametrize("mode,torch_mode", [("reflect", "reflect"), ("zeros", "constant")])
@pytest.mark.parametrize("dy,dx", [(2, -3), (-4, 4), (0, 1), (0, 0)])
def test_shift_matches_pad_and_crop(mode, torch_mode, dy, dx):
    x = _batch(torch.float32, n=2, size=16)
    p = 4
    expected = F.pad(x, (p, p, p, p), mode=torch_mode)[:, :, p - dy:p - dy + 16, p - dx:p - dx + 16]
    out = shift_images(x, torch.tensor([dy, dy]), torch.tensor([dx, dx]), mode=mode)
    assert torch.equal(out, expected)


def test_translate_moves_a_single_pixel_within_range():
    n, size, t = 64, 64, 4
    x = torch.zeros(n, 3, size, size, dtype=torch.uint8)
    x[:, :, 30, 20] = 255
    out = random_translate(x, max_shift=t, generator=_gen(3), mode="zeros")
    shifts = set()
    for i in range(n):
        ys, xs = torch.nonzero(out[i, 0], as_tuple=True)
        assert len(ys) == 1  # content moved, not duplicated or lost
        dy, dx = int(ys[0]) - 30, int(xs[0]) - 20
        assert -t <= dy <= t and -t <= dx <= t
        shifts.add((dy, dx))
    assert len(shifts) > 10  # many different offsets, not a constant shift
    assert any(s != (0, 0) for s in shifts)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_rotate_by_90_matches_rot90_and_0_is_identity(dtype):
    x = _batch(dtype, n=2, size=16)
    quarter = rotate_images(x, torch.tensor([90.0, 90.0]))
    same = rotate_images(x, torch.zeros(2))
    if dtype == torch.uint8:  # rounding back to uint8 removes the float error entirely
        assert torch.equal(quarter, torch.rot90(x, 1, dims=(2, 3)))
        assert torch.equal(same, x)
    else:
        assert torch.allclose(quarter, torch.rot90(x, 1, dims=(2, 3)), atol=1e-3)
        assert torch.allclose(same, x, atol=1e-3)


def test_random_rotate_changes_images_and_zero_degrees_is_noop():
    x = _batch(torch.float32)
    assert random_rotate(x, max_degrees=0, generator=_gen()) is x
    out = random_rotate(x, max_degrees=20, generator=_gen())
    assert not torch.equal(out, x)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambda_and_targets(alpha):
    x = torch.rand(16, 3, 8, 8, generator=_gen(1))
    y = torch.arange(16)
    mixed, y_a, y_b, lam = mixup(x, y, alpha=alpha, generator=_gen(2))
    assert 0.0 <= lam <= 1.0
    assert torch.equal(y_a, y)
    assert sorted(y_b.tolist()) == list(range(16))  # a permutation of the batch
    expected = lam * x + (1 - lam) * x[y_b]  # labels equal indices, so y_b is the pairing
    assert torch.allclose(mixed, expected, atol=1e-6)
    again = mixup(x, y, alpha=alpha, generator=_gen(2))
    assert again[3] == lam and torch.equal(again[2], y_b)


@pytest.mark.parametrize("kwargs,error", [
    (dict(alpha=0.0), ValueError),
    (dict(alpha=1.0, as_uint8=True), TypeError),
])
def test_mixup_rejects_bad_input(kwargs, error):
    as_uint8 = kwargs.pop("as_uint8", False)
    x = _batch(torch.uint8 if as_uint8 else torch.float32)
    with pytest.raises(error):
        mixup(x, torch.zeros(len(x), dtype=torch.long), generator=_gen(), **kwargs)


def test_augment_uint8_images_is_deterministic_per_seed():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 64, 64, 3), dtype=np.uint8)
    kwargs = dict(rotate_deg=10.0, translate=4, flip=True)
    a = augment_uint8_images(images, seed=7, **kwargs)
    b = augment_uint8_images(images, seed=7, **kwargs)
    c = augment_uint8_images(images, seed=8, **kwargs)
    chunked = augment_uint8_images(images, seed=7, chunk_size=3, **kwargs)
    assert a.shape == images.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert np.array_equal(a, chunked)
    assert not np.array_equal(a, images)
    noop = augment_uint8_images(images, seed=7, rotate_deg=0.0, translate=0, flip=False)
    assert np.array_equal(noop, images) and noop is not images


@pytest.mark.parametrize("bad", [np.zeros((2, 64, 64, 3), np.float32), np.zeros((2, 64, 64), np.uint8)])
def test_augment_uint8_images_rejects_bad_arrays(bad):
    with pytest.raises(ValueError, match="augment"):
        augment_uint8_images(bad, rotate_deg=0, translate=0, flip=True, seed=0)

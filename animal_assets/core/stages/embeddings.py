"""Stage ``embeddings``: pretrained EfficientNet-Lite0 features of every usable image
(:mod:`animal_assets.core.embed` runs the encoder)."""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animal_assets.core.atomic import save_npy
from animal_assets.core.ingest import RawImages, load_raw_images
from animal_assets.core.precision import Precision
from animal_assets.core.shards import (
    check_count,
    checked_shards,
    shard_assignment,
    shard_key,
    shard_rows,
)
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
    features, done = _embed_rows(raw, None, params, device=device, on_progress=on_progress,
                                 cache_dir=cache_dir)
    path = Path(out_dir) / "embeddings.npy"
    save_npy(path, features)
    return Embeddings(path=str(path), raw_version=raw_version(raw), n=int(features.shape[0]),
                      dim=int(features.shape[1]), **done)


def _embed_rows(raw: RawImages, rows: np.ndarray | None, params: EmbeddingsConfig, *,
                device: str, on_progress=None, cache_dir: str | Path | None = None):
    """The features of the usable images at ``rows`` (None: all), float32, and the handle's
    fields that say how they were made."""
    from animal_assets.core import embed
    from animal_assets.core.device import resolve_device
    from animal_assets.core.precision import resolve_precision

    images, manifest = load_raw_images(raw, mmap=cache_dir is not None or rows is not None)
    if rows is not None:
        images, manifest = images[rows], manifest.iloc[rows]
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
    return features.astype(np.float32, copy=False), {
        "image_size": params.image_size, "device": str(dev),
        "seconds": time.perf_counter() - start, "head_dim": embed.FEATURE_DIM,
        "precision": precision, "n_cached": n_cached,
    }


# -- shards: the same work cut by image id (ANIMAL_ASSETS_SHARDS), merged back in row order ----


@dataclass(frozen=True)
class EmbeddingShard:
    """The features of one shard's images (:mod:`animal_assets.core.shards`), rows in the order
    of the usable images of :class:`RawImages`."""

    path: str  # (n, D) float32 .npy
    raw_version: str
    shard: int
    shards: int
    n: int
    dim: int
    image_size: int
    device: str
    seconds: float
    head_dim: int
    precision: str
    n_cached: int


def shard_folder(ctx: RunContext, shard: int, shards: int) -> Path:
    """Shard ``shard``'s folder: ``embeddings/shards/03-of-16``."""
    return ctx.folder(NAME, "shards", shard_key(shard, shards))


def run_shard(config: EmbeddingsConfig, ctx: RunContext, *, raw_images: RawImages, shard: int,
              shards: int) -> EmbeddingShard:
    """Embed the usable images of shard ``shard`` of ``shards``. Each shard keeps its own feature
    cache (its images never move to another shard while the count stays)."""
    check_count(shards)
    if not 0 <= shard < shards:
        raise ValueError(f"shard {shard} of {shards} does not exist")
    folder = shard_folder(ctx, shard, shards)
    cache_dir = None
    if ctx.cache_dir:
        cache_dir = str(Path(ctx.cache_dir) / shard_key(shard, shards))
    elif config.cache:
        cache_dir = str(folder / CACHE_FOLDER)
    _, manifest = load_raw_images(raw_images, mmap=True)
    rows = shard_rows(manifest["id"].tolist(), shard, shards)
    features, done = _embed_rows(raw_images, rows, config, device=ctx.device,
                                 on_progress=ctx.progress_of(f"embedded images of shard {shard_key(shard, shards)}"),
                                 cache_dir=cache_dir)
    path = folder / "embeddings.npy"
    save_npy(path, features)
    return EmbeddingShard(path=str(path), raw_version=raw_version(raw_images), shard=shard,
                          shards=shards, n=int(features.shape[0]), dim=int(features.shape[1]),
                          **done)


def merge(config: EmbeddingsConfig | None, ctx: RunContext, *, raw_images: RawImages,
          embedding_shards: Mapping[str, EmbeddingShard]) -> Embeddings:
    """One (N, D) matrix from every shard, each image's row where :func:`run` puts it: the same
    bytes as one unsharded run on the CPU. Raises
    :class:`~animal_assets.core.shards.ShardsBehind` while a shard is missing or was computed
    from another raw_images, ValueError when the shards disagree."""
    version = raw_version(raw_images)
    shards = checked_shards(embedding_shards, version, NAME)
    n = shards[0].shards
    settings = {(s.dim, s.image_size, s.head_dim, s.precision, s.device) for s in shards}
    if len(settings) > 1:
        raise ValueError(f"embeddings: the shards were embedded with different settings {sorted(settings)}")
    _, manifest = load_raw_images(raw_images, mmap=True)
    ids = manifest["id"].tolist()
    features = np.empty((len(ids), shards[0].dim), np.float32)
    assignment = shard_assignment(ids, n)
    for s in shards:
        rows = np.flatnonzero(assignment == s.shard)
        part = np.load(s.path, mmap_mode="r")
        if part.shape != (len(rows), s.dim):
            raise ValueError(f"{s.path}: {part.shape[0]} rows, shard {shard_key(s.shard, n)} "
                             f"holds {len(rows)} images")
        features[rows] = part
    path = ctx.folder(NAME) / "embeddings.npy"
    save_npy(path, features)
    first = shards[0]
    return Embeddings(
        path=str(path), raw_version=version, n=len(ids), dim=first.dim,
        image_size=first.image_size, device=first.device,
        seconds=sum(s.seconds for s in shards), head_dim=first.head_dim,
        precision=first.precision, n_cached=sum(s.n_cached for s in shards),
    )


def describe_shard(shard: EmbeddingShard, ctx: RunContext, **_) -> dict:
    return {
        "shard": shard_key(shard.shard, shard.shards), "n": shard.n, "dim": shard.dim,
        "device": shard.device, "precision": shard.precision, "n_from_cache": shard.n_cached,
        "images_per_s": round(shard.n / max(shard.seconds, 1e-9), 1),
        "embeddings_file": FileRef(shard.path),
    }


def describe(emb: Embeddings, ctx: RunContext, **_) -> dict:
    return {
        "n": emb.n, "dim": emb.dim, "head_dim": emb.head_dim, "image_size": emb.image_size,
        "device": emb.device, "precision": emb.precision,
        "n_from_cache": emb.n_cached,
        "images_per_s": round(emb.n / max(emb.seconds, 1e-9), 1),
        "embeddings_file": FileRef(emb.path),
    }

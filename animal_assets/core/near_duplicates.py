"""Groups of near-copies: the same photograph re-encoded, resized, shifted, cropped or recoloured.

Detectors whose pairs are joined into groups (connected components):

* **embeddings**: each image's nearest neighbours by cosine similarity of the encoder's
  head features (searched once for the graph, :mod:`.knn`, exact); a pair at or above
  ``threshold`` whose thumbnails also correlate (``CORROBORATE``) is a near-copy. A re-encode
  or a small shift barely moves the features, while two different photographs of the same
  animal stay well below.
* **thumbnails**: each image's ``k`` nearest neighbours by the correlation of its
  ``THUMB`` x ``THUMB`` grayscale thumbnail (area-averaged, mean removed, unit length); a pair at
  or above ``thumb_threshold`` is a near-copy. JPEG's artefacts, a resize and a change of
  brightness or contrast leave a thumbnail's correlation near 1, where they move the encoder's
  features further (a re-encode at quality 50 of a 64 px DS801 image: median cosine 0.88 of the
  head features, 0.999 of the thumbnails).
* **crops**: the same search between the thumbnails of each image cut by ``SEARCH_MARGINS``
  pixels on every side and the others' whole thumbnails, so a crop of an image meets the image
  cut alike.
* **mirror images** (an option): the same search between each image's mirrored thumbnail and
  the others' thumbnails.
* **perceptual hash**: the difference hash (dHash) of each image, 64 bits from the signs of the
  horizontal steps of its 9x8 grayscale thumbnail; images whose hashes are equal are copies.
  It catches copies whose features moved more than the threshold allows (strong recolouring,
  heavy compression) and needs no neighbour search: equal hashes share a bucket. A hash with
  almost no structure (a near-constant thumbnail: fewer than ``MIN_HASH_BITS`` set or clear
  bits) says nothing and is left out.

Byte-identical files are one group too, whatever the detectors say.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MIN_HASH_BITS = 8  # a dHash needs this many ones and zeros to identify a picture
THUMB = 12  # side of the grayscale thumbnail compared by correlation
#: A pair of the head features must have thumbnails (or one's mirror image's and the other's)
#: that correlate at least this much. On DS801 every pair at cosine >= 0.95 does (the 7 lowest
#: are mirror images); images of little content (a colour with noise, a texture) have
#: near-equal features without being copies, and their thumbnails do not correlate.
CORROBORATE = 0.5


@dataclass(frozen=True)
class NearCopies:
    """Pairs and groups of near-copies among N images."""

    # a, b (row indices, a < b), similarity (see find_near_copies), by (the detectors that
    # found the pair, comma-separated: "bytes", "embedding", "hash", "mirror", "thumbnail")
    pairs: pd.DataFrame
    group: np.ndarray  # (N,) int64 group id, dense, numbered by first member; singletons too


def dhash(images: np.ndarray, *, chunk: int = 4096) -> np.ndarray:
    """Difference hash of each image: (N,) uint64.

    The image is reduced to a 9x8 grayscale thumbnail by area averaging; each bit says whether a
    pixel is brighter than its right neighbour.
    """
    from PIL import Image

    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("near_duplicates.py: images must be a uint8 array (N, H, W, 3)")
    out = np.empty(len(images), dtype=np.uint64)
    weights = (1 << np.arange(64, dtype=np.uint64)).astype(np.uint64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk])
        thumbs = np.stack([
            np.asarray(Image.fromarray(img).convert("L").resize((9, 8), Image.BOX), dtype=np.int16)
            for img in block
        ])
        bits = (thumbs[:, :, 1:] > thumbs[:, :, :-1]).reshape(len(block), 64)
        out[start:start + len(block)] = (bits.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    return out


def _cropped(images: np.ndarray, margin: int) -> np.ndarray:
    """Each image with ``margin`` pixels cut from every side, resized back (bilinear)."""
    import torch
    from torch.nn import functional as F

    if margin == 0:
        return images
    _, h, w, _ = images.shape
    t = torch.from_numpy(np.ascontiguousarray(images[:, margin:h - margin, margin:w - margin]))
    # channels last: the layout the pixels already have (the same values, a faster kernel)
    t = t.permute(0, 3, 1, 2).float().contiguous(memory_format=torch.channels_last)
    t = F.interpolate(t, size=(h, w), mode="bilinear", align_corners=False)
    return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def thumbnails(images: np.ndarray, *, margin: int = 0, mirror: bool = False, size: int = THUMB,
               chunk: int = 4096) -> np.ndarray:
    """Grayscale thumbnails (PIL's box filter: area averaging), mean removed and scaled to unit
    length: (N, size * size) float32; a constant image gives zeros (it correlates with nothing).
    ``margin`` pixels are cut from every side first (and the rest resized back), and with
    ``mirror`` the images are flipped left to right."""
    from PIL import Image

    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError("near_duplicates.py: images must be a uint8 array (N, H, W, 3)")
    gray = np.zeros((len(images), size, size), np.float32)
    for start in range(0, len(images), chunk):
        block = _cropped(np.asarray(images[start:start + chunk]), margin)
        if mirror:
            block = block[:, :, ::-1]
        gray[start:start + len(block)] = [
            np.asarray(Image.fromarray(np.ascontiguousarray(img)).convert("L").resize((size, size), Image.BOX),
                       dtype=np.float32) for img in block]
    flat = gray.reshape(len(gray), -1)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norm = np.linalg.norm(flat, axis=1, keepdims=True)
    return np.where(norm > 1e-3, flat / np.maximum(norm, 1e-3), 0.0).astype(np.float32)


def _knn_pairs(vectors: np.ndarray, threshold: float, k: int, device: str, by: str,
               approximate: bool = False) -> pd.DataFrame:
    kk = min(k, len(vectors) - 1)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if approximate:
        from animal_assets.core.ann import approximate_knn

        distances, indices = approximate_knn(vectors, k=kk)
    else:
        from animal_assets.core.knn import knn

        distances, indices = knn(vectors, k=kk, device=device)
    return _pairs(distances, indices, threshold, by)


def _pairs(distances: np.ndarray, indices: np.ndarray, threshold: float, by: str) -> pd.DataFrame:
    """Pairs (row, neighbour) whose cosine similarity (1 - distance) is at least ``threshold``."""
    n, kk = indices.shape
    sim = 1.0 - np.asarray(distances, dtype=np.float64).ravel()
    rows = np.repeat(np.arange(n), kk)
    near = sim >= threshold
    a, b = rows[near], np.asarray(indices).ravel()[near]
    return pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b), "similarity": sim[near], "by": by})


def _cross_pairs(thumbs: np.ndarray, other: np.ndarray, threshold: float, k: int,
                 device: str, by: str, approximate: bool = False) -> pd.DataFrame:
    """Pairs (i, j), i != j, where ``other[i]`` (a variant of image i: its mirror image, a crop)
    is among j's nearest thumbnails."""
    n = len(thumbs)
    both = _knn_pairs(np.concatenate([thumbs, other]), threshold, k + 1, device, by, approximate)
    a, b = both["a"].to_numpy(), both["b"].to_numpy()
    cross = (a < n) & (b >= n) & (b - n != a)
    a, b = a[cross], b[cross] - n
    return pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b),
                         "similarity": both["similarity"].to_numpy()[cross], "by": by})


def _informative(hashes: np.ndarray) -> np.ndarray:
    ones = np.unpackbits(np.ascontiguousarray(hashes, dtype=np.uint64).view(np.uint8)).reshape(-1, 64).sum(axis=1)
    return (ones >= MIN_HASH_BITS) & (64 - ones >= MIN_HASH_BITS)


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # dense ids numbered by each group's first member
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first, kind="stable")
    remap = np.empty(len(order), dtype=np.int64)
    remap[order] = np.arange(len(order))
    return remap[labels]


def find_near_copies(
    neighbours: tuple[np.ndarray, np.ndarray],
    thumbs: np.ndarray,
    hashes: np.ndarray,
    sha256: np.ndarray | list,
    *,
    threshold: float = 0.95,
    thumb_threshold: float = 0.97,
    k: int = 5,
    device: str = "cpu",
    mirrored: np.ndarray | None = None,
    mirror: bool = False,
    corroborate: float | None = CORROBORATE,
    cropped: tuple[np.ndarray, ...] = (),
    approximate: bool = False,
) -> NearCopies:
    """Near-copy pairs and groups (see the module docstring).

    Parameters
    ----------
    neighbours : (distances, indices), each shape (N, k)
        The nearest neighbours of each image by the cosine distance of its head features, as
        :func:`animal_assets.core.knn.knn` gives them.
    thumbs : np.ndarray, float32, shape (N, T)
        :func:`thumbnails` of the images.
    hashes : np.ndarray, uint64, shape (N,)
        :func:`dhash` of the images.
    sha256 : sequence of str, length N
        Content hash of each file (byte-identical copies).
    threshold : float
        Cosine similarity of the head features from which a neighbour is a near-copy.
    thumb_threshold : float
        Correlation of the thumbnails from which a neighbour is a near-copy.
    k : int
        Neighbours looked at per image among the thumbnails.
    device : str
        Where the thumbnails' neighbour searches run.
    mirrored : np.ndarray, float32, shape (N, T), optional
        :func:`thumbnails` of the images' mirror images, for ``corroborate`` and ``mirror``.
    mirror : bool
        Also search the mirror images' thumbnails: an image whose mirror image's thumbnail
        correlates with another's at ``thumb_threshold`` is its near-copy ("mirror"). Needs
        ``mirrored``.
    corroborate : float or None
        A pair of the head features counts only where the two thumbnails (or one's mirror
        image's and the other's) correlate at least this much; None: no such condition.
    cropped : tuple of np.ndarray, each float32 (N, T)
        :func:`thumbnails` of the images with a ``margin``: an image cut by a margin whose thumbnail
        correlates with another's at ``thumb_threshold`` is its near-copy (a crop of it).
    approximate : bool
        Search the thumbnails with the approximate index (:func:`animal_assets.core.ann.approximate_knn`)
        instead of comparing every pair: the neighbours stage's choice above its size threshold.

    Returns
    -------
    NearCopies
        ``similarity`` of a pair is the head features' cosine where the embeddings found it,
        else the thumbnails' correlation, else NaN.
    """
    distances, indices = neighbours
    n = len(indices)
    if len(thumbs) != n or len(hashes) != n or len(sha256) != n:
        raise ValueError(f"near_duplicates.py: {n} feature rows, {len(thumbs)} thumbnails, "
                         f"{len(hashes)} hashes, {len(sha256)} hashes of files")
    if mirror and mirrored is None:
        raise ValueError("near_duplicates.py: mirror needs the mirrored thumbnails")
    frames = []
    if n > 1:
        pairs = _pairs(distances, indices, threshold, "embedding")
        if corroborate is not None:
            a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
            corr = (thumbs[a] * thumbs[b]).sum(axis=1)
            if mirrored is not None:
                corr = np.maximum(corr, (mirrored[a] * thumbs[b]).sum(axis=1))
            pairs = pairs[corr >= corroborate]
        frames.append(pairs)
        frames.append(_knn_pairs(thumbs, thumb_threshold, k, device, "thumbnail", approximate))
        if mirror:
            frames.append(_cross_pairs(thumbs, mirrored, thumb_threshold, k, device, "mirror", approximate))
        for crop in cropped:
            frames.append(_cross_pairs(thumbs, crop, thumb_threshold, k, device, "thumbnail", approximate))
    for key, by, keep in ((np.asarray(hashes), "hash", _informative(np.asarray(hashes))),
                          (np.asarray(sha256, dtype=object), "bytes", np.ones(n, dtype=bool))):
        idx = np.flatnonzero(keep)
        if not len(idx):
            continue
        _, inverse = np.unique(key[idx], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        sorted_ids = inverse[order]
        same = sorted_ids[1:] == sorted_ids[:-1]
        # chain each bucket: consecutive members joined are enough for the groups
        a, b = idx[order[:-1][same]], idx[order[1:][same]]
        frames.append(pd.DataFrame({"a": np.minimum(a, b), "b": np.maximum(a, b),
                                    "similarity": np.nan, "by": by}))
    pairs = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"a": [], "b": [], "similarity": [], "by": []})
    pairs = pairs.astype({"a": np.int64, "b": np.int64, "similarity": np.float64})
    # one row per pair: the embedding's similarity first, detectors joined
    pairs = (pairs.sort_values(["a", "b", "by"], kind="stable")
             .groupby(["a", "b"], as_index=False, sort=True)
             .agg(similarity=("similarity", "first"), by=("by", lambda s: ",".join(sorted(set(s))))))
    group = _components(n, pairs["a"].to_numpy(), pairs["b"].to_numpy()) if n else np.zeros(0, np.int64)
    return NearCopies(pairs=pairs, group=group)


def group_table(near: NearCopies, ids: np.ndarray, given: np.ndarray) -> pd.DataFrame:
    """One row per group of two or more images: ``group``, ``size``, ``n_labels`` (distinct
    given labels), ``conflict``, ``members`` and ``given`` (space-separated), ``min_similarity``
    (lowest embedding similarity among its pairs; NaN where only hashes or bytes joined it)."""
    group = near.group
    sizes = np.bincount(group)
    multi = np.flatnonzero(sizes >= 2)
    if not len(multi):
        return pd.DataFrame(columns=["group", "size", "n_labels", "conflict", "members", "given",
                                     "min_similarity"])
    rows = np.flatnonzero(np.isin(group, multi))
    frame = pd.DataFrame({"group": group[rows], "id": np.asarray(ids)[rows], "given": np.asarray(given)[rows]})
    pair_group = group[near.pairs["a"].to_numpy()] if len(near.pairs) else np.zeros(0, np.int64)
    low = pd.Series(near.pairs["similarity"].to_numpy(), index=pair_group).groupby(level=0).min()
    table = frame.groupby("group", sort=True).agg(
        size=("id", "size"), n_labels=("given", "nunique"),
        members=("id", " ".join), given=("given", lambda s: " ".join(str(v) for v in s)))
    table["conflict"] = table["n_labels"] > 1
    table["min_similarity"] = low.reindex(table.index)
    return table.reset_index()[["group", "size", "n_labels", "conflict", "members", "given",
                                "min_similarity"]]


#: Margins cut from every image before the crop search of :func:`find_near_copies`.
SEARCH_MARGINS = (2, 4)
#: Margins cut from the input's images before their thumbnails are compared with a test image's:
#: a test image cropped from an input image matches the input image cut the same way.
CROP_MARGINS = (0, 1, 2, 3, 4)


def contamination(test_images: np.ndarray, images: np.ndarray, *, thumb_threshold: float = 0.97,
                  margins: tuple[int, ...] = CROP_MARGINS, hashes: np.ndarray | None = None,
                  block: int = 4096) -> pd.DataFrame:
    """Test images that have a near-copy among ``images`` (the input): one row per such test
    image, ``test`` and ``match`` (row indices), ``correlation`` (of the thumbnails: the test
    image or its mirror image against the input image, whole or with a margin cut; the highest)
    and ``by`` ("thumbnail", "mirror", "hash"; NaN correlation for "hash").

    A copy of a test image can only reach the exported training or validation set through the
    input, so the input is what is searched. Thumbnails are compared exhaustively, block by
    block; equal perceptual hashes (dHash, of the image and of its mirror image) count too.
    ``hashes``: the input's :func:`dhash`, when already known.
    """
    queries = {"thumbnail": thumbnails(test_images), "mirror": thumbnails(test_images, mirror=True)}
    best = np.full(len(test_images), -np.inf)
    match = np.full(len(test_images), -1, dtype=np.int64)
    by = np.full(len(test_images), "", dtype=object)
    for start in range(0, len(images), block):
        chunk = np.asarray(images[start:start + block])
        for margin in margins:
            ref = thumbnails(chunk, margin=margin)
            for name, q in queries.items():
                sims = q @ ref.T
                if not sims.size:
                    continue
                top = sims.argmax(axis=1)
                value = sims[np.arange(len(q)), top]
                better = value > best
                best[better], match[better], by[better] = value[better], start + top[better], name
    found = best >= thumb_threshold
    rows = pd.DataFrame({"test": np.flatnonzero(found), "match": match[found],
                         "correlation": best[found], "by": by[found].astype(str)})
    hashes = dhash(images) if hashes is None else np.asarray(hashes, dtype=np.uint64)
    lookup = {}
    for i in np.flatnonzero(_informative(hashes)):
        lookup.setdefault(int(hashes[i]), int(i))
    extra, taken = [], set(rows["test"].tolist())
    for source in (test_images, np.ascontiguousarray(test_images[:, :, ::-1])):
        th = dhash(source)
        for t in np.flatnonzero(_informative(th)):
            j = lookup.get(int(th[t]))
            if j is not None and int(t) not in taken:
                extra.append((int(t), j, np.nan, "hash"))
                taken.add(int(t))
    if extra:
        rows = pd.concat([rows, pd.DataFrame(extra, columns=rows.columns)], ignore_index=True)
    return rows.sort_values("test", kind="stable").reset_index(drop=True)

"""Inject known noise into a clean labelled image set, and write it with its ground truth.

Starting from images whose labels are correct, :func:`inject_noise` drops part of some classes
(imbalance), flips labels (to a look-alike partner class or to any other class), mixes in
out-of-distribution images under random labels and adds byte-identical duplicates that carry a
conflicting label. Every item remembers what was done to it, so each cleaning step can be scored
against the truth. :func:`write_noisy_dataset` writes the DS801 folder and a ``truth.json`` beside
it (outside the dataset folder, so nothing that cleans the dataset can read it).
"""
from __future__ import annotations

import numbers
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from animal_assets.core.atomic import write_json
from animal_assets.core.ds801 import IMAGE_SIZE, encode_jpeg, new_image_id, write_ds801
from animal_assets.core.truth import DATASET_DIRNAME, KINDS, TRUTH_FILE



def substream(seed: int, purpose: str) -> np.random.Generator:
    """Return a generator for one ``purpose`` of a seeded run.

    Each purpose gets its own stream, so changing one noise rate does not reshuffle the choices
    made for the others (the same seed keeps the same kept images, OOD picks and ids).

    Parameters
    ----------
    seed : int
        Seed of the whole run.
    purpose : str
        Name of the stream, e.g. ``"flip"``; distinct names give independent streams.

    Returns
    -------
    numpy.random.Generator
    """
    tag = zlib.crc32(purpose.encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(tag,)))


@dataclass(frozen=True, kw_only=True)
class NoiseSpec:
    """What noise to inject; class indices refer to the label order of the clean set.

    ``pair_flip_rate`` is either one rate for every paired class or a tuple of K rates, entry
    ``c`` being the probability that an image of true class ``c`` is flipped to its partner (so
    the two directions of a pair may differ); entries of unpaired classes are ignored. A list is
    stored as a tuple.
    """

    pairs: tuple[tuple[int, int], ...] = ()  # no look-alike pairs: no asymmetric flips
    pair_flip_rate: float | tuple[float, ...] = 0.0  # labels of paired classes stay correct
    symmetric_flip_rate: float = 0.0  # no uniform label noise
    ood_fraction: float = 0.0  # no out-of-distribution images
    class_keep: tuple[float, ...] | None = None  # every class kept whole (no added imbalance)
    n_dup_conflicts: int = 0  # no duplicated images with conflicting labels

    def __post_init__(self) -> None:
        if isinstance(self.pair_flip_rate, numbers.Real):
            for name in ("pair_flip_rate", "symmetric_flip_rate"):
                value = getattr(self, name)
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"NoiseSpec.{name} must lie in [0, 1], got {value}")
            if self.pair_flip_rate + self.symmetric_flip_rate > 1.0:
                raise ValueError("NoiseSpec: pair_flip_rate + symmetric_flip_rate must not exceed 1")
        else:
            object.__setattr__(self, "pair_flip_rate", tuple(float(r) for r in self.pair_flip_rate))
            symmetric = self.symmetric_flip_rate
            if not 0.0 <= symmetric <= 1.0:
                raise ValueError(f"NoiseSpec.symmetric_flip_rate must lie in [0, 1], got {symmetric}")
            for c, rate in enumerate(self.pair_flip_rate):
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"NoiseSpec.pair_flip_rate[{c}] must lie in [0, 1], got {rate}")
                if rate + symmetric > 1.0:
                    raise ValueError(f"NoiseSpec: pair_flip_rate[{c}] + symmetric_flip_rate must not exceed 1 "
                                     f"(class {c}: {rate} + {symmetric})")
        if not 0.0 <= self.ood_fraction < 1.0:
            raise ValueError(f"NoiseSpec.ood_fraction must lie in [0, 1), got {self.ood_fraction}")
        if self.n_dup_conflicts < 0:
            raise ValueError(f"NoiseSpec.n_dup_conflicts must be >= 0, got {self.n_dup_conflicts}")
        seen: set[int] = set()
        for pair in self.pairs:
            if len(pair) != 2 or pair[0] == pair[1] or min(pair) < 0:
                raise ValueError(f"NoiseSpec.pairs: {pair} is not a pair of two distinct classes")
            if seen & set(pair):
                raise ValueError(f"NoiseSpec.pairs: a class of {pair} already belongs to a pair")
            seen |= set(pair)
        if self.class_keep is not None:
            for c, keep in enumerate(self.class_keep):
                if not 0.0 < keep <= 1.0:
                    raise ValueError(f"NoiseSpec.class_keep[{c}] must lie in (0, 1], got {keep}")

    def partners(self, num_classes: int) -> np.ndarray:
        """Return ``(K,)`` int: the pair partner of each class, -1 for unpaired classes."""
        partner = np.full(num_classes, -1, dtype=np.int64)
        for a, b in self.pairs:
            if max(a, b) >= num_classes:
                raise ValueError(f"NoiseSpec.pairs: {(a, b)} names a class outside "
                                 f"0..{num_classes - 1}")
            partner[a], partner[b] = b, a
        return partner

    def pair_rates(self, num_classes: int) -> np.ndarray:
        """Return the probability that an image of each true class is flipped to its partner.

        Parameters
        ----------
        num_classes : int
            K; a per-class ``pair_flip_rate`` must have K entries.

        Returns
        -------
        ndarray, shape (K,), float64
            ``pair_flip_rate`` (or its entry ``c``) for a paired class ``c``, 0 for an unpaired one.
        """
        if isinstance(self.pair_flip_rate, tuple) and len(self.pair_flip_rate) != num_classes:
            raise ValueError(f"NoiseSpec.pair_flip_rate has {len(self.pair_flip_rate)} entries, "
                             f"num_classes is {num_classes}")
        rates = np.broadcast_to(np.asarray(self.pair_flip_rate, dtype=np.float64), (num_classes,))
        return np.where(self.partners(num_classes) >= 0, rates, 0.0)


@dataclass
class NoisyDataset:
    """A noisy image set with its truth, one entry per item.

    ``images`` (N, 64, 64, 3) uint8; ``given`` (N,) the label written to the dataset; ``true``
    (N,) the correct class, -1 for OOD; ``kind`` (N,) one of :data:`KINDS`; ``dup_of`` (N,) for
    a ``dup_conflict`` item the index of the item whose image it copies, else -1.
    """

    images: np.ndarray
    given: np.ndarray
    true: np.ndarray
    kind: np.ndarray
    dup_of: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.dup_of is None:
            self.dup_of = np.full(n, -1, dtype=np.int64)
        for name in ("given", "true", "kind", "dup_of"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"NoisyDataset.{name} has {len(getattr(self, name))} items, "
                                 f"images has {n}")
        unknown = set(np.unique(self.kind).tolist()) - set(KINDS)
        if unknown:
            raise ValueError(f"NoisyDataset.kind holds unknown kinds {sorted(unknown)}")

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> dict[str, int]:
        """Return the number of items of each kind (every kind listed, zeros included)."""
        return {k: int(np.sum(self.kind == k)) for k in KINDS}


def _check_images(name: str, images: np.ndarray) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
        raise TypeError(f"inject_noise: {name} must be a uint8 numpy array")
    if images.ndim != 4 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"inject_noise: {name} must have shape (N, 64, 64, 3), got {images.shape}")


def n_ood_for(n_other: int, ood_fraction: float) -> int:
    """Number of OOD images that make up ``ood_fraction`` of a set with ``n_other`` other items.

    Parameters
    ----------
    n_other : int
        In-distribution items plus duplicates.
    ood_fraction : float
        Wanted OOD share of the final set, in [0, 1).

    Returns
    -------
    int
        ``round(f * n_other / (1 - f))``, so the share is off by at most half an image.
    """
    return int(np.floor(ood_fraction * n_other / (1.0 - ood_fraction) + 0.5))


def inject_noise(
    images: np.ndarray,
    labels: np.ndarray,
    ood_images: np.ndarray,
    spec: NoiseSpec,
    *,
    num_classes: int,
    seed: int,
) -> NoisyDataset:
    """Turn a clean labelled set into a noisy one whose truth is known.

    Steps, each from its own seeded stream: keep ``class_keep[c]`` of class ``c`` (rounded, at
    least one image); flip each kept label of a paired class to its pair partner with probability
    ``pair_flip_rate`` (for a per-class rate, the entry of the image's true class; see
    :meth:`NoiseSpec.pair_rates`), else to a uniformly drawn other class with probability
    ``symmetric_flip_rate``; copy ``n_dup_conflicts`` in-distribution items under a label that
    differs from the original's given label; add OOD images (drawn without replacement) under
    uniform random labels so that they are ``ood_fraction`` of the final set; shuffle.

    Parameters
    ----------
    images : ndarray, shape (N, 64, 64, 3), uint8
        Clean in-distribution images.
    labels : ndarray, shape (N,), int
        Their correct classes in 0..K-1.
    ood_images : ndarray, shape (M, 64, 64, 3), uint8
        Pool of out-of-distribution images; M must cover the OOD count needed.
    spec : NoiseSpec
        The noise to inject.
    num_classes : int
        K, at least 2.
    seed : int
        Seed of every random choice; the same seed gives the same result.

    Returns
    -------
    NoisyDataset
        The shuffled noisy set (N' items) with ``given``, ``true``, ``kind`` and ``dup_of``.
    """
    _check_images("images", images)
    _check_images("ood_images", ood_images)
    labels = np.asarray(labels)
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"inject_noise: labels must be ({len(images)},) integers, "
                         f"got {labels.dtype} {labels.shape}")
    if num_classes < 2:
        raise ValueError(f"inject_noise: num_classes must be at least 2, got {num_classes}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"inject_noise: labels must lie in 0..{num_classes - 1}")
    partner = spec.partners(num_classes)
    if spec.class_keep is not None and len(spec.class_keep) != num_classes:
        raise ValueError(f"inject_noise: class_keep has {len(spec.class_keep)} entries, "
                         f"num_classes is {num_classes}")
    if isinstance(spec.pair_flip_rate, tuple) and len(spec.pair_flip_rate) != num_classes:
        raise ValueError(f"inject_noise: pair_flip_rate has {len(spec.pair_flip_rate)} entries, "
                         f"num_classes is {num_classes}")
    pair_rate = spec.pair_rates(num_classes)

    keep_rng = substream(seed, "keep")
    kept = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c)
        frac = 1.0 if spec.class_keep is None else spec.class_keep[c]
        n_keep = min(len(members), max(1, int(np.floor(frac * len(members) + 0.5))))
        if len(members):
            members = np.sort(keep_rng.choice(members, n_keep, replace=False))
        kept.append(members)
    idx = np.concatenate(kept).astype(np.int64)
    true = labels[idx].astype(np.int64)
    n_in = len(idx)

    flip_rng = substream(seed, "flip")
    u = flip_rng.random(n_in)
    offset = flip_rng.integers(1, num_classes, n_in)
    threshold = pair_rate[true]  # 0 for unpaired classes
    to_pair = u < threshold
    to_any = ~to_pair & (u < threshold + spec.symmetric_flip_rate)
    given = true.copy()
    given[to_pair] = partner[true[to_pair]]
    given[to_any] = (true[to_any] + offset[to_any]) % num_classes
    kind = np.where(given == true, "clean", "flipped").astype("<U12")

    n_dup = spec.n_dup_conflicts
    if n_dup > n_in:
        raise ValueError(f"inject_noise: n_dup_conflicts={n_dup} exceeds the {n_in} kept images")
    dup_rng = substream(seed, "dup")
    src = np.sort(dup_rng.choice(n_in, n_dup, replace=False)).astype(np.int64)
    dup_given = (given[src] + dup_rng.integers(1, num_classes, n_dup)) % num_classes

    n_ood = n_ood_for(n_in + n_dup, spec.ood_fraction)
    if n_ood > len(ood_images):
        raise ValueError(f"inject_noise: {n_ood} OOD images needed for ood_fraction={spec.ood_fraction}, "
                         f"only {len(ood_images)} given")
    ood_rng = substream(seed, "ood")
    ood_idx = np.sort(ood_rng.choice(len(ood_images), n_ood, replace=False)).astype(np.int64)
    ood_given = ood_rng.integers(0, num_classes, n_ood)

    # where each item's pixels come from: a row of `images` (>= 0) or row -1-j of `ood_images`
    all_source = np.concatenate([idx, idx[src], -1 - ood_idx]).astype(np.int64)
    all_given = np.concatenate([given, dup_given, ood_given]).astype(np.int64)
    all_true = np.concatenate([true, true[src], np.full(n_ood, -1)]).astype(np.int64)
    all_kind = np.concatenate([kind, np.full(n_dup, "dup_conflict"), np.full(n_ood, "ood")])
    all_kind = all_kind.astype("<U12")
    all_dup = np.concatenate([np.full(n_in, -1), src, np.full(n_ood, -1)]).astype(np.int64)

    order = substream(seed, "order").permutation(len(all_given))
    new_pos = np.empty_like(order)
    new_pos[order] = np.arange(len(order))
    dup_of = all_dup[order]
    dup_of = np.where(dup_of >= 0, new_pos[np.maximum(dup_of, 0)], -1)
    # copied row by row into one array: a gather-then-permute would hold the pixels three times
    out = np.empty((len(order), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, s in enumerate(all_source[order]):
        out[i] = images[s] if s >= 0 else ood_images[-1 - s]
    return NoisyDataset(images=out, given=all_given[order], true=all_true[order],
                        kind=all_kind[order], dup_of=dup_of)


def write_noisy_dataset(
    out_dir: str | os.PathLike,
    noisy: NoisyDataset,
    *,
    num_classes: int,
    seed: int,
) -> tuple[Path, Path]:
    """Write ``out_dir/train-set`` (DS801) and ``out_dir/truth.json`` beside it.

    Each item gets a fresh id from a stream seeded by ``seed``. A ``dup_conflict`` item is written
    with the very JPEG bytes of its original (encoded once), so the two files are byte-identical.
    Both writes are atomic; ``truth.json`` maps every dataset id to
    ``{"true": int (-1 for OOD), "given": int, "kind": str}``.

    Parameters
    ----------
    out_dir : path
        Folder that receives the dataset folder and the truth file.
    noisy : NoisyDataset
        N items, as returned by :func:`inject_noise`.
    num_classes : int
        K, the length of the one-hot label lists.
    seed : int
        Seed of the image ids.

    Returns
    -------
    (Path, Path)
        The dataset folder and the truth file.
    """
    out_dir = Path(out_dir)
    rng = substream(seed, "ids")
    ids = [new_image_id(rng) for _ in range(len(noisy))]
    jpegs: list[bytes] = [b""] * len(noisy)
    for i in np.flatnonzero(noisy.dup_of < 0):
        jpegs[i] = encode_jpeg(noisy.images[i])
    for i in np.flatnonzero(noisy.dup_of >= 0):
        original = int(noisy.dup_of[i])
        if noisy.dup_of[original] >= 0:
            raise ValueError(f"write_noisy_dataset: item {i} copies item {original}, itself a copy")
        jpegs[i] = jpegs[original]
    dataset_dir = write_ds801(
        out_dir / DATASET_DIRNAME,
        ((ids[i], jpegs[i], int(noisy.given[i])) for i in range(len(noisy))),
        num_classes=num_classes,
    )
    truth = {
        ids[i]: {"true": int(noisy.true[i]), "given": int(noisy.given[i]), "kind": str(noisy.kind[i])}
        for i in sorted(range(len(noisy)), key=ids.__getitem__)
    }
    truth_path = out_dir / TRUTH_FILE
    write_json(truth_path, truth, indent=None)
    return dataset_dir, truth_path

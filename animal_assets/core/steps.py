"""The pipeline's stages as plain functions over on-disk handles.

Each stage reads the handles of the stages it depends on, writes its own files atomically under
``out_dir`` and returns a small frozen dataclass (paths plus a few numbers). The Dagster assets
call these functions one to one, and :mod:`animal_assets.core.pipeline` chains them for a run
without dagster. Big arrays never travel through the handles: only their paths do.
"""
from __future__ import annotations

import hashlib
import stat
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from animal_assets.core import ds801
from animal_assets.core.atomic import atomic_dir, atomic_path, save_npy, write_json
from animal_assets.core.config import BalanceParams, EmbeddingsParams, OodParams, ValSplitParams
from animal_assets.core.ingest import RawImages, load_raw_images, read_manifest

#: Share flagged when it is not set and too few images are there to estimate it.
DEFAULT_OOD_FRACTION = 0.10

#: The time of every member of the exported zip (the earliest a zip can hold).
ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


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


@dataclass(frozen=True)
class OodScores:
    """Out-of-distribution score and flag per usable image."""

    path: str  # CSV: id, score, flag, rank
    raw_version: str
    k: int
    n_flagged: int
    threshold: float
    method: str = "knn_distance"  # the seed score actually used ("auto" resolved)
    fraction: float = 0.10  # the share flagged
    estimated: bool = False  # whether that share was estimated from the scores


@dataclass(frozen=True)
class CleanLabels:
    """Keep / relabel / drop decision per usable image, with its reason."""

    path: str  # CSV, columns of cleaning.decide plus id and sha256
    raw_version: str
    summary: dict = field(hash=False)


@dataclass(frozen=True)
class Split:
    """A DS801 export plus the decoded arrays the trainer reads (decoded from the export)."""

    dir: str  # the DS801 folder (imgs/ + data-labels.json)
    images_path: str  # (N, 64, 64, 3) uint8 .npy
    labels_path: str  # (N,) int64 .npy
    ids_path: str  # CSV: id, label, source_id, generated
    counts: tuple[int, ...]


@dataclass(frozen=True)
class BalancedTrain:
    train: Split
    val_dir: str
    zip_path: str  # train/ and val/ in one archive, the deliverable
    n_generated: int
    counts_before: tuple[int, ...]


@dataclass(frozen=True)
class Resnet34Model:
    checkpoint_path: str
    history: tuple = field(hash=False)
    device: str
    seconds: float
    num_classes: int
    precision: str = "fp32"  # what the training ran in ("auto" resolved)


def raw_version(raw: RawImages) -> str:
    """A short hash of the manifest: rows of derived tables align with this RawImages only."""
    return hashlib.sha256(Path(raw.manifest_path).read_bytes()).hexdigest()[:16]


def check_aligned(raw: RawImages, *derived) -> None:
    """Raise when a derived handle was computed from another materialization of raw_images."""
    version = raw_version(raw)
    for handle in derived:
        if handle.raw_version != version:
            raise ValueError(
                f"{type(handle).__name__} was computed from another raw_images "
                "materialization; rematerialize it (materialize unsynced) first"
            )


# --------------------------------------------------------------------------------------------
# embeddings and outliers


def compute_embeddings(
    raw: RawImages, out_dir: str | Path, params: EmbeddingsParams, *, device: str,
    on_progress=None, cache_dir: str | Path | None = None,
) -> Embeddings:
    """Embed every usable image with the pretrained encoder and store the (N, D) matrix.

    With ``cache_dir``, images whose bytes were embedded before with the same settings are read
    from the cache (:mod:`.feature_cache`) and only the others are embedded.
    """
    from animal_assets.core import embed
    from animal_assets.core.device import resolve_device
    from animal_assets.core.precision import resolve_precision

    images, manifest = load_raw_images(raw, mmap=cache_dir is not None)
    start = time.perf_counter()
    dev = resolve_device(device)
    precision = resolve_precision(params.precision, dev)

    def run(batch: np.ndarray) -> np.ndarray:
        return embed.embed_images(
            batch, image_size=params.image_size, batch_size=params.batch_size, device=dev,
            stages=params.stages, precision=precision, on_progress=on_progress,
        )

    n_cached = 0
    if cache_dir is None:
        features = run(images)
    else:
        from animal_assets.core.feature_cache import FeatureCache

        cache = FeatureCache(cache_dir, image_size=params.image_size, stages=params.stages,
                             precision=precision, weights=embed.WEIGHTS_SHA256_PREFIX)
        keys = manifest["sha256"].tolist()
        todo = cache.missing(keys)
        if len(todo):
            cache.add([keys[i] for i in todo], run(np.asarray(images[todo])))
        n_cached = len(keys) - len(todo)
        features = cache.get(keys)
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    path = out_dir / "embeddings.npy"
    save_npy(path, features.astype(np.float32, copy=False))
    return Embeddings(
        path=str(path), raw_version=raw_version(raw), n=int(features.shape[0]),
        dim=int(features.shape[1]),
        image_size=params.image_size, device=str(dev), seconds=seconds,
        head_dim=embed.FEATURE_DIM, precision=precision, n_cached=n_cached,
    )


def score_outliers(
    raw: RawImages, embeddings: Embeddings, out_dir: str | Path, params: OodParams,
) -> OodScores:
    """Score each image (kNN distance or neighbour-label entropy, then self-training); flag the top."""
    from animal_assets.core import ood

    check_aligned(raw, embeddings)
    _, manifest = load_raw_images(raw, mmap=True)  # the manifest only; pixels stay on disk
    features = np.load(embeddings.path)
    given = manifest["given"].to_numpy(dtype=np.int64)
    method = params.method
    if method == "auto":
        sizes = np.bincount(given, minlength=raw.num_classes)
        method = "label_entropy" if sizes.min() >= 2 * params.label_k else "knn_distance"
    head = head_features(features, embeddings)
    if method == "label_entropy":
        _, neighbours = ood.knn(head, k=params.label_k)
        scores = ood.neighbour_label_entropy(neighbours, given, num_classes=raw.num_classes)
    else:
        scores = ood.knn_ood_scores(head, k=params.k)
    del head
    if params.refine_rounds:
        from animal_assets.core import ood_refine

        scores = ood_refine.self_train(features, scores, rounds=params.refine_rounds,
                                       out_share=params.refine_share,
                                       in_share=params.refine_in_share)
    fraction = params.fraction
    if fraction is None:
        fraction = (ood.estimate_outlier_share(scores) if len(scores) >= ood.MIN_IMAGES_TO_ESTIMATE
                    else DEFAULT_OOD_FRACTION)
    flags = ood.flag_outliers(scores, fraction=fraction)
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    table = pd.DataFrame(
        {"id": manifest["id"].to_numpy(), "score": scores, "flag": flags, "rank": rank}
    )
    path = Path(out_dir) / "ood_scores.csv"
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False)
    threshold = float(scores[flags].min()) if flags.any() else float("inf")
    return OodScores(
        path=str(path), raw_version=raw_version(raw), k=params.k, n_flagged=int(flags.sum()),
        threshold=threshold, method=method, fraction=float(fraction),
        estimated=params.fraction is None,
    )


# --------------------------------------------------------------------------------------------
# label cleaning


def clean_label_decisions(
    raw: RawImages, embeddings: Embeddings, ood_scores: OodScores, out_dir: str | Path,
    config,
) -> CleanLabels:
    """Decide keep / relabel / drop for every usable image (see :mod:`.cleaning`)."""
    from animal_assets.core import cleaning, noise_model

    check_aligned(raw, embeddings, ood_scores)
    _, manifest = load_raw_images(raw, mmap=True)  # the manifest only
    features = np.load(embeddings.path)
    ood_table = pd.read_csv(ood_scores.path)
    labels = manifest["given"].to_numpy(dtype=np.int64)
    ood_flags = ood_table["flag"].to_numpy(dtype=bool)
    groups = cleaning.duplicate_groups(manifest["sha256"].tolist())
    probe_kwargs = config.probe_kwargs()
    if probe_kwargs["c"] is None:
        probe_kwargs["c"] = cleaning.select_probe_c(
            features, labels, num_classes=raw.num_classes, train_mask=~ood_flags, seed=config.seed,
            class_weight=config.class_weight, n_threads=config.probe_threads,
            n_jobs=config.probe_jobs,
        )
    result = noise_model.noise_posteriors(
        features, labels, num_classes=raw.num_classes, train_mask=~ood_flags, groups=groups,
        rounds=config.em_rounds, min_rate=config.min_noise_rate,
        prior_images=config.noise_prior_images, probe_kwargs=probe_kwargs,
    )
    pred_probs = result.balanced()
    decisions = cleaning.decide(
        labels, pred_probs, ood_flags=ood_flags, dup_group=groups, num_classes=raw.num_classes,
        config=config,
    )
    decisions.insert(0, "id", manifest["id"].to_numpy())
    decisions["sha256"] = manifest["sha256"].to_numpy()
    decisions["dup_group"] = groups
    decisions["ood_score"] = ood_table["score"].to_numpy()
    for k in range(raw.num_classes):
        decisions[f"p{k}"] = pred_probs[:, k].astype(np.float32)
    path = Path(out_dir) / "decisions.csv"
    with atomic_path(path) as tmp:
        decisions.to_csv(tmp, index=False)
    summary = cleaning.summarise(decisions, num_classes=raw.num_classes)
    summary["probe_c"] = probe_kwargs["c"]
    # T[true, given]: how often each class was labelled as each other class.
    summary["transition"] = np.round(result.transition, 4).tolist()
    summary["prior"] = np.round(result.prior, 4).tolist()  # estimated P(true class)
    return CleanLabels(path=str(path), raw_version=raw_version(raw), summary=summary)


def read_decisions(clean: CleanLabels) -> pd.DataFrame:
    return pd.read_csv(clean.path, keep_default_na=False)


# --------------------------------------------------------------------------------------------
# exports


def _export_split(
    out_dir: Path, *, ids, labels, jpegs, source_ids, generated, num_classes: int,
) -> Split:
    """Write a DS801 folder plus arrays decoded from exactly the exported JPEG bytes."""
    from animal_assets.core.formats import decode_image

    ds_dir = out_dir / "ds801"
    ds801.write_ds801(ds_dir, zip(ids, jpegs, labels), num_classes=num_classes)
    images = np.empty((len(ids), ds801.IMAGE_SIZE, ds801.IMAGE_SIZE, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        array, reason, _ = decode_image(data, name=f"{ids[i]}.jpg")
        if array is None:
            raise RuntimeError(f"{ids[i]}.jpg: exported image does not decode ({reason})")
        images[i] = array
    labels = np.asarray(labels, dtype=np.int64)
    save_npy(out_dir / "images.npy", images)
    save_npy(out_dir / "labels.npy", labels)
    table = pd.DataFrame(
        {"id": ids, "label": labels, "source_id": source_ids, "generated": generated}
    )
    with atomic_path(out_dir / "ids.csv") as tmp:
        table.to_csv(tmp, index=False)
    counts = tuple(int(c) for c in np.bincount(labels, minlength=num_classes))
    return Split(
        dir=str(ds_dir), images_path=str(out_dir / "images.npy"),
        labels_path=str(out_dir / "labels.npy"), ids_path=str(out_dir / "ids.csv"),
        counts=counts,
    )


def _original_jpeg(raw: RawImages, image_id: str) -> bytes:
    return (Path(raw.files_dir) / f"{image_id}.jpg").read_bytes()


def make_val_split(
    raw: RawImages, clean: CleanLabels, out_dir: str | Path, params: ValSplitParams,
) -> Split:
    """Hold out a clean, class-balanced validation set from the most trustworthy originals."""
    from animal_assets.core import split

    check_aligned(raw, clean)
    decisions = read_decisions(clean)
    is_val = split.select_val(
        decisions, decisions["confidence"].to_numpy(dtype=float),
        dup_group=decisions["dup_group"].to_numpy(), num_classes=raw.num_classes,
        per_class=params.per_class, max_fraction=params.max_fraction, seed=params.seed,
    )
    rows = decisions[is_val].sort_values("id")
    ids = rows["id"].tolist()
    with atomic_dir(out_dir) as tmp:
        result = _export_split(
            tmp, ids=ids, labels=rows["label"].astype(int).tolist(),
            jpegs=[_original_jpeg(raw, i) for i in ids], source_ids=ids,
            generated=[False] * len(ids), num_classes=raw.num_classes,
        )
    return _relocate(result, tmp, Path(out_dir))


def make_balanced_train(
    raw: RawImages, clean: CleanLabels, val: Split, out_dir: str | Path, params: BalanceParams,
) -> BalancedTrain:
    """Export the cleaned training set with minority classes oversampled by augmented copies."""
    from animal_assets.core import split

    check_aligned(raw, clean)
    decisions = read_decisions(clean)
    val_ids = set(pd.read_csv(val.ids_path)["id"])
    train_mask = (decisions["label"].to_numpy() >= 0) & ~decisions["id"].isin(val_ids).to_numpy()
    train_labels = np.where(train_mask, decisions["label"].to_numpy(), -1).astype(np.int64)
    counts_before = tuple(
        int(c) for c in np.bincount(train_labels[train_mask], minlength=raw.num_classes)
    )
    source_idx, generated = split.balance_plan(
        train_labels, num_classes=raw.num_classes, max_factor=params.max_factor,
        seed=params.seed,
    )
    images, _ = load_raw_images(raw)
    pixels = split.make_balanced_images(
        images, source_idx, generated, seed=params.seed, rotate_deg=params.rotate_deg,
        translate=params.translate,
    )
    all_ids = decisions["id"].to_numpy()
    # every id of the input (quarantined files included) and of the validation set is taken, so
    # the graph can run on its own exported deliverable
    taken = set(read_manifest(raw.manifest_path)["id"].astype(str)) | {str(i) for i in val_ids}
    copies: dict[str, int] = {}
    ids, jpegs = [], []
    for j, (i, gen) in enumerate(zip(source_idx, generated)):
        if gen:
            source = str(all_ids[i])
            copies[source] = copies.get(source, -1) + 1
            ids.append(ds801.derived_image_id(source, copies[source], seed=params.seed, taken=taken))
            jpegs.append(ds801.encode_jpeg(pixels[j]))
        else:
            ids.append(str(all_ids[i]))
            jpegs.append(_original_jpeg(raw, str(all_ids[i])))
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        train = _export_split(
            tmp / "train", ids=ids, labels=train_labels[source_idx].tolist(), jpegs=jpegs,
            source_ids=[str(all_ids[i]) for i in source_idx], generated=list(map(bool, generated)),
            num_classes=raw.num_classes,
        )
        zip_path = tmp / "ds801-clean.zip"
        _zip_tree(zip_path, {"train": Path(train.dir), "val": Path(val.dir)})
    train = _relocate(train, tmp, out_dir)
    return BalancedTrain(
        train=train, val_dir=val.dir, zip_path=str(out_dir / "ds801-clean.zip"),
        n_generated=int(np.sum(generated)), counts_before=counts_before,
    )


def _zip_tree(path: Path, folders: dict[str, Path]) -> None:
    # JPEGs do not compress; storing keeps the archive quick to write and to read.
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for prefix, folder in folders.items():
            for file in sorted(folder.rglob("*")):
                if file.is_file():
                    # fixed time, mode and system instead of the file's: the same export gives
                    # the same archive bytes
                    info = zipfile.ZipInfo(f"{prefix}/{file.relative_to(folder).as_posix()}",
                                           date_time=ZIP_DATE_TIME)
                    info.create_system = 3  # Unix, so the mode bits below are meaningful
                    info.external_attr = (stat.S_IFREG | 0o644) << 16
                    zf.writestr(info, file.read_bytes(), compress_type=zipfile.ZIP_STORED)


def _relocate(split_: Split, tmp: Path, final: Path) -> Split:
    """Rewrite the paths of a Split written inside an atomic temporary folder."""
    def move(p: str) -> str:
        return str(final / Path(p).relative_to(tmp))

    return Split(
        dir=move(split_.dir), images_path=move(split_.images_path),
        labels_path=move(split_.labels_path), ids_path=move(split_.ids_path),
        counts=split_.counts,
    )


# --------------------------------------------------------------------------------------------
# training


def train_model(
    balanced: BalancedTrain, val: Split, out_dir: str | Path, config, *, num_classes: int,
    on_epoch=None, on_batch=None,
) -> Resnet34Model:
    """Train torchvision's ResNet-34 from scratch on the balanced export; keep a checkpoint."""
    from animal_assets.core import train

    result = train.train_resnet34(
        np.load(balanced.train.images_path), np.load(balanced.train.labels_path),
        num_classes=num_classes, config=config, val_images=np.load(val.images_path),
        val_labels=np.load(val.labels_path), on_epoch=on_epoch, on_batch=on_batch,
    )
    path = Path(out_dir) / "resnet34.pt"
    train.save_checkpoint(
        path, result.model, num_classes=num_classes, config=config, history=result.history,
        precision=result.precision,
    )
    return Resnet34Model(
        checkpoint_path=str(path), history=tuple(result.history), device=result.device,
        seconds=result.seconds, num_classes=num_classes, precision=result.precision,
    )


def predict_split(model: Resnet34Model, images: np.ndarray, *, device: str) -> np.ndarray:
    """Class predictions (N,) of the trained model."""
    from animal_assets.core import train

    net, _ = train.load_checkpoint(model.checkpoint_path, device=device)
    probs = train.predict_proba(net, images, batch_size=512, device=device)
    return probs.argmax(axis=1)


def write_report(path: str | Path, report: dict) -> str:
    write_json(path, report)
    return str(path)


# --------------------------------------------------------------------------------------------
# evaluation


def evaluate(
    model: Resnet34Model, val: Split, clean: CleanLabels, ood_scores: OodScores,
    out_dir: str | Path, *, device: str, class_names: list[str] | None = None,
    test_set: str | None = None, truth_path: str | None = None,
) -> dict:
    """Balanced accuracy on ``val_split`` (and on an external clean test set), plus cleaning
    scores against a truth file when one is given. Writes ``report.json`` under ``out_dir``."""
    from animal_assets.core import evaluate as metrics
    from animal_assets.core.scoring import cleaning_scores

    out_dir = Path(out_dir)
    k = model.num_classes
    report: dict = {"num_classes": k, "class_names": class_names}
    report["val_split"] = metrics.classification_report(
        np.load(val.labels_path), predict_split(model, np.load(val.images_path), device=device),
        num_classes=k, class_names=class_names,
    )
    if test_set:
        images, labels = _read_test_set(test_set, out_dir / "test_set", k)
        report["test_set"] = metrics.classification_report(
            labels, predict_split(model, images, device=device), num_classes=k,
            class_names=class_names,
        )
        report["test_set"]["path"] = str(test_set)
    if truth_path:
        from animal_assets.core.noise import read_truth

        decisions = read_decisions(clean)
        decisions["flag_ood"] = pd.read_csv(ood_scores.path)["flag"].to_numpy(dtype=bool)
        truth = read_truth(truth_path, num_classes=k)
        if truth and not decisions["id"].isin(truth.keys()).any():
            raise ValueError(f"{truth_path}: none of the truth file's {len(truth)} ids is a usable "
                             "image of the dataset; a truth file scores the dataset it was made with")
        report["cleaning"] = cleaning_scores(decisions, truth, num_classes=k)
        report["cleaning"]["truth_path"] = str(truth_path)
    report["training"] = {"device": model.device, "seconds": model.seconds,
                          "epochs": len(model.history)}
    report["path"] = write_report(out_dir / "report.json", report)
    return report


# --------------------------------------------------------------------------------------------
# ablation


def ablate(
    raw: RawImages, clean: CleanLabels, val: Split, balanced: BalancedTrain, out_dir: str | Path,
    params, train_config, *, test_set: str | None = None, model: Resnet34Model | None = None,
    log=print,
) -> dict:
    """Train the same trainer on every recipe of :mod:`.ablation`; write ``ablation.json``.

    ``model``, trained with ``train_config`` on ``balanced``, is the ``full`` recipe at its own
    seed instead of a second training run.
    """
    from animal_assets.core import ablation, train

    check_aligned(raw, clean)
    out_dir = Path(out_dir)
    images, _ = load_raw_images(raw, mmap=True)
    test_images = test_labels = None
    if test_set:
        test_images, test_labels = _read_test_set(test_set, out_dir / "test_set", raw.num_classes)
    result = ablation.run_ablation(
        images=images, decisions=read_decisions(clean),
        val_sources=set(pd.read_csv(val.ids_path)["source_id"].astype(str)),
        val_images=np.load(val.images_path), val_labels=np.load(val.labels_path),
        full_images=np.load(balanced.train.images_path),
        full_labels=np.load(balanced.train.labels_path), num_classes=raw.num_classes,
        train_config=train_config, params=params, test_images=test_images,
        test_labels=test_labels, log=log,
        full_model=None if model is None else train.load_checkpoint(model.checkpoint_path)[0],
    )
    result["path"] = write_report(out_dir / "ablation.json", result)
    return result


def _read_test_set(test_set: str, out_dir: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Decoded images and labels of an external clean test set, checked against K."""
    from animal_assets.core.ingest import read_dataset

    test_raw = read_dataset(test_set, out_dir)
    if test_raw.blocking or test_raw.n_usable == 0:
        raise ValueError(f"test set {test_set}: breaks the format rules; see {test_raw.violations_path}")
    if test_raw.num_classes != num_classes:
        raise ValueError(
            f"test set {test_set}: labels have K={test_raw.num_classes}, the model has K={num_classes}"
        )
    images, manifest = load_raw_images(test_raw)
    return images, manifest["given"].to_numpy(dtype=np.int64)

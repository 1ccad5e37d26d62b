"""A ground-truth benchmark built from any clean labelled image folder.

The source (a folder, or a .tgz/.tar.gz/.tar/.zip read in memory) holds ``train/{class}/*.jpg`` and
optionally ``test/{class}/*.jpg``, possibly under one top folder. Chosen in-distribution classes
become labels 0..K-1 in the given order, chosen other classes become the out-of-distribution pool,
known noise is injected (:mod:`animal_assets.core.synthetic.noise`) and the result is written as
``out_dir/train-set`` (DS801), ``out_dir/truth.json``, ``out_dir/test-set`` (the clean test split,
DS801, same class order) and ``out_dir/benchmark.json`` (settings and counts).

Command line: ``python -m animal_assets.core.synthetic.benchmark SRC OUT [--seed N] [--max-per-class N]
[--spec FILE]`` writes :data:`CIFAR_STANDARD`, or the settings of a JSON/YAML spec file
(:func:`animal_assets.core.synthetic.spec.load_spec`; ``--max-per-class`` overrides the
file's value).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import re
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from animal_assets.core.atomic import atomic_dir, write_json
from animal_assets.core.ds801 import IMAGE_SIZE, encode_jpeg, new_image_id, write_ds801
from animal_assets.core.synthetic.noise import NoiseSpec, inject_noise, substream, write_noisy_dataset
from animal_assets.core.synthetic.spec import CIFAR_STANDARD, load_spec, spec_record
from animal_assets.core.truth import DATASET_DIRNAME, TRUTH_FILE

TEST_DIRNAME = "test-set"
META_FILE = "benchmark.json"
_SPLITS = ("train", "test")
_IMAGE_EXTS = (".jpg", ".jpeg")


@dataclass(frozen=True)
class Benchmark:
    """Where a benchmark was written and what it holds."""

    dataset_dir: Path
    truth_path: Path
    test_dir: Path | None  # None when the source has no test split
    class_names: tuple[str, ...]
    counts: dict[str, int]  # items per kind in the noisy train set
    n_test: int


def _member_path(name: str, src: Path) -> PurePosixPath:
    """Return an archive member's path, refusing absolute paths and '..' components."""
    norm = name.replace("\\", "/")
    path = PurePosixPath(norm)
    if path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", norm):
        raise ValueError(f"{src}: member {name!r} has an absolute path or a '..' component")
    return path


def _wanted(path: PurePosixPath, classes: set[str]) -> bool:
    parts = path.parts
    return (len(parts) >= 3 and parts[-3] in _SPLITS and parts[-2] in classes
            and path.suffix.lower() in _IMAGE_EXTS and not path.name.startswith("."))


def _iter_files(src: Path, classes: set[str]) -> Iterator[tuple[PurePosixPath, bytes]]:
    """Yield (relative path, bytes) of the class images in a folder or archive, nothing extracted."""
    if src.is_dir():
        for file in sorted(src.rglob("*")):
            rel = PurePosixPath(file.relative_to(src).as_posix())
            if file.is_file() and _wanted(rel, classes):
                yield rel, file.read_bytes()
    elif zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            for info in zf.infolist():
                rel = _member_path(info.filename, src)
                if not info.is_dir() and _wanted(rel, classes):
                    yield rel, zf.read(info)
    elif src.is_file() and tarfile.is_tarfile(src):
        with tarfile.open(src, "r:*") as tar:
            for member in tar:
                rel = _member_path(member.name, src)
                # links and special files are never followed: only regular members are read
                if member.isreg() and _wanted(rel, classes):
                    yield rel, tar.extractfile(member).read()
    else:
        raise ValueError(f"{src}: not a folder, tar archive or zip archive")


def read_class_tree(src: str | os.PathLike,
                    classes: Sequence[str]) -> dict[tuple[str, str], dict[str, bytes]]:
    """Read the JPEG bytes of ``classes`` from ``train/`` and ``test/`` of a folder or archive.

    Parameters
    ----------
    src : path
        Folder, tar archive (any compression) or zip archive; one top folder is allowed above
        ``train/`` and ``test/``. Archive members with absolute paths or '..' are refused.
    classes : sequence of str
        Class folders to read; other folders are skipped.

    Returns
    -------
    dict
        ``{(split, class): {file name: bytes}}`` for every split/class pair present.
    """
    src = Path(src)
    found: dict[tuple[str, str], dict[str, bytes]] = {}
    roots: set[tuple[str, ...]] = set()
    for rel, data in _iter_files(src, set(classes)):
        roots.add(rel.parts[:-3])
        found.setdefault((rel.parts[-3], rel.parts[-2]), {})[rel.name] = data
    if len(roots) > 1:
        shown = sorted("/".join(r) for r in roots)
        raise ValueError(f"{src}: class folders under several roots {shown}")
    return found


def _decode(name: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as img:
            img = img.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{name}: not a readable image ({exc})") from exc


def _load(groups: Sequence[tuple[str, dict[str, bytes]]], rng: np.random.Generator,
          cap: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(label, {name: bytes})`` groups, at most ``cap`` random files each.

    Returns images (N, 64, 64, 3) uint8 and the group index of each, (N,) int.
    """
    chosen = []
    for _, files in groups:
        names = sorted(files)
        if cap is not None and len(names) > cap:
            names = [names[i] for i in np.sort(rng.choice(len(names), cap, replace=False))]
        chosen.append(names)
    images = np.empty((sum(map(len, chosen)), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    row = 0
    for (label, files), names in zip(groups, chosen):
        for name in names:
            images[row] = _decode(f"{label}/{name}", files[name])
            row += 1
    return images, np.repeat(np.arange(len(groups)), [len(n) for n in chosen])


def build_benchmark(
    src: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    in_classes: Sequence[str],
    ood_classes: Sequence[str],
    spec: NoiseSpec,
    seed: int,
    max_per_class: int | None = None,
) -> Benchmark:
    """Build a noisy benchmark with known truth from a clean class-folder tree.

    Parameters
    ----------
    src : path
        Folder or .tgz/.tar.gz/.tar/.zip holding ``train/{class}/*.jpg`` (and optionally
        ``test/{class}/*.jpg``). Archive members with absolute paths or '..' are refused.
    out_dir : path
        Folder created or replaced atomically with train-set/, truth.json, test-set/, benchmark.json.
    in_classes : sequence of str
        In-distribution class folders; their order gives labels 0..K-1 (K >= 2).
    ood_classes : sequence of str
        Train class folders used as the pool of out-of-distribution images.
    spec : NoiseSpec
        Noise to inject; class indices follow ``in_classes``.
    seed : int
        Seed of every random choice; the same seed gives byte-identical output.
    max_per_class : int, optional
        Cap on the train images read per class (in-distribution and OOD), drawn at random;
        the test split is never capped.

    Returns
    -------
    Benchmark
    """
    in_classes, ood_classes = tuple(in_classes), tuple(ood_classes)
    if len(in_classes) < 2 or len(set(in_classes)) != len(in_classes):
        raise ValueError(f"build_benchmark: in_classes must name at least 2 distinct classes, "
                         f"got {in_classes}")
    if set(in_classes) & set(ood_classes):
        both = sorted(set(in_classes) & set(ood_classes))
        raise ValueError(f"build_benchmark: classes both in and OOD: {both}")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"build_benchmark: max_per_class must be positive, got {max_per_class}")
    tree = read_class_tree(src, in_classes + ood_classes)
    missing = [c for c in in_classes + ood_classes if ("train", c) not in tree]
    if missing:
        raise ValueError(f"{src}: no train/{{class}}/*.jpg images for {missing}")
    has_test = any(split == "test" for split, _ in tree)
    missing_test = [c for c in in_classes if ("test", c) not in tree]
    if has_test and missing_test:
        raise ValueError(f"{src}: the test split lacks classes {missing_test}")

    pick = substream(seed, "benchmark-pick")
    images, labels = _load([(f"train/{c}", tree["train", c]) for c in in_classes], pick, max_per_class)
    ood, _ = _load([(f"train/{c}", tree["train", c]) for c in ood_classes], pick, max_per_class)
    num_classes = len(in_classes)
    noisy = inject_noise(images, labels, ood, spec, num_classes=num_classes, seed=seed)
    del images, ood

    out_dir = Path(out_dir)
    n_test = 0
    with atomic_dir(out_dir, known=(DATASET_DIRNAME, TRUTH_FILE, TEST_DIRNAME, META_FILE)) as tmp:
        write_noisy_dataset(tmp, noisy, num_classes=num_classes, seed=seed)
        if has_test:
            ids = substream(seed, "test-ids")
            test, test_labels = _load([(f"test/{c}", tree["test", c]) for c in in_classes], pick, None)
            items = [(new_image_id(ids), encode_jpeg(img), int(k)) for img, k in zip(test, test_labels)]
            write_ds801(tmp / TEST_DIRNAME, items, num_classes=num_classes)
            n_test = len(items)
        write_json(tmp / META_FILE, {
            "class_names": list(in_classes),
            "ood_classes": list(ood_classes),
            "spec": spec_record(spec),
            "seed": seed,
            "max_per_class": max_per_class,
            "counts": noisy.counts(),
            "n_test": n_test,
        })
    return Benchmark(
        dataset_dir=out_dir / DATASET_DIRNAME,
        truth_path=out_dir / TRUTH_FILE,
        test_dir=out_dir / TEST_DIRNAME if has_test else None,
        class_names=in_classes,
        counts=noisy.counts(),
        n_test=n_test,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Write a benchmark (the standard CIFAR one, or a spec file's) from SRC into OUT and print it."""
    parser = argparse.ArgumentParser(
        prog="python -m animal_assets.core.synthetic.benchmark",
        description="Build a noisy benchmark (known truth) from a class-folder tree: the standard CIFAR "
                    "settings, or those of a spec file.",
    )
    parser.add_argument("src", type=Path, help="folder or .tgz/.zip with train/{class}/*.jpg")
    parser.add_argument("out", type=Path, help="output folder (created or replaced)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-per-class", type=int, default=None, help="overrides the spec file's value")
    parser.add_argument("--spec", type=Path, default=None, metavar="FILE",
                        help="JSON or YAML settings (default: the standard CIFAR settings)")
    args = parser.parse_args(argv)
    settings, max_per_class = CIFAR_STANDARD, None
    if args.spec is not None:
        try:
            settings, max_per_class = load_spec(args.spec, seed=args.seed)
        except ValueError as exc:
            parser.error(str(exc))
    if args.max_per_class is not None:
        max_per_class = args.max_per_class
    start = time.perf_counter()
    bench = build_benchmark(args.src, args.out, in_classes=settings.in_classes,
                            ood_classes=settings.ood_classes, spec=settings.spec,
                            seed=args.seed, max_per_class=max_per_class)
    print(f"dataset: {bench.dataset_dir}")
    print(f"truth:   {bench.truth_path}")
    print(f"test:    {bench.test_dir} ({bench.n_test} images)")
    print(f"classes: {', '.join(f'{k} {c}' for k, c in enumerate(bench.class_names))}")
    print(f"spec:    {json.dumps(spec_record(settings.spec))}")
    for kind, n in bench.counts.items():
        print(f"{kind:>13}: {n}")
    print(f"{'total':>13}: {sum(bench.counts.values())} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

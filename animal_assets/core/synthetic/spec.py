"""What a ground-truth benchmark holds: which source classes are in distribution and which are
out of it, and the noise to inject, read from a JSON or YAML spec or a mapping."""
from __future__ import annotations

import dataclasses
import json
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from animal_assets.core.synthetic.noise import NoiseSpec, substream

@dataclass(frozen=True)
class BenchmarkSettings:
    """Which source classes are in-distribution (label order), which are OOD, and the noise."""

    in_classes: tuple[str, ...]
    ood_classes: tuple[str, ...]
    spec: NoiseSpec


# The standard CIFAR-10 subset benchmark (/work/shared/data/README.md). Label order is alphabetical,
# which is also CIFAR-10's own order: 0 bird, 1 cat, 2 deer, 3 dog, 4 frog, 5 horse.
CIFAR_STANDARD = BenchmarkSettings(
    in_classes=("bird", "cat", "deer", "dog", "frog", "horse"),
    ood_classes=("airplane", "automobile", "ship", "truck"),
    spec=NoiseSpec(
        pairs=((1, 3), (2, 5), (0, 4)),  # cat<->dog, deer<->horse, bird<->frog
        pair_flip_rate=0.30,
        ood_fraction=0.10,
    ),
)


_SPEC_KEYS = ("in_classes", "ood_classes", "pairs", "pair_flip_rate", "asymmetric", "symmetric_flip_rate",
              "ood_fraction", "n_dup_conflicts", "class_keep", "max_per_class")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number_list(value, n: int) -> tuple[float, ...] | None:
    """The floats of a list of ``n`` numbers; None when ``value`` is anything else."""
    if isinstance(value, list) and len(value) == n and all(map(_is_number, value)):
        return tuple(float(v) for v in value)
    return None


def _number_map(value, keys: tuple[str, ...]) -> dict[str, float] | None:
    """The floats of a mapping with exactly ``keys``, all numbers; None when ``value`` is anything else."""
    if isinstance(value, Mapping) and set(value) == set(keys) and all(map(_is_number, value.values())):
        return {key: float(value[key]) for key in keys}
    return None


def load_spec(path: str | os.PathLike, *, seed: int) -> tuple[BenchmarkSettings, int | None]:
    """Read benchmark settings from a JSON (``.json``) or YAML (any other name) spec file.

    The top level is a mapping of the keys below. Each is optional: a missing key keeps its value
    in :data:`CIFAR_STANDARD` (an empty file gives the standard benchmark). An unknown key is an
    error.

    ``in_classes`` : list of str
        In-distribution class folders in label order (at least 2, distinct). K below is its length.
    ``ood_classes`` : list of str
        Class folders of the OOD pool, none of them in ``in_classes``.
    ``pairs`` : list of [int, int]
        Look-alike pairs of class indices in 0..K-1, no class in two pairs.
    ``pair_flip_rate`` : number or list of K numbers
        One flip rate for every paired class, or entry ``c`` for true class ``c`` (see
        :class:`~animal_assets.core.synthetic.noise.NoiseSpec`).
    ``asymmetric`` : {"forward": number, "back": number}
        Instead of ``pair_flip_rate`` (giving both is an error): in each pair, in order, one class
        drawn from the seed (one draw per pair from ``substream(seed, "pair-direction")``) is
        flipped at the ``forward`` rate and its partner at the ``back`` rate; unpaired classes get
        0. Resolves to a per-class ``pair_flip_rate``.
    ``symmetric_flip_rate`` : number
    ``ood_fraction`` : number
    ``n_dup_conflicts`` : int
    ``class_keep`` : null, list of K numbers, or {"from": number, "to": number}
        Kept fraction of each class; null keeps every class whole. The mapping gives K evenly
        spaced fractions from ``from`` to ``to``; with
        ``order = substream(seed, "class-keep-order").permutation(K)``, class ``order[i]`` gets
        the i-th of them.
    ``max_per_class`` : int or null
        Cap on the train images read per class; null (the default) reads them all.

    Ranges are those of :class:`~animal_assets.core.synthetic.noise.NoiseSpec`.

    Parameters
    ----------
    path : path
        The spec file.
    seed : int
        Seed of the benchmark; draws the ``asymmetric`` directions and the ``class_keep`` order.

    Returns
    -------
    (BenchmarkSettings, int or None)
        The resolved settings and ``max_per_class``.

    Raises
    ------
    ValueError
        Starting with the file path and naming the offending key and rule.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot be read as text ({exc})") from exc
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{path}: not valid YAML ({exc})") from exc
        data = {} if data is None else data
    return settings_from_dict(data, seed=seed, where=str(path))


def settings_from_dict(data: Mapping, *, seed: int,
                       where: str = "spec") -> tuple[BenchmarkSettings, int | None]:
    """Benchmark settings from a mapping with the keys of a spec file (see :func:`load_spec`).

    Parameters
    ----------
    data : mapping
        The spec's keys.
    seed : int
        Draws the ``asymmetric`` directions and the ``class_keep`` order.
    where : str
        What every error message starts with (the file path, or a grid cell's name).

    Returns
    -------
    (BenchmarkSettings, int or None)
        The resolved settings and ``max_per_class``.
    """
    path = where
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping of settings")
    for key in data:
        if key not in _SPEC_KEYS:
            raise ValueError(f"{path}: unknown key {key!r} (known: {', '.join(_SPEC_KEYS)})")
    if "asymmetric" in data and "pair_flip_rate" in data:
        raise ValueError(f"{path}: give either 'asymmetric' or 'pair_flip_rate', not both")

    classes = {}
    for key, default in (("in_classes", CIFAR_STANDARD.in_classes), ("ood_classes", CIFAR_STANDARD.ood_classes)):
        value = data.get(key, list(default))
        if (not isinstance(value, list) or not all(isinstance(v, str) for v in value)
                or len(set(value)) != len(value)):
            raise ValueError(f"{path}: {key!r} must be a list of distinct class names, got {value!r}")
        classes[key] = tuple(value)
    in_classes, ood_classes = classes["in_classes"], classes["ood_classes"]
    k = len(in_classes)
    if k < 2:
        raise ValueError(f"{path}: 'in_classes' must name at least 2 classes, got {list(in_classes)}")
    if set(in_classes) & set(ood_classes):
        raise ValueError(f"{path}: 'ood_classes' must not repeat in_classes, "
                         f"got {sorted(set(in_classes) & set(ood_classes))}")

    pairs = data.get("pairs", [list(p) for p in CIFAR_STANDARD.spec.pairs])
    if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(c) and 0 <= c < k for c in p) for p in pairs):
        given = "got" if "pairs" in data else "the default is"
        raise ValueError(f"{path}: 'pairs' must be a list of [int, int] class indices in 0..{k - 1}, "
                         f"{given} {pairs!r}")
    pairs = tuple(tuple(p) for p in pairs)
    per_class = f"a list of {k} numbers (one per in_classes entry)"

    kwargs = {}
    if "pair_flip_rate" in data:
        rate = data["pair_flip_rate"]
        kwargs["pair_flip_rate"] = float(rate) if _is_number(rate) else _number_list(rate, k)
        if kwargs["pair_flip_rate"] is None:
            raise ValueError(f"{path}: 'pair_flip_rate' must be a number or {per_class}, got {rate!r}")
    elif "asymmetric" in data:
        asym = _number_map(data["asymmetric"], ("forward", "back"))
        if asym is None or not all(0.0 <= r <= 1.0 for r in asym.values()):
            raise ValueError(f"{path}: 'asymmetric' must be {{'forward': rate, 'back': rate}} with rates in "
                             f"[0, 1], got {data['asymmetric']!r}")
        rates = [0.0] * k
        direction = substream(seed, "pair-direction")
        for pair in pairs:
            first = int(direction.integers(0, 2))
            rates[pair[first]], rates[pair[1 - first]] = asym["forward"], asym["back"]
        kwargs["pair_flip_rate"] = tuple(rates)
    for key in ("symmetric_flip_rate", "ood_fraction"):
        if key in data:
            if not _is_number(data[key]):
                raise ValueError(f"{path}: {key!r} must be a number, got {data[key]!r}")
            kwargs[key] = float(data[key])
    if "n_dup_conflicts" in data:
        if not _is_int(data["n_dup_conflicts"]):
            raise ValueError(f"{path}: 'n_dup_conflicts' must be an integer, got {data['n_dup_conflicts']!r}")
        kwargs["n_dup_conflicts"] = data["n_dup_conflicts"]
    keep = data.get("class_keep")
    if keep is not None:
        span = _number_map(keep, ("from", "to"))
        if span is not None:
            fractions = np.linspace(span["from"], span["to"], k)
            order = substream(seed, "class-keep-order").permutation(k)
            resolved = [0.0] * k
            for fraction, c in zip(fractions, order):
                resolved[int(c)] = float(fraction)
            kwargs["class_keep"] = tuple(resolved)
        else:
            kwargs["class_keep"] = _number_list(keep, k)
            if kwargs["class_keep"] is None:
                raise ValueError(f"{path}: 'class_keep' must be null, {per_class} or "
                                 f"{{'from': fraction, 'to': fraction}}, got {keep!r}")
    max_per_class = data.get("max_per_class")
    if max_per_class is not None and (not _is_int(max_per_class) or max_per_class < 1):
        raise ValueError(f"{path}: 'max_per_class' must be a positive integer or null, got {max_per_class!r}")

    try:
        spec = dataclasses.replace(CIFAR_STANDARD.spec, pairs=pairs, **kwargs)
    except ValueError as exc:
        note = " (resolved from 'asymmetric')" if "asymmetric" in data and "pair_flip_rate" in str(exc) else ""
        raise ValueError(f"{path}: {exc}{note}") from exc
    return BenchmarkSettings(in_classes=in_classes, ood_classes=ood_classes, spec=spec), max_per_class


def spec_record(spec: NoiseSpec) -> dict:
    """Return ``spec`` as plain JSON values (tuples as lists): what benchmark.json records as "spec".

    Parameters
    ----------
    spec : NoiseSpec
        A resolved spec, e.g. from :func:`load_spec`.

    Returns
    -------
    dict
        One entry per field of :class:`~animal_assets.core.synthetic.noise.NoiseSpec`.
    """
    def plain(value):
        return [plain(v) for v in value] if isinstance(value, (tuple, list)) else value

    return {name: plain(value) for name, value in dataclasses.asdict(spec).items()}

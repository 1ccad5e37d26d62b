"""The cleaning measured on a family of ground-truth benchmarks, not on one instance.

Every cell of the grid is a noisy benchmark built from the same clean class-folder source
(:mod:`.benchmark`) with other class sizes and other noise. For each cell and seed the graph's
own stage functions run the stage table up to ``clean_labels`` (``raw_images``, ``image_quality``,
``embeddings``, ``neighbours``, ``ood_scores``, ``near_duplicates``) with the given run config,
and the decisions are scored against the truth. Features are cached by image content
(:mod:`.feature_cache`), so the source images are embedded once for the whole grid and a rerun
embeds nothing.

The grid (16 cells, :data:`GRID`) crosses

* true class sizes: balanced (at most ``BALANCED_CAP`` images per class, so the 2,000 vehicle
  images of the CIFAR subset cover a 15 % OOD share) or imbalanced (keep fractions evenly from
  1.0 down to 0.25, in an order drawn from the seed);
* look-alike flips: 0.30 both ways, or 0.35 one way and 0.10 back (direction drawn per pair);
* symmetric noise: 0 or 0.10 on top;
* OOD share: 5 % or 15 %;

and :data:`EXTRA` adds the standard cell (balanced, all images, 0.30 both ways, 10 % OOD) and
the same with the imbalanced profile. The bars each cell must meet (:func:`bars`):

* cleaned label accuracy >= raw + 0.5 x (1 - raw): at least half the label errors removed;
* every class's label accuracy >= its raw value - 0.01 (no class pays for the others);
* OOD AUROC >= 0.95;
* the standard cell >= 0.88 label accuracy, its imbalanced twin >= 0.85.

Every run also scores the peers of :mod:`.synthetic.peers` (raw labels, cleanlab's flags
dropped, a simple anchor) on the same features and out-of-fold probe probabilities as the label
stage, in a second table (:func:`peers_table`).

Command line::

    python -m animal_assets.core.family ../shared/data/cifar10-subset.tgz var/family \\
        --seeds 0,1 [--cells standard,bal-pair30-sym00-ood05,...] [--config default] [--json var/family.json]
    python -m animal_assets.core.family ../shared/data/cifar10-subset.tgz var/family --preset quick
    ... --parallel 2     # two runs at a time, each in a process with half the cores
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

BALANCED_CAP = 1500
IMBALANCED = {"from": 1.0, "to": 0.25}
ACCURACY_SHARE = 0.5  # share of the raw label errors the cleaning must remove
CLASS_TOLERANCE = 0.01  # how much below its raw label accuracy a class may end
MIN_AUROC = 0.95


@dataclass(frozen=True)
class Cell:
    """One benchmark of the family: a name and the keys of a benchmark spec file."""

    name: str
    spec: dict
    min_accuracy: float | None = None  # an absolute bar on the cleaned label accuracy


def _cell(sizes: str, flips: str, symmetric: float, ood: float, **extra) -> Cell:
    spec: dict = {"symmetric_flip_rate": symmetric, "ood_fraction": ood}
    if sizes == "bal":
        spec["max_per_class"] = BALANCED_CAP
    else:
        spec["class_keep"] = dict(IMBALANCED)
    if flips == "pair30":
        spec["pair_flip_rate"] = 0.30
    else:
        spec["asymmetric"] = {"forward": 0.35, "back": 0.10}
    name = f"{sizes}-{flips}-sym{round(symmetric * 100):02d}-ood{round(ood * 100):02d}"
    return Cell(name=name, spec=spec, **extra)


GRID: tuple[Cell, ...] = tuple(
    _cell(sizes, flips, symmetric, ood)
    for sizes in ("bal", "imb") for flips in ("pair30", "asym35-10")
    for symmetric in (0.0, 0.10) for ood in (0.05, 0.15)
)
EXTRA: tuple[Cell, ...] = (
    Cell(name="standard", spec={"pair_flip_rate": 0.30, "ood_fraction": 0.10}, min_accuracy=0.88),
    Cell(name="standard-imb", spec={"pair_flip_rate": 0.30, "ood_fraction": 0.10,
                                    "class_keep": dict(IMBALANCED)}, min_accuracy=0.85),
)
#: Shapes the grid lacks, where the cleaning was seen to fall short (``--cells shapes``; not in
#: ``all``, whose 36 runs are the baseline every change is compared with):
#: junk that is partly animals outside the label set (four classes, cat and dog, deer and horse
#: flipped 0.30 both ways; half of the 10 % junk birds and frogs, half vehicles: at most 1,000
#: images per class), and little junk (3 %) with one-way flips.
SHAPES: tuple[Cell, ...] = (
    Cell(name="junk-animals", spec={
        "in_classes": ["cat", "deer", "dog", "horse"],
        "ood_classes": ["bird", "frog", "airplane", "automobile", "ship", "truck"],
        "pairs": [[0, 2], [1, 3]], "pair_flip_rate": 0.30, "ood_fraction": 0.10,
        "max_per_class": 1000}),
    _cell("bal", "asym35-10", 0.0, 0.03),
)
CELLS = {cell.name: cell for cell in GRID + EXTRA + SHAPES}
#: The quick preset: six runs (cell, seed) of the full grid, each the worst run of its kind there
#: (balanced and imbalanced, one-way and two-way flips, with and without symmetric noise, and
#: both standard cells), for a measurement that takes minutes.
QUICK: tuple[tuple[str, int], ...] = (
    ("bal-asym35-10-sym00-ood05", 1),
    ("imb-asym35-10-sym10-ood05", 0),
    ("imb-asym35-10-sym00-ood05", 1),
    ("bal-pair30-sym10-ood05", 0),
    ("standard", 0),
    ("standard-imb", 1),
)


def score_cell(decisions: pd.DataFrame, ood_flags: np.ndarray, truth: dict, *,
               num_classes: int | None = None) -> dict:
    """:func:`animal_assets.core.scoring.cleaning_scores` of one run against its truth."""
    from animal_assets.core.scoring import cleaning_scores

    decisions = decisions.copy()
    decisions["flag_ood"] = np.asarray(ood_flags, dtype=bool)
    return cleaning_scores(decisions, truth, num_classes=num_classes)


def margins(row: dict, cell: Cell) -> dict:
    """How far a scored row is above each bar (negative: below it)."""
    raw, cleaned = row["label_accuracy"]["raw"], row["label_accuracy"]["cleaned"]
    delta = np.array(row["per_class"]["cleaned"]) - np.array(row["per_class"]["raw"])
    out = {
        "accuracy": cleaned - (raw + ACCURACY_SHARE * (1.0 - raw)),
        "classes": float(np.nanmin(delta)) + CLASS_TOLERANCE,
        "auroc": row.get("ood", {}).get("auroc", 1.0) - MIN_AUROC,
    }
    if cell.min_accuracy is not None:
        out["absolute"] = cleaned - cell.min_accuracy
    return out


def bars(row: dict, cell: Cell) -> dict:
    """Which bars a scored row meets: ``accuracy``, ``classes``, ``auroc`` (and ``absolute``)."""
    return {name: bool(m >= -1e-12) for name, m in margins(row, cell).items()}


def run_cell(source: str | Path, cell: Cell, seed: int, work: str | Path, *, params: dict,
             cache_dir: str | Path, device: str = "cpu", keep: bool = False) -> dict:
    """Build one benchmark, run the stage table up to ``clean_labels`` on it (the Dagster
    graph's stages and defaults, its pictures left out) and score them; returns the row."""
    from animal_assets.core.synthetic.benchmark import build_benchmark
    from animal_assets.core.synthetic.spec import settings_from_dict
    from animal_assets.core.truth import read_truth
    from animal_assets.core.pipeline import run_stages
    from animal_assets.core.stages import RunContext, upto
    from animal_assets.core.stages.clean_labels import read_decisions
    from animal_assets.core.stages.ood_scores import read_flags

    start = time.perf_counter()
    settings, cap = settings_from_dict(cell.spec, seed=seed, where=f"cell {cell.name}")
    run_dir = Path(work) / cell.name / f"seed{seed}"
    bench = build_benchmark(source, run_dir / "benchmark", in_classes=settings.in_classes,
                            ood_classes=settings.ood_classes, spec=settings.spec, seed=seed,
                            max_per_class=cap)
    built = time.perf_counter()
    ctx = RunContext(output=run_dir / "outputs", dataset=bench.dataset_dir, device=device,
                     cache_dir=None if cache_dir is None else str(cache_dir), log=_quiet, warn=_quiet)
    timings: dict = {}
    results = run_stages(ctx, params, stages=upto("clean_labels"), describe=False, timings=timings)
    raw, emb, clean = results["raw_images"], results["embeddings"], results["clean_labels"]
    truth = read_truth(bench.truth_path, num_classes=raw.num_classes)
    decisions = read_decisions(clean)
    row = score_cell(decisions, read_flags(results["ood_scores"]), truth,
                     num_classes=raw.num_classes)
    row["peers"] = score_peers(decisions, clean, emb, truth, num_classes=raw.num_classes)
    seconds = {name: t["seconds"] for name, t in timings.items()}
    row.update({
        "cell": cell.name, "seed": seed, "n": raw.n_usable, "class_names": list(bench.class_names),
        "spec": json.loads(json.dumps(cell.spec)),
        "estimated": {k: clean.summary[k] for k in ("prior", "transition") if k in clean.summary},
        "seconds": {"build": round(built - start, 1), "embed": round(emb.seconds, 1),
                    "n_embedded": emb.n - emb.n_cached,
                    "read_and_embed": round(seconds["raw_images"] + seconds["embeddings"], 1),
                    "ood_scores": round(seconds["ood_scores"], 1),
                    "near_duplicates": round(seconds["near_duplicates"], 1),
                    "clean_labels": round(seconds["clean_labels"], 1),
                    "total": round(time.perf_counter() - start, 1)},
        # images that share their label decision with a byte-identical or near-copy
        "in_copy_groups": int(decisions["copy_group"].duplicated(keep=False).sum()),
    })
    row["bars"] = bars(row, cell)
    if not keep:
        shutil.rmtree(run_dir, ignore_errors=True)
    return row


def score_peers(decisions: pd.DataFrame, clean, emb, truth: dict, *, num_classes: int) -> dict:
    """The peers of :mod:`.synthetic.peers` and the label stage's own decisions, scored alike
    on the images the truth names: same features, same out-of-fold probe probabilities."""
    from animal_assets.core.stages.clean_labels import read_probe_probs
    from animal_assets.core.synthetic.peers import compare

    probs = read_probe_probs(clean)
    features = np.load(emb.path, mmap_mode="r")
    scored = decisions["id"].isin(truth.keys()).to_numpy()
    if len(probs) != len(decisions) or len(features) != len(decisions):
        raise ValueError("family.py: the decisions, probe probabilities and features disagree")
    true = decisions["id"][scored].map(lambda i: truth[i]["true"]).to_numpy(dtype=np.int64)
    return compare(decisions["given"].to_numpy()[scored], probs[scored],
                   np.asarray(features[scored, : emb.head_dim]),
                   decisions["label"].to_numpy()[scored], true, num_classes)


PEER_COLUMNS = ("raw", "cleanlab-drop", "anchor", "ours")


def peers_table(rows: Sequence[dict]) -> str:
    """Per run: each labelling's label accuracy (drops count as errors), worst-class change
    against raw, images kept and accuracy among the kept; then ours against the best peer."""
    head = ["cell", "seed", *(f"{p} acc / worst Δ / kept (acc)" for p in PEER_COLUMNS),
            "ours − best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        peers = r["peers"]
        cells = [f"{_f(peers[p]['label_accuracy'])} / {peers[p]['worst_class_change']:+.3f} / "
                 f"{peers[p]['kept']:,} ({_f(peers[p]['kept_accuracy'])})" for p in PEER_COLUMNS]
        lines.append(f"| {r['cell']} | {r['seed']} | " + " | ".join(cells)
                     + f" | {peer_margin(r):+.3f} |")
    return "\n".join(lines)


def peer_margin(row: dict) -> float:
    """Our label accuracy minus the best peer's (raw included) on one run."""
    peers = row["peers"]
    best = max(peers[p]["label_accuracy"] for p in PEER_COLUMNS if p != "ours")
    return peers["ours"]["label_accuracy"] - best


def peers_summary(rows: Sequence[dict]) -> str:
    """Over the runs: the worst run's margin, and our mean against each peer's mean."""
    if not rows:
        return ""
    margins_ = [peer_margin(r) for r in rows]
    worst = int(np.argmin(margins_))
    means = {p: float(np.mean([r["peers"][p]["label_accuracy"] for r in rows])) for p in PEER_COLUMNS}
    best_peer = max((p for p in PEER_COLUMNS if p != "ours"), key=means.get)
    return ("mean label accuracy: " + ", ".join(f"{p} {_f(m)}" for p, m in means.items())
            + f"; ours − best peer ({best_peer}) on the mean {means['ours'] - means[best_peer]:+.3f}"
            + f"; worst run {rows[worst]['cell']} seed {rows[worst]['seed']}: {margins_[worst]:+.3f}")


def _quiet(_: str) -> None:
    return None


def _f(x: float) -> str:
    return f"{x:.3f}"


def table(rows: Sequence[dict]) -> str:
    """The family table in markdown, one line per cell and seed, the worst cell marked."""
    head = ("| cell | seed | label acc raw → cleaned (bar) | per-class mean raw → cleaned | "
            "worst class Δ | label-issue F1 | OOD AUROC | OOD flagged / true | s | bars |")
    lines = [head, "|" + " --- |" * 10]
    tightest = [min(margins(r, CELLS[r["cell"]]).values()) for r in rows]
    worst = int(np.argmin(tightest)) if rows else -1
    for i, r in enumerate(rows):
        la, pc = r["label_accuracy"], r["per_class"]
        raw_pc, clean_pc = np.array(pc["raw"]), np.array(pc["cleaned"])
        delta = clean_pc - raw_pc
        k = int(np.nanargmin(delta))
        name = r["class_names"][k] if r.get("class_names") else str(k)
        bar = la["raw"] + ACCURACY_SHARE * (1 - la["raw"])
        failed = [b for b, ok in r["bars"].items() if not ok]
        cell = f"**{r['cell']}** (worst)" if i == worst else r["cell"]
        lines.append(
            f"| {cell} | {r['seed']} | {_f(la['raw'])} → {_f(la['cleaned'])} ({_f(bar)}) | "
            f"{_f(np.nanmean(raw_pc))} → {_f(np.nanmean(clean_pc))} | {name} {delta[k]:+.3f} | "
            f"{_f(r['label_issues']['f1'])} | {_f(r.get('ood', {}).get('auroc', float('nan')))} | "
            f"{_f(r['ood_share']['flagged'])} / {_f(r['ood_share']['true'])} | "
            f"{r['seconds']['total']:.0f} | {'pass' if not failed else 'FAIL ' + ', '.join(failed)} |"
        )
    return "\n".join(lines)


def select_runs(cells: str = "all", seeds: str = "0,1", *,
                preset: str | None = None) -> list[tuple[Cell, int]]:
    """The runs (cell, seed) that the command line names, in order.

    Parameters
    ----------
    cells : str
        Comma-separated cell names, or ``grid``, ``extra``, ``all`` (the 18 cells of the
        baseline), ``shapes``.
    seeds : str
        Comma-separated seeds; every cell runs at each.
    preset : {"quick"}, optional
        The runs of :data:`QUICK` instead of ``cells`` and ``seeds``.

    Raises
    ------
    ValueError
        On an unknown cell or preset.
    """
    if preset is not None:
        if preset != "quick":
            raise ValueError(f"unknown preset {preset!r}; known: quick")
        return [(CELLS[name], seed) for name, seed in QUICK]
    groups = {"all": GRID + EXTRA, "grid": GRID, "extra": EXTRA, "shapes": SHAPES}
    if cells in groups:
        chosen = groups[cells]
    else:
        unknown = [c for c in cells.split(",") if c not in CELLS]
        if unknown:
            raise ValueError(f"unknown cells {unknown}; known: {', '.join(CELLS)}")
        chosen = tuple(CELLS[c] for c in cells.split(","))
    return [(cell, int(seed)) for cell in chosen for seed in seeds.split(",")]


def _run_job(job: tuple) -> dict:
    src, cell, seed, work, params, cache, device, keep = job
    return run_cell(src, cell, seed, work, params=params, cache_dir=cache, device=device, keep=keep)


def run_rows(jobs: list[tuple], parallel: int = 1):
    """The row of each job ``(source, cell, seed, work, params, cache_dir, device, keep)`` (the
    arguments of :func:`run_cell`), in the jobs' order: one after another in this process, or
    ``parallel`` at a time in spawned processes that share the cores and the feature cache, each
    row yielded once it and those before it are done."""
    if parallel <= 1 or len(jobs) <= 1:
        yield from map(_run_job, jobs)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from animal_assets.core.jobs import core_share, use_core_share

    workers = min(parallel, len(jobs))
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=use_core_share, initargs=(core_share(workers),)) as pool:
        yield from pool.map(_run_job, jobs)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the grid and print its table; ``--json`` also writes every row."""
    from animal_assets.core.config import load_run_config, params_from_run_config

    parser = argparse.ArgumentParser(prog="python -m animal_assets.core.family",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("src", type=Path, help="folder or .tgz/.zip with train/{class}/*.jpg")
    parser.add_argument("work", type=Path, help="working folder (benchmarks, outputs, feature cache)")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds (default 0,1)")
    parser.add_argument("--cells", default="all",
                        help="comma-separated cell names, 'grid', 'extra', 'shapes' or 'all' "
                             "(default: grid and extra)")
    parser.add_argument("--preset", choices=("quick",),
                        help="quick: the six runs of QUICK (cell and seed), instead of --cells "
                             "and --seeds")
    parser.add_argument("--config", default="default", help="run config: demo, default or a YAML file")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, help="feature cache folder (default WORK/feature-cache)")
    parser.add_argument("--json", type=Path, help="write every row here")
    parser.add_argument("--keep", action="store_true", help="keep each cell's benchmark and outputs")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs at a time, each in a process of its own with its share of the "
                             "cores (default 1); the figures are the same either way")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")

    try:
        runs = select_runs(args.cells, args.seeds, preset=args.preset)
    except ValueError as err:
        parser.error(str(err))
    params = params_from_run_config(load_run_config(args.config))
    cache = args.cache or args.work / "feature-cache"
    rows, start = [], time.perf_counter()
    jobs = [(args.src, cell, seed, args.work, params, cache, args.device, args.keep)
            for cell, seed in runs]
    for (_, cell, seed, *_), row in zip(jobs, run_rows(jobs, args.parallel)):
        rows.append(row)
        print(f"{cell.name} seed {seed}: {row['label_accuracy']['raw']:.3f} -> "
              f"{row['label_accuracy']['cleaned']:.3f}, {row['seconds']['total']:.0f} s "
              f"(ood_scores {row['seconds']['ood_scores']:.0f} s, clean_labels "
              f"{row['seconds']['clean_labels']:.0f} s), "
              f"bars {row['bars']}", flush=True)
        if args.json:  # rewritten after every run: a run cut off keeps what it measured
            from animal_assets.core.atomic import write_json

            write_json(args.json, {"rows": rows, "seconds": round(time.perf_counter() - start, 1)})
    print()
    print(table(rows))
    print()
    print(peers_table(rows))
    print(peers_summary(rows))
    print(f"\n{len(rows)} runs in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared parts of the speed benchmarks: the result table, the machine label, worker processes.

Every benchmark prints one markdown table with the columns ``figure | ours | baseline | ratio |
machine``; ``ratio`` is always "how many times better ours is" (baseline / ours for times and
memory, ours / baseline for throughputs and scores), so a ratio above 1 favours ours.

Methods whose peak memory is reported run in a fresh worker process each (the benchmark script
re-invoked with ``--worker``), so one method's allocations never count against another's.
"""
from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import platform
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    # The scripts run as files (python benchmarks/bench_x.py), not as an installed package.
    sys.path.insert(0, str(ROOT))

COLUMNS = ("figure", "ours", "baseline", "ratio", "machine")
RESULT_PREFIX = "RESULT "


def top_overlap(a, b, share: float = 0.10) -> float:
    """Share of the top-``share`` rows by score ``a`` (N,) that are also top by score ``b`` (N,)."""
    import numpy as np

    m = max(1, int(share * len(a)))
    return len(np.intersect1d(np.argsort(-a)[:m], np.argsort(-b)[:m])) / m


def cpu_model() -> str:
    """The CPU's model name as lscpu / /proc/cpuinfo give it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def machine_label(device: str) -> str:
    """Short description of where a figure was measured, e.g. ``AMD EPYC, 2 cores, cpu``."""
    label = f"{cpu_model()}, {cpu_cores()} cores"
    if device.startswith("cuda"):
        import torch

        label = f"{torch.cuda.get_device_name(torch.device(device))} + {label}"
    return f"{label}, {device}"


def load_average() -> float:
    """The 1-minute load average (0.0 where the OS does not report one)."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


def print_header(title: str) -> None:
    """Print the benchmark's title with the date and the load, which skews CPU timings."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load = load_average()
    note = f" (> 1.5: other processes compete for the {cpu_cores()} cores)" if load > 1.5 else ""
    print(f"## {title}\n\n{now}, load average {load:.2f}{note}\n", flush=True)


def fmt(value: float) -> str:
    """A number with four significant digits; whole numbers from 1,000 up."""
    return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def print_table(rows: list[tuple[str, float, float, float]], machine: str) -> None:
    """Print ``(figure, ours, baseline, ratio)`` rows as one markdown table."""
    print("| " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * len(COLUMNS))
    for figure, ours, baseline, ratio in rows:
        print(f"| {figure} | {fmt(ours)} | {fmt(baseline)} | {ratio:.3g} | {machine} |")
    print(flush=True)


def report(result: dict) -> None:
    """Worker side: hand the result dict back to the parent on stdout."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


#: Whether :func:`run_worker` runs a worker in this process rather than a fresh Python. A
#: script sets it for ``--quick``, a check that it still runs: its workers then share imports,
#: threads and caches, so the quick figures are no measurement. A full run isolates each worker.
IN_PROCESS = False


def run_here(script: str, args: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    """``script ARGS`` run as ``__main__`` in this process, stdout captured, like a subprocess
    (an exception is a failed run, its repr on stderr)."""
    out = io.StringIO()
    saved_argv, saved_env = sys.argv, dict(os.environ)
    sys.argv = [script, *args]
    os.environ.update(env or {})
    code = 0
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
    except Exception as err:  # reported as a failed worker, as a subprocess would be
        return subprocess.CompletedProcess(sys.argv, 1, out.getvalue(), repr(err))
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([script, *args], code, out.getvalue(), "")


def run_worker(script: str, args: list[str], *, env: dict | None = None) -> dict:
    """Run ``script --worker ...`` in a fresh Python (in this one under :data:`IN_PROCESS`)
    and return the dict it reported.

    Raises
    ------
    RuntimeError
        When the worker fails or reports nothing; its output is included.
    """
    if IN_PROCESS:
        proc = run_here(script, args, env)
    else:
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                              env={**os.environ, **(env or {})}, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"benchmarks: worker {Path(script).name} {' '.join(args)} failed with exit code "
            f"{proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
            f"{proc.stderr[-4000:]}"
        )
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def pick_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other names pass through."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_dims(dims: int | None, n_features: int) -> None:
    if dims is None:
        return
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= n_features:
        raise ValueError(
            f"project_features: dims must be None or an int in 1..D={n_features}, got {dims!r}"
        )


def project_features(features, dims: int, *, device="auto"):
    """Unit-normalised rows projected onto their top ``dims`` principal axes, re-normalised.

    The axes are the leading eigenvectors (``torch.linalg.eigh``, float64) of the D x D
    second-moment matrix ``X.T @ X / N`` of the unit rows ``X``: the uncentred covariance. Cosine
    similarity is an uncentred inner product, and these axes give the best rank-``dims``
    approximation of the cosine matrix ``X @ X.T``; centring would instead compare directions
    around the mean, which on EfficientNet features ruins the ranking of the demo's outliers.
    Each axis's sign is fixed so that its largest-magnitude entry is positive, which makes the
    output independent of the eigen-solver's sign choice. All-zero rows stay all-zero.

    Parameters
    ----------
    features : np.ndarray, shape (N, D)
        One embedding per row.
    dims : int
        Number of axes kept, 1..D.
    device : str or torch.device
        ``"auto"`` picks CUDA when available.

    Returns
    -------
    np.ndarray, float32, shape (N, dims)
        Rows of unit length (or zero).
    """
    import numpy as np
    import torch

    from animal_assets.core.device import resolve_device

    if not isinstance(features, np.ndarray) or features.ndim != 2:
        raise ValueError(
            f"ood.py: features must be a 2-D numpy array (N, D), got {getattr(features, 'shape', type(features))}"
        )
    if not np.isfinite(features).all():
        raise ValueError("ood.py: features contain NaN or infinity")
    _check_dims(dims, features.shape[1])
    dev = resolve_device(device)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32), device=dev)
            x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)
            second_moment = (x.T @ x).double() / max(len(x), 1)
            _, vectors = torch.linalg.eigh(second_moment)
            axes = vectors[:, -dims:].flip(1)
            peak = axes.abs().argmax(dim=0)
            axes = axes * torch.sign(axes[peak, torch.arange(dims, device=dev)])
            y = x @ axes.float()
            y = y / torch.linalg.vector_norm(y, dim=1, keepdim=True).clamp_min(1e-12)
            return y.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32

"""Wall time and peak resident memory of one pipeline step.

On Linux the process's peak RSS (VmHWM) can be reset by writing "5" to /proc/self/clear_refs,
which gives a per-step peak even when all steps run in one process. Elsewhere the figure is the
process's lifetime peak (from ``resource.getrusage``).
"""
from __future__ import annotations

import contextlib
import resource
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass
class StepStats:
    seconds: float = 0.0
    peak_rss_mb: float = 0.0


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (``VmRSS``, ``VmHWM``) in MiB; None without /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_mb() -> float:
    """The process's current resident memory in MiB (0.0 where /proc is missing)."""
    return _status_mb("VmRSS") or 0.0


def peak_rss_mb() -> float:
    """The process's peak resident memory in MiB since the last reset."""
    peak = _status_mb("VmHWM")
    if peak is not None:
        return peak
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


@contextlib.contextmanager
def measure() -> Iterator[StepStats]:
    """Measure the wall time and peak memory of the block into the yielded StepStats."""
    stats = StepStats()
    _reset_peak()
    start = time.perf_counter()
    try:
        yield stats
    finally:
        stats.seconds = time.perf_counter() - start
        stats.peak_rss_mb = peak_rss_mb()

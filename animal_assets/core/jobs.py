"""How many threads the CPU-bound steps use: ``ANIMAL_ASSETS_JOBS`` where set, else one per CPU
core. The steps that use it split their work into independent parts and combine the results in
order, so what they compute does not depend on it."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

#: Environment variable: how many threads a step runs at once (default: one per CPU core).
JOBS_VARIABLE = "ANIMAL_ASSETS_JOBS"

T = TypeVar("T")
R = TypeVar("R")


def cpu_cores() -> int:
    """CPU cores this process may run on (its affinity where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def core_share(processes: int) -> int:
    """The threads of each of ``processes`` processes that run side by side: its share of the
    cores, at least one."""
    return max(1, cpu_cores() // processes)


def use_core_share(threads: int) -> None:
    """Keep this process to ``threads`` threads: PyTorch's, BLAS's and OpenMP's, and the steps'
    own (``ANIMAL_ASSETS_JOBS``). For a process started beside others (a pool's initializer);
    no figure depends on it."""
    import torch
    from threadpoolctl import threadpool_limits

    os.environ[JOBS_VARIABLE] = str(threads)
    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)


def default_jobs() -> int:
    """Threads at once: ``ANIMAL_ASSETS_JOBS`` where set, else one per CPU core."""
    given = os.environ.get(JOBS_VARIABLE, "").strip()
    if given:
        try:
            jobs = int(given)
        except ValueError:
            jobs = 0
        if jobs < 1:
            raise ValueError(f"{JOBS_VARIABLE}={given!r}: must be a whole number >= 1")
        return jobs
    return cpu_cores()


def map_ordered(fn: Callable[[T], R], parts: Iterable[T], *, jobs: int | None = None) -> Iterator[R]:
    """``fn`` of every part, in the parts' order, computed by up to ``jobs`` threads (None:
    :func:`default_jobs`). For NumPy work that releases the GIL; at most ``jobs`` results wait."""
    jobs = default_jobs() if jobs is None else jobs
    if jobs <= 1:
        yield from map(fn, parts)
        return
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        pending = []
        for part in parts:
            pending.append(pool.submit(fn, part))
            if len(pending) > jobs:
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()

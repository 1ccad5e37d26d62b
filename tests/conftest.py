"""Fixtures shared across test modules, and the thread share of each pytest-xdist worker."""
from __future__ import annotations

import fcntl
import os
import shutil

from animal_assets.core.jobs import core_share, cpu_cores  # os and threads only: no NumPy, no torch

# `make test` runs one pytest-xdist worker per core. Torch's and OpenBLAS's thread pools each
# start one thread per core in every worker, and workers that spin at OpenMP barriers on the
# same cores slow each other down more than they gain, so every worker (and every process it
# starts, which inherits the environment) gets its share of the cores. This runs before the
# tests import NumPy or torch. Tests that compare thread counts set theirs explicitly.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "ANIMAL_ASSETS_JOBS"):
        os.environ.setdefault(_variable, str(core_share(_WORKERS)))

import pytest  # noqa: E402

from tests.graph import TinyGraph, materialize_tiny, open_tiny  # noqa: E402


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto``: one worker per core this process may run on (not the host's core count)."""
    return cpu_cores()


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory, worker_id) -> TinyGraph:
    """The whole tiny graph, materialized once for the session. Tests only read it; a test that
    changes an input, the instance or an output works on ``tests.graph.fork(tiny_graph, ...)``.

    The pytest-xdist workers share it: the first to need it materializes it in the folder they
    all see, holding a lock, and the others wait for it and open it."""
    if worker_id == "master":
        return materialize_tiny(tmp_path_factory.mktemp("tiny-graph"))
    folder = tmp_path_factory.getbasetemp().parent / "tiny-graph"
    with open(folder.with_name("tiny-graph.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        graph = open_tiny(folder)
        if graph is None:  # not there, or a worker failed while it wrote it: start again
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            graph = materialize_tiny(folder)
    return graph

"""Fixtures shared across test modules."""
from __future__ import annotations

import pytest

from tests.graph import TinyGraph, materialize_tiny


@pytest.fixture(scope="session")
def tiny_graph(tmp_path_factory) -> TinyGraph:
    """The whole tiny graph, materialized once for the session. Tests only read it; a test that
    changes an input, the instance or an output works on ``tests.graph.fork(tiny_graph, ...)``."""
    return materialize_tiny(tmp_path_factory.mktemp("tiny-graph"))

"""Tests for the chunked column standardisation used by the probes."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.preprocessing import StandardScaler

from animal_assets.core import scaling
from animal_assets.core.scaling import ChunkedStandardScaler


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_sklearn_across_chunks(monkeypatch, dtype):
    monkeypatch.setattr(scaling, "CHUNK_ROWS", 7)  # many chunks, a ragged last one
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50, 6)) * [1, 10, 0.01, 5, 1, 1] + [0, 3, -2, 100, 0, 0]).astype(dtype)
    x[:, 4] = 2.5  # a constant column keeps scale 1
    ours = ChunkedStandardScaler().fit(x)
    ref = StandardScaler().fit(x)
    np.testing.assert_allclose(ours.mean_, ref.mean_, rtol=1e-6)
    np.testing.assert_allclose(ours.scale_, ref.scale_, rtol=1e-5)
    out = ours.transform(x)
    assert out.dtype == dtype and out is not x
    np.testing.assert_allclose(out, ref.transform(x), rtol=1e-4, atol=1e-5)
    assert np.all(out[:, 4] == 0)


def test_copy_false_scales_in_place_and_ints_become_floats():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    out = ChunkedStandardScaler(copy=False).fit_transform(x)
    assert out is x and np.allclose(x.mean(axis=0), 0, atol=1e-6) and np.allclose(x.std(axis=0), 1)
    ints = np.arange(12).reshape(4, 3)
    scaled = ChunkedStandardScaler(copy=False).fit_transform(ints)
    assert scaled.dtype == np.float64 and ints.dtype.kind == "i"


def test_rejects_wrong_shapes():
    scaler = ChunkedStandardScaler().fit(np.ones((3, 2)))
    with pytest.raises(ValueError, match="scaling.py: expected 2 columns"):
        scaler.transform(np.ones((3, 3)))
    with pytest.raises(ValueError, match="scaling.py: expected a non-empty 2-D array"):
        ChunkedStandardScaler().fit(np.ones(3))

"""Column standardisation that does not multiply the memory of a wide feature matrix.

scikit-learn's ``StandardScaler`` computes the variance of float32 input in float64 over the
whole matrix at once, so on a wide fold of DS801 features its peak is a multiple of the input
(a float64 array takes twice the bytes of a float32 one). :class:`ChunkedStandardScaler`
accumulates the mean and variance in float64 over row chunks and scales in the input's dtype,
so it needs one copy of the input at most (none with ``copy=False``).
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

CHUNK_ROWS = 2048


class ChunkedStandardScaler(TransformerMixin, BaseEstimator):
    """Subtract each column's mean and divide by its standard deviation.

    Same result as ``sklearn.preprocessing.StandardScaler`` up to float rounding, including a
    scale of 1 for constant columns.

    Parameters
    ----------
    copy : bool
        False scales the array given to :meth:`transform` in place when it is a float array.
    """

    def __init__(self, copy: bool = True) -> None:
        self.copy = copy

    def fit(self, x: np.ndarray, y=None) -> ChunkedStandardScaler:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"scaling.py: expected a non-empty 2-D array, got shape {x.shape}")
        n = x.shape[0]
        total = np.zeros(x.shape[1], dtype=np.float64)
        for start in range(0, n, CHUNK_ROWS):
            total += x[start:start + CHUNK_ROWS].sum(axis=0, dtype=np.float64)
        mean = total / n
        squares = np.zeros(x.shape[1], dtype=np.float64)
        for start in range(0, n, CHUNK_ROWS):
            centred = x[start:start + CHUNK_ROWS].astype(np.float64) - mean
            squares += np.einsum("ij,ij->j", centred, centred)
        std = np.sqrt(squares / n)
        # The rule StandardScaler uses for (near-)constant columns: leave them unscaled.
        tiny = std < 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
        self.mean_ = mean
        self.scale_ = np.where(tiny, 1.0, std)
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"scaling.py: expected {self.n_features_in_} columns, got shape {x.shape}")
        dtype = x.dtype if x.dtype in (np.float32, np.float64) else np.float64
        out = x if (not self.copy and x.dtype == dtype and x.flags.writeable) else x.astype(dtype)
        mean = self.mean_.astype(dtype)
        inv = (1.0 / self.scale_).astype(dtype)
        for start in range(0, len(out), CHUNK_ROWS):
            block = out[start:start + CHUNK_ROWS]
            block -= mean
            block *= inv
        return out

"""Random arrays from minivit's generators (``minivit.manual_seed`` makes them reproducible).

NumPy's ``Generator`` and ``cupy.random`` spell uniform sampling differently; this wraps both.
"""
from __future__ import annotations

from ..autograd import backend


def uniform01(shape, dtype, device: str = "cpu"):
    """Samples of U[0, 1) of the given shape and float dtype, on ``device``."""
    rng = backend.rng(device)
    if device == "cuda":
        return rng.random_sample(size=tuple(shape), dtype=dtype)
    return rng.random(size=tuple(shape), dtype=dtype)


def standard_normal(shape, dtype, device: str = "cpu"):
    """Samples of N(0, 1) of the given shape and float dtype, on ``device``."""
    return backend.rng(device).standard_normal(size=tuple(shape), dtype=dtype)


def bernoulli(shape, keep_prob: float, device: str = "cpu"):
    """A boolean array, True with probability ``keep_prob``."""
    import numpy as np  # noqa: PLC0415 (dtype constant only)

    return uniform01(shape, np.float32, device) < keep_prob

"""Weight initialisation, in place on a tensor's array (PyTorch's ``torch.nn.init`` names).

Every function fills ``t.data`` from minivit's generator (so ``minivit.manual_seed`` makes a
model's initial weights reproducible) and returns ``t``::

    nn.init.trunc_normal_(m.weight, std=0.02)
    nn.init.zeros_(m.bias)
"""
from __future__ import annotations

import math

import numpy as np

from ..autograd.tensor import Tensor
from . import _random


def _fill(t: Tensor, values) -> Tensor:
    """Write ``values`` (same shape) into ``t``'s array in place and return ``t``."""
    t.data[...] = values.astype(t.dtype, copy=False)
    return t


def _sample_dtype(t: Tensor):
    return np.float64 if t.dtype == np.float64 else np.float32


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    """The gain PyTorch recommends for a non-linearity (``"relu"``: sqrt(2), ...)."""
    if nonlinearity in ("linear", "identity", "sigmoid") or nonlinearity.startswith("conv"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def _calculate_fan_in_and_fan_out(t: Tensor) -> tuple[int, int]:
    """fan_in = size(1) * receptive field, fan_out = size(0) * receptive field."""
    if t.ndim < 2:
        raise ValueError(f"fan in and fan out need a tensor with at least 2 dimensions, "
                         f"got shape {t.shape}")
    receptive = int(np.prod(t.shape[2:])) if t.ndim > 2 else 1
    return t.shape[1] * receptive, t.shape[0] * receptive


def _fan(t: Tensor, mode: str) -> int:
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return fan_in if mode == "fan_in" else fan_out


def uniform_(t: Tensor, a: float = 0.0, b: float = 1.0) -> Tensor:
    """Fill with U(a, b)."""
    u = _random.uniform01(t.shape, _sample_dtype(t), t.device)
    return _fill(t, a + (b - a) * u)


def normal_(t: Tensor, mean: float = 0.0, std: float = 1.0) -> Tensor:
    """Fill with N(mean, std^2)."""
    z = _random.standard_normal(t.shape, _sample_dtype(t), t.device)
    return _fill(t, mean + std * z)


def trunc_normal_(t: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0) -> Tensor:
    """Fill with N(mean, std^2) truncated to [a, b] (absolute bounds, as in PyTorch/timm).

    Exact by rejection: values outside [a, b] are redrawn until none is left.
    """
    if not a < b:
        raise ValueError(f"trunc_normal_: need a < b, got a={a}, b={b}")
    dtype = _sample_dtype(t)
    vals = mean + std * _random.standard_normal(t.shape, dtype, t.device)
    for _ in range(1000):
        bad = (vals < a) | (vals > b)
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        vals[bad] = mean + std * _random.standard_normal((n_bad,), dtype, t.device)
    else:  # [a, b] is far in a tail: rejection would never finish; clamp the few left
        vals = vals.clip(a, b)
    return _fill(t, vals)


def constant_(t: Tensor, val: float) -> Tensor:
    """Fill with ``val``."""
    t.data[...] = val
    return t


def zeros_(t: Tensor) -> Tensor:
    return constant_(t, 0.0)


def ones_(t: Tensor) -> Tensor:
    return constant_(t, 1.0)


def xavier_uniform_(t: Tensor, gain: float = 1.0) -> Tensor:
    """U(-a, a) with a = gain * sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio)."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return uniform_(t, -bound, bound)


def xavier_normal_(t: Tensor, gain: float = 1.0) -> Tensor:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out))."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(t)
    return normal_(t, 0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def kaiming_uniform_(t: Tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu") -> Tensor:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan) (He et al.)."""
    gain = calculate_gain(nonlinearity, a)
    bound = gain * math.sqrt(3.0 / _fan(t, mode))
    return uniform_(t, -bound, bound)


def kaiming_normal_(t: Tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu") -> Tensor:
    """N(0, std^2) with std = gain / sqrt(fan) (He et al.)."""
    gain = calculate_gain(nonlinearity, a)
    return normal_(t, 0.0, gain / math.sqrt(_fan(t, mode)))


__all__ = ["calculate_gain", "uniform_", "normal_", "trunc_normal_", "constant_", "zeros_",
           "ones_", "xavier_uniform_", "xavier_normal_", "kaiming_uniform_", "kaiming_normal_"]

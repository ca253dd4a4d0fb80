"""Dropout and drop-path (stochastic depth); masks come from minivit's generator."""
from __future__ import annotations

from ...autograd import backend
from ...autograd.function import Function
from ...autograd.tensor import Tensor
from .. import _random

xp_of = backend.get_array_module


class Dropout(Function):
    """y = x * m / (1 - p) with m ~ Bernoulli(1 - p) (inverted dropout); dx = g * m / (1 - p)."""

    def forward(ctx, x, p=0.5):
        keep = _random.bernoulli(x.shape, 1.0 - p, backend.device_of(x))  # bool: 1 byte each
        ctx.scale = 1.0 / (1.0 - p)  # a Python float keeps x's dtype
        ctx.save_for_backward(keep)
        return x * keep * ctx.scale

    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        return g * keep * ctx.scale


def _check_p(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: probability must be in [0, 1], got {p}")
    return float(p)


def dropout(x, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only).

    ``F.dropout(x, 0.1, model.training)``; identity when ``training`` is False or p == 0.
    ``inplace`` is accepted for PyTorch compatibility and ignored (a new tensor is returned).
    """
    p = _check_p("dropout", p)
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return Dropout.apply(x, p=p)


def drop_path(x, drop_prob: float = 0.0, training: bool = False, scale_by_keep: bool = True):
    """Stochastic depth (timm): drop the whole residual branch of each sample with probability
    ``drop_prob``; kept samples are scaled by 1/(1 - drop_prob) when ``scale_by_keep``.

    One Bernoulli draw per sample (axis 0), broadcast over the other axes.
    """
    drop_prob = _check_p("drop_path", drop_prob)
    if not training or drop_prob == 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = _random.bernoulli(shape, keep_prob, x.device).astype(x.dtype)
    if keep_prob > 0.0 and scale_by_keep:
        mask = mask / x.dtype.type(keep_prob)
    return x * Tensor(mask)

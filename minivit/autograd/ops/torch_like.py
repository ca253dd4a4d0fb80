"""Ops a PyTorch user reaches for: ``clone``, ``repeat``, ``masked_fill``, ``norm``, and
``max``/``min`` over a ``dim`` returning ``(values, indices)``.

Each is a small Function (forward beside backward) or a composition of existing ops, so its
gradient is the composition's.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .. import backend
from ..function import Function

xp_of = backend.get_array_module


class Clone(Function):
    """A copy of x with its own memory; the gradient passes through unchanged."""

    def forward(ctx, x):
        return x.copy()

    def backward(ctx, g):
        return g


class Repeat(Function):
    """PyTorch's ``repeat`` (NumPy's ``tile``): x repeated ``reps[i]`` times along axis i,
    new leading axes first. Output element ``(k0*n0 + j0, k1*n1 + j1, ...)`` is
    ``x[j0, j1, ...]``, so dx sums g over the copies k: view g as ``(r0, n0, r1, n1, ...)`` and
    sum the r axes."""

    def forward(ctx, x, reps=()):
        ctx.shape = x.shape
        ctx.full = (1,) * (len(reps) - x.ndim) + x.shape   # x with its new leading axes
        ctx.reps = reps
        return xp_of(x).tile(x.reshape(ctx.full), reps)

    def backward(ctx, g):
        pairs = [d for r, n in zip(ctx.reps, ctx.full) for d in (r, n)]
        return g.reshape(pairs).sum(axis=tuple(range(0, len(pairs), 2))).reshape(ctx.shape)


class MaskedFill(Function):
    """``x`` with ``value`` where ``mask`` is True; the gradient flows only where it is False."""

    def forward(ctx, x, mask=None, value=0.0):
        ctx.save_for_backward(mask)
        xp = xp_of(x)
        return xp.where(mask, xp.asarray(value, dtype=x.dtype), x)

    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return g * ~mask


# --- the functional names ---------------------------------------------------------------------

def clone(x):
    """A copy that does not share memory with ``x`` (differentiable, like ``torch.clone``)."""
    return Clone.apply(x)


def repeat(x, *sizes):
    """``torch.Tensor.repeat``: ``repeat(x, 2, 1)`` tiles x twice along dim 0.

    >>> repeat(minivit.tensor([1., 2.]), 2)   # tensor([1., 2., 1., 2.])
    """
    sizes = tuple(sizes[0]) if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)) else sizes
    if len(sizes) < x.ndim or any(not isinstance(r, int) or r < 0 for r in sizes):
        raise ValueError(f"repeat: expected at least {x.ndim} non-negative integers (one per "
                         f"dimension of shape {x.shape}), got {sizes}")
    return Repeat.apply(x, reps=tuple(sizes))


def masked_fill(x, mask, value: float):
    """``torch.Tensor.masked_fill``: ``value`` where the boolean ``mask`` (broadcastable to x's
    shape) is True, x elsewhere.

    >>> masked_fill(scores, ~allowed, float("-inf"))     # attention masking
    """
    from ..tensor import Tensor  # noqa: PLC0415

    m = mask.data if isinstance(mask, Tensor) else mask
    xp = xp_of(x.data)
    m = xp.asarray(m)
    if m.dtype != bool:
        raise TypeError(f"masked_fill: the mask must be boolean, got dtype {m.dtype}")
    try:
        m = xp.broadcast_to(m, x.shape)
    except ValueError:
        raise ValueError(f"masked_fill: a mask of shape {tuple(m.shape)} does not broadcast to "
                         f"the tensor's shape {x.shape}") from None
    if isinstance(value, Tensor):
        value = value.item()
    return MaskedFill.apply(x, mask=m, value=value)


def norm(x, p=2, dim=None, keepdim: bool = False):
    """The p-norm over ``dim`` (all elements when None), as ``torch.norm``/``linalg.vector_norm``:
    ``(sum |x|^p)^(1/p)``; ``p=2`` (or ``"fro"``) is ``sqrt(sum x^2)``, ``p=inf`` ``max |x|``.

    >>> norm(minivit.tensor([3., 4.]))                    # tensor(5.)
    """
    from . import abs, max, min, pow, sqrt, sum  # noqa: PLC0415,A004

    if p == "fro":
        p = 2
    if isinstance(p, str) or not isinstance(p, (int, float)) or (p <= 0 and not math.isinf(p)):
        raise ValueError(f"norm: p must be a positive number, inf, -inf or 'fro', got {p!r}")
    if p == 2:
        return sqrt(sum(x * x, dim=dim, keepdim=keepdim))
    if p == 1:
        return sum(abs(x), dim=dim, keepdim=keepdim)
    if math.isinf(p):
        reduce = max if p > 0 else min
        return reduce(abs(x), axis=dim, keepdims=keepdim)
    return pow(sum(pow(abs(x), p), dim=dim, keepdim=keepdim), 1.0 / p)


class ValuesIndices(NamedTuple):
    """What ``max``/``min`` over one ``dim`` return, as ``torch.return_types.max``:
    ``values, indices = x.max(dim=1)``."""

    values: object
    indices: object


def reduce_with_indices(x, op: str, dim: int, keepdim: bool) -> ValuesIndices:
    """``(values, indices)`` of the max or min over one dimension (indices are not
    differentiable; values are the ``max``/``min`` op's, ties splitting the gradient)."""
    from ..tensor import Tensor  # noqa: PLC0415
    from .reduce import Max, Min, normalize_axis  # noqa: PLC0415

    if not isinstance(dim, int):
        raise TypeError(f"{op}: dim must be one integer to return (values, indices), got "
                        f"{dim!r}; use axis= to reduce over several axes (values only)")
    (axis,) = normalize_axis(dim, x.ndim)
    values = (Max if op == "max" else Min).apply(x, axis=axis, keepdims=keepdim)
    arg = x.data.argmax(axis=axis) if op == "max" else x.data.argmin(axis=axis)
    if keepdim:
        arg = xp_of(arg).expand_dims(arg, axis)
    return ValuesIndices(values, Tensor._from_op(arg, False))

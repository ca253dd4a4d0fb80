"""Reductions and the softmax family.

A reduction's backward spreads the gradient back over the reduced axes: it first restores the
reduced axes as size 1 (``keepdims`` shape), then broadcasts.
"""
from __future__ import annotations

from .. import backend
from ..function import Function

xp_of = backend.get_array_module


def normalize_axis(axis, ndim: int) -> tuple[int, ...]:
    """``None`` -> all axes; an int or a tuple -> a sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < (ndim or 1):
            raise ValueError(f"axis {a} is out of range for a tensor with {ndim} dimensions")
        out.append(a % ndim if ndim else 0)
    return tuple(sorted(set(out)))


def _keep(g, x_shape, axes, keepdims):
    """The incoming gradient reshaped with the reduced axes kept as size 1."""
    if keepdims:
        return g
    shape = [1 if i in axes else n for i, n in enumerate(x_shape)]
    return g.reshape(shape)


class Sum(Function):
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = normalize_axis(axis, x.ndim), keepdims, x.shape
        return x.sum(axis=ctx.axes, keepdims=keepdims)

    def backward(ctx, g):
        g = _keep(g, ctx.shape, ctx.axes, ctx.keepdims)
        return xp_of(g).broadcast_to(g, ctx.shape)


class Mean(Function):
    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims, ctx.shape = normalize_axis(axis, x.ndim), keepdims, x.shape
        ctx.count = 1
        for a in ctx.axes:
            ctx.count *= x.shape[a]
        return x.mean(axis=ctx.axes, keepdims=keepdims)

    def backward(ctx, g):
        g = _keep(g, ctx.shape, ctx.axes, ctx.keepdims) * (1.0 / ctx.count)
        return xp_of(g).broadcast_to(g, ctx.shape)


class Max(Function):
    """Max over axes; tied maxima split the gradient evenly."""

    reduce = "max"

    def forward(ctx, x, axis=None, keepdims=False):
        ctx.axes, ctx.keepdims = normalize_axis(axis, x.ndim), keepdims
        if x.size == 0:
            raise ValueError(f"{ctx.op_name()} of an empty tensor")
        y = getattr(x, ctx.reduce)(axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(x, y)
        return y if keepdims else y.reshape([n for i, n in enumerate(y.shape) if i not in ctx.axes])

    def backward(ctx, g):
        x, y = ctx.saved_tensors
        mask = x == y
        count = mask.sum(axis=ctx.axes, keepdims=True)
        return _keep(g, x.shape, ctx.axes, ctx.keepdims) * mask / count.astype(g.dtype)


class Min(Max):
    reduce = "min"


class Var(Function):
    """Variance ``sum((x - mean)^2) / (N - ddof)``; d/dx = 2 (x - mean) / (N - ddof)."""

    def forward(ctx, x, axis=None, ddof=0, keepdims=False):
        ctx.axes, ctx.keepdims = normalize_axis(axis, x.ndim), keepdims
        n = 1
        for a in ctx.axes:
            n *= x.shape[a]
        ctx.denom = n - ddof
        if ctx.denom <= 0:
            raise ValueError(f"var: {n} elements with ddof={ddof} leave no degrees of freedom")
        d = x - x.mean(axis=ctx.axes, keepdims=True)
        ctx.save_for_backward(d)
        return (d * d).sum(axis=ctx.axes, keepdims=keepdims) / ctx.denom

    def backward(ctx, g):
        (d,) = ctx.saved_tensors
        return _keep(g, d.shape, ctx.axes, ctx.keepdims) * d * (2.0 / ctx.denom)


class LogSumExp(Function):
    """log sum exp(x), computed as m + log sum exp(x - m); d/dx = softmax(x)."""

    def forward(ctx, x, axis=None, keepdims=False):
        xp = xp_of(x)
        ctx.axes, ctx.keepdims = normalize_axis(axis, x.ndim), keepdims
        m = x.max(axis=ctx.axes, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0)
        s = xp.log(xp.exp(x - m).sum(axis=ctx.axes, keepdims=True)) + m
        ctx.save_for_backward(x, s)
        return s if keepdims else s.reshape([n for i, n in enumerate(s.shape) if i not in ctx.axes])

    def backward(ctx, g):
        x, s = ctx.saved_tensors
        return _keep(g, x.shape, ctx.axes, ctx.keepdims) * xp_of(x).exp(x - s)


def softmax_value(x, axis: int = -1):
    """softmax(x)_i = exp(x_i - m) / Σ_j exp(x_j - m) along ``axis``, m = max_j x_j (the same
    number as exp(x_i) / Σ exp(x_j), without overflow). A row whose entries are all -inf (every
    key masked in attention) gives 0, not NaN. The one softmax: attention uses it too."""
    xp = xp_of(x)
    m = x.max(axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, 0)
    e = xp.exp(x - m)
    total = e.sum(axis=axis, keepdims=True)
    return e / xp.where(total > 0, total, 1)


def softmax_grad(y, g, axis: int = -1):
    """dx of y = softmax(x) from dy = g: dy_i/dx_j = y_i (δ_ij - y_j), so
    dx_j = Σ_i g_i y_i (δ_ij - y_j) = y_j (g_j - Σ_i g_i y_i)."""
    return y * (g - (g * y).sum(axis=axis, keepdims=True))


def log_softmax_value(x, axis: int = -1):
    """log softmax(x) = z - log Σ exp(z), z = x - max(x) (the max cancels out)."""
    xp = xp_of(x)
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


class Softmax(Function):
    """y = softmax(x) along ``axis`` (``softmax_value``); dx = y (g - Σ g y) (``softmax_grad``).
    Fast body: minivit/kernels/cpu_reduce.py (rows in blocks on all cores; a CUDA kernel)."""

    def forward(ctx, x, axis=-1):
        y = softmax_value(x, axis)
        ctx.axis = axis
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return softmax_grad(y, g, ctx.axis)


class LogSoftmax(Function):
    """y = x - log Σ exp(x); dy_i/dx_j = δ_ij - softmax(x)_j, so dx = g - exp(y) Σ g."""

    def forward(ctx, x, axis=-1):
        y = log_softmax_value(x, axis)
        ctx.axis = axis
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g - xp_of(y).exp(y) * g.sum(axis=ctx.axis, keepdims=True)


# --- the functional names -------------------------------------------------------------------
# Each takes NumPy's ``axis=``/``keepdims=`` or PyTorch's ``dim=``/``keepdim=`` (one of each pair).

def axis_of(op: str, axis, dim, keepdims=False, keepdim=None):
    """The axis and keepdims of a call that used either spelling; an error if it used both."""
    if axis is not None and dim is not None:
        raise TypeError(f"{op}: got axis={axis!r} and dim={dim!r}; give one of them")
    if keepdim is not None and keepdims:
        raise TypeError(f"{op}: got keepdims and keepdim; give one of them")
    return (dim if dim is not None else axis), bool(keepdims or keepdim)


def sum(x, axis=None, keepdims=False, *, dim=None, keepdim=None):  # noqa: A001
    axis, keepdims = axis_of("sum", axis, dim, keepdims, keepdim)
    return Sum.apply(x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = axis_of("mean", axis, dim, keepdims, keepdim)
    return Mean.apply(x, axis=axis, keepdims=keepdims)


def max(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """Max of all elements; over ``dim`` (PyTorch) the named pair ``(values, indices)``, as
    ``torch.max(x, dim)``; over ``axis`` (NumPy: an int or a tuple) the values only.

    >>> values, indices = minivit.max(x, dim=1)
    """
    if dim is not None:
        from .torch_like import reduce_with_indices  # noqa: PLC0415

        axis_of("max", axis, dim)
        return reduce_with_indices(x, "max", dim, bool(keepdim or keepdims))
    return Max.apply(x, axis=axis, keepdims=bool(keepdim or keepdims))


def min(x, dim=None, keepdim=False, *, axis=None, keepdims=None):  # noqa: A001
    """Min; ``(values, indices)`` over ``dim``, values only over ``axis`` (see ``max``)."""
    if dim is not None:
        from .torch_like import reduce_with_indices  # noqa: PLC0415

        axis_of("min", axis, dim)
        return reduce_with_indices(x, "min", dim, bool(keepdim or keepdims))
    return Min.apply(x, axis=axis, keepdims=bool(keepdim or keepdims))


def logsumexp(x, axis=None, keepdims=False, *, dim=None, keepdim=None):
    axis, keepdims = axis_of("logsumexp", axis, dim, keepdims, keepdim)
    return LogSumExp.apply(x, axis=axis, keepdims=keepdims)


def softmax(x, axis=-1, *, dim=None):
    """Softmax over ``axis`` (or ``dim``): ``minivit.softmax(x, dim=1)``."""
    return Softmax.apply(x, axis=dim if dim is not None else axis)


def log_softmax(x, axis=-1, *, dim=None):
    return LogSoftmax.apply(x, axis=dim if dim is not None else axis)


def var(x, axis=None, ddof=0, keepdims=False, *, dim=None, keepdim=None, correction=None):
    """Variance as NumPy defines it (``ddof=0``: biased; ``ddof=1``: unbiased). PyTorch's
    ``correction=`` is accepted for ``ddof``; note that torch's default is 1, minivit's 0."""
    axis, keepdims = axis_of("var", axis, dim, keepdims, keepdim)
    return Var.apply(x, axis=axis, ddof=ddof if correction is None else correction,
                     keepdims=keepdims)


def std(x, axis=None, ddof=0, keepdims=False, *, dim=None, keepdim=None, correction=None):
    """Standard deviation: ``sqrt(var(x))``."""
    from .elementwise import sqrt  # noqa: PLC0415

    return sqrt(var(x, axis, ddof, keepdims, dim=dim, keepdim=keepdim, correction=correction))

"""Fast body of Softmax: rows in cache-sized blocks on all cores (``softmax_rows``, which the
attention fast body uses too), and one CUDA reduction and kernel for the GPU's backward."""
from __future__ import annotations

from ..autograd import backend
from ..autograd.ops.reduce import Softmax, softmax_grad, softmax_value
from . import cuda, cuda_rows, parallel, register

xp_of = backend.get_array_module


def softmax_rows(s, out=None):
    """softmax along each row of a 2-D s (rows, keys), a block of rows at a time; the same
    numbers as ``softmax_value(s, -1)`` (a row of -inf only gives 0)."""
    if cuda.enabled(s):   # one launch (cuda_rows); the plain path's out is not needed
        return cuda_rows.softmax_rows(xp_of(s).ascontiguousarray(s))
    xp = xp_of(s)
    p = out[0] if out is not None else xp.empty_like(s)
    m = parallel.row_max(s)[:, None]
    # a fully masked row has max -inf: take 0 there, so exp(-inf - 0) = 0 (the check is a
    # small pass on the CPU; on the GPU it would cost a device sync, so it always masks)
    finite = backend.device_of(s) == "cpu" and bool(xp.isfinite(m).all())
    if not finite:
        m = xp.where(xp.isfinite(m), m, 0)
    xp.subtract(s, m, out=p)
    xp.exp(p, out=p)
    den = parallel.row_sums(p)[:, None]  # >= 1 (the max itself gives e^0) unless fully masked
    p *= 1 / (den if finite else xp.where(den > 0, den, 1))
    return p


def softmax_rows_backward(p, dp, out=None):
    """dS = P (dP - Σ_k dP P) along each row of 2-D arrays."""
    if cuda.enabled(p):
        return cuda.softmax_backward(p, dp, -1)
    xp = xp_of(p)
    ds = out[0] if out is not None else xp.empty_like(p)
    xp.subtract(dp, xp.einsum("ij,ij->i", dp, p)[:, None], out=ds)
    ds *= p
    return ds


def softmax_last_axis(x):
    """softmax along the last axis of any array, the rows blocked on all cores."""
    x2 = x.reshape(-1, x.shape[-1])
    return parallel.blockwise(softmax_rows, x2, out=parallel.empty_like(x2)).reshape(x.shape)


def softmax_last_axis_backward(p, dp):
    p2, dp2 = p.reshape(-1, p.shape[-1]), dp.reshape(-1, p.shape[-1])
    if cuda.enabled(p):
        return cuda.softmax_backward(p2, dp2, -1).reshape(p.shape)
    return parallel.blockwise(softmax_rows_backward, p2, dp2,
                              out=parallel.empty_like(p2)).reshape(p.shape)


@register(Softmax)
class SoftmaxFast(Softmax):
    def forward(ctx, x, axis=-1):
        last = x.ndim >= 1 and axis in (-1, x.ndim - 1) and x.size > 0
        y = softmax_last_axis(x) if last else softmax_value(x, axis)
        ctx.axis, ctx.last = axis, last
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        if ctx.last:
            return softmax_last_axis_backward(y, xp_of(g).ascontiguousarray(g))
        if cuda.enabled(g):
            return cuda.softmax_backward(y, g, ctx.axis)
        return softmax_grad(y, g, ctx.axis)

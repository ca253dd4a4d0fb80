"""Fast bodies of max and average pooling (the reference bodies are in
``minivit/nn/functional/pooling.py``): the input copied once into the padded, batch-innermost
(C, Hp, Wp, N) layout of the fast NCHW convolution (long contiguous runs), then a loop over
the kh*kw kernel offsets combines one strided slice per offset; the backward adds the
gradient back with one strided slice addition per offset. Both loops run on blocks of
channels (``cpu_conv._channel_blocks``, as col2im's), shared among the CPU threads.
"""
from __future__ import annotations

import numpy as np

from ..autograd import backend
from ..nn.functional.pooling import AvgPool2d, MaxPool2d, avg_divisor, check_pool
from . import parallel, register
from .cpu_conv import Geometry, _channel_blocks, from_chwn, out_size, to_chwn

xp_of = backend.get_array_module


def _pool_geometry(x, kernel, stride, padding, dilation) -> Geometry:
    """Validate the pooling geometry and describe it as the fast conv does."""
    check_pool(x, kernel, padding, dilation)
    n, c, h, w = x.shape
    return Geometry(n, c, h, w, c, kernel[0], kernel[1], stride, padding, dilation, c,
                    out_size(h, kernel[0], stride[0], padding[0], dilation[0]),
                    out_size(w, kernel[1], stride[1], padding[1], dilation[1]))


def _offsets(geo: Geometry):
    """(k, rows, cols) for each kernel offset, k counting in the window's row-major order."""
    for i in range(geo.kh):
        for j in range(geo.kw):
            yield i * geo.kw + j, geo.rows(i), geo.cols(j)


def _add_back(geo: Geometry, contribution, like):
    """Adjoint of reading the windows: add ``contribution(k, chans)`` (its channels of
    (C, Ho, Wo, N)) back where offset k read it; return the NCHW gradient of the unpadded
    input."""
    ph, pw = geo.padding
    dxt = xp_of(like).zeros((geo.c, geo.h + 2 * ph, geo.w + 2 * pw, geo.n), dtype=like.dtype)

    def slab(chans):   # the threads write disjoint channels of dxt
        for k, rows, cols in _offsets(geo):
            dxt[chans, rows, cols, :] += contribution(k, chans)

    slabs = _channel_blocks(dxt, geo.ho * geo.wo * geo.n)
    parallel.for_each(slab, slabs, threaded=len(slabs) > 1)
    return from_chwn(dxt, padding=geo.padding)


@register(MaxPool2d)
class MaxPool2dFast(MaxPool2d):
    """The batch-innermost (C, H, W, N) layout of the fast conv: one strided slice per
    kernel offset, the index of the first maximum kept as one byte per output."""

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        geo = ctx.geo = _pool_geometry(x, kernel, stride, padding, dilation)
        xp = xp_of(x)
        xt = to_chwn(x, padding, value=-np.inf)
        out = xp.empty((geo.c, geo.ho, geo.wo, geo.n), dtype=x.dtype)
        arg = xp.zeros(out.shape, dtype=xp.uint8 if geo.kh * geo.kw <= 256 else xp.int32)

        def slab(chans):   # the threads fill disjoint channels of out and arg
            o, a = out[chans], arg[chans]
            for k, rows, cols in _offsets(geo):
                window = xt[chans, rows, cols, :]
                if k == 0:
                    o[...] = window
                else:  # arg = k where strictly greater (a tie keeps the first maximum); as k
                    # only grows, that is max(arg, k * better): faster than a masked copy
                    step = (window > o).astype(a.dtype)
                    step *= k
                    xp.maximum(a, step, out=a)
                    xp.maximum(o, window, out=o)        # (maximum propagates NaN)

        slabs = _channel_blocks(xt, geo.ho * geo.wo * geo.n)
        parallel.for_each(slab, slabs, threaded=len(slabs) > 1)
        ctx.save_for_backward(arg)
        return from_chwn(out)

    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        gt = to_chwn(g, (0, 0))
        # a product with the mask (faster than where); the winner of each window gets dy
        return _add_back(ctx.geo, lambda k, chans: gt[chans] * (arg[chans] == k), g)


@register(AvgPool2d)
class AvgPool2dFast(AvgPool2d):
    """The batch-innermost (C, H, W, N) layout of the fast conv: one strided slice added per
    kernel offset."""

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), count_include_pad=True,
                divisor_override=None):
        geo = ctx.geo = _pool_geometry(x, kernel, stride, padding, (1, 1))
        xp = xp_of(x)
        scale = avg_divisor((geo.h, geo.w), (geo.ho, geo.wo), kernel, stride, padding,
                            count_include_pad, divisor_override)
        ctx.scale = scale if np.isscalar(scale) else \
            xp.asarray(scale[:, :, None], dtype=x.dtype)      # (Ho, Wo, 1) against (C, Ho, Wo, N)
        xt = to_chwn(x, padding)
        total = xp.empty((geo.c, geo.ho, geo.wo, geo.n), dtype=x.dtype)

        def slab(chans):   # the threads fill disjoint channels of total
            t = total[chans]
            for k, rows, cols in _offsets(geo):
                window = xt[chans, rows, cols, :]
                if k == 0:
                    t[...] = window
                else:
                    xp.add(t, window, out=t)

        slabs = _channel_blocks(xt, geo.ho * geo.wo * geo.n)
        parallel.for_each(slab, slabs, threaded=len(slabs) > 1)
        return from_chwn(total * ctx.scale)

    def backward(ctx, g):
        gs = to_chwn(g, (0, 0)) * ctx.scale
        return _add_back(ctx.geo, lambda k, chans: gs[chans], g)



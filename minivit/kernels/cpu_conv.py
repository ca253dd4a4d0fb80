"""Fast body of the NCHW convolution (the reference body is in
``minivit/nn/functional/conv.py``), and the batch-innermost layout that pooling's fast bodies
use. Three paths, none with a conv algorithm of its own:

- General (groups 1): the input is copied to channels-last (N, H, W, C) and the one fast
  im2col and GEMM, ``cpu_conv_nhwc.conv_forward``, does the rest; the output is copied back.
- Depthwise (groups == in_channels > 1, out = k*in): no GEMM at all (a grouped GEMM with one
  input channel per group is many times slower on the CPU, Chainer #5403). The input is copied
  to channels-last and the one fast depthwise conv, ``cpu_conv_nhwc.depthwise_forward``, adds
  one elementwise product with a strided window per kernel offset (i, j); a channel multiplier
  k repeats each input channel k times first.
- Pointwise (1x1 kernel, stride 1, no padding, groups 1): no windows. The input is copied to
  (C, N, H*W), whose transposes move whole rows of H*W numbers, and one GEMM does the rest::

      out[o, (n, p)] = W[o, c] @ xt[c, (n, p)]        dW = dout @ xt^T        dxt = W^T @ dout

Grouped convolutions with 1 < groups < in_channels have no fast body: they run on the
reference body.
"""
from __future__ import annotations

from typing import NamedTuple

from ..autograd import backend
from ..autograd.flops import add_flops
from ..nn.functional.conv import Conv2d, _check_conv, out_size, window_slice
from . import parallel, register
from .cpu_conv_nhwc import conv_backward as conv_nhwc_backward
from .cpu_conv_nhwc import conv_forward as conv_nhwc_forward
from .cpu_conv_nhwc import depthwise_backward, depthwise_forward

xp_of = backend.get_array_module


class Geometry(NamedTuple):
    """Sizes of one conv (or pooling, with o = c): input n, c, h, w; output o, ho, wo."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    ho: int
    wo: int

    def rows(self, i: int) -> slice:
        """Padded-input rows that kernel row ``i`` reads, one per output row."""
        return window_slice(i, self.dilation[0], self.stride[0], self.ho)

    def cols(self, j: int) -> slice:
        return window_slice(j, self.dilation[1], self.stride[1], self.wo)


@register(Conv2d)
class Conv2dFast(Conv2d):
    """The module docstring's three paths: general, depthwise, pointwise."""

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                groups=1):
        _check_conv(x, weight, bias, padding, dilation, groups)
        (n, c, h, w), (o, _, kh, kw) = x.shape, weight.shape
        geo = Geometry(n, c, h, w, o, kh, kw, stride, padding, dilation, groups,
                       out_size(h, kh, stride[0], padding[0], dilation[0]),
                       out_size(w, kw, stride[1], padding[1], dilation[1]))
        ctx.geo, ctx.has_bias = geo, bias is not None
        ctx.depthwise = groups == c and groups > 1
        ctx.pointwise = (kh, kw, groups) == (1, 1, 1) and stride == (1, 1) and padding == (0, 0)
        if ctx.depthwise:
            return ctx.depthwise_forward(x, weight, bias, stride, padding, dilation)
        if ctx.pointwise:
            add_flops(2 * n * o * geo.ho * geo.wo * c)
            xt = to_cnl(x)                                           # (C, N*H*W)
            ctx.save_for_backward(xt, weight)
            return from_cnl(weight.reshape(o, c) @ xt, n, bias).reshape(n, o, h, w)
        if groups > 1:      # grouped, not depthwise: no fast body (no model uses one)
            ctx.grouped = True
            return super().forward(x, weight, bias, stride, padding, dilation, groups)
        # the one fast im2col: channels-last (cpu_conv_nhwc.conv_forward), on a copy of x
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
        y, cols, wm, ctx.nhwc_geo = conv_nhwc_forward(to_nhwc(x), weight, bias, stride, pads,
                                                      dilation)
        ctx.save_for_backward(cols, wm)
        return nhwc_to_nchw(y)

    def depthwise_forward(ctx, x, weight, bias, stride, padding, dilation):
        """groups == C: the one fast depthwise conv (``cpu_conv_nhwc.depthwise_forward``) on the
        channels-last copy of x; with a channel multiplier k, output channel c*k + m reads
        input channel c, so x's channels are repeated k times first."""
        k = weight.shape[0] // x.shape[1]
        xn = to_nhwc(x)
        if k > 1:
            xn = xp_of(x).repeat(xn, k, axis=3)
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
        out, xpad, taps, ctx.dw_geo = depthwise_forward(xn, weight, bias, stride, pads, dilation)
        ctx.save_for_backward(xpad, taps)
        return nhwc_to_nchw(out)

    def depthwise_backward(ctx, g):
        n, c, h, w = ctx.geo[:4]
        gx, gw, gb = depthwise_backward(to_nhwc(g), *ctx.saved_tensors, ctx.dw_geo,
                                        ctx.needs_input_grad)
        if gx is not None:
            if gx.shape[-1] != c:   # the k copies of each channel: their gradients add up
                gx = gx.reshape(n, h, w, c, -1).sum(axis=-1)
            gx = nhwc_to_nchw(gx)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)

    def backward(ctx, g):
        if ctx.depthwise:
            return ctx.depthwise_backward(g)
        if getattr(ctx, "grouped", False):
            return super().backward(g)
        if not ctx.pointwise:
            gx, gw, gb = conv_nhwc_backward(to_nhwc(g), *ctx.saved_tensors, ctx.nhwc_geo,
                                            ctx.needs_input_grad)
            gx = None if gx is None else nhwc_to_nchw(gx)
            return (gx, gw, gb) if ctx.has_bias else (gx, gw)
        xt, weight = ctx.saved_tensors       # pointwise: one GEMM on (C, N*H*W)
        geo, need = ctx.geo, ctx.needs_input_grad
        gt = to_cnl(g)                                              # (O, N*Ho*Wo)
        w2 = weight.reshape(geo.o, geo.c)
        gb = parallel.row_sums(gt) if ctx.has_bias and need[2] else None
        gw = (gt @ xt.T).reshape(weight.shape) if need[1] else None
        gx = from_cnl(w2.T @ gt, geo.n).reshape(g.shape[0], geo.c, geo.h, geo.w) if need[0] \
            else None
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


# --- the (C, H, W, N) working layout -------------------------------------------------------
# With the batch innermost, the window of one kernel offset, x[c, i::s, j::s, :], is made of
# runs of Wo*N contiguous numbers (stride 1) or N (stride 2) instead of Wo in NCHW: im2col,
# col2im and the depthwise multiply-adds then run at memory speed, not at numpy's per-row
# overhead. The price is one transposing copy of x, y, dy and dx each (a few percent).

def _threaded(a) -> bool:
    """Split this array's copies over the CPU threads? (Not on the GPU, not when small.)"""
    return backend.device_of(a) == "cpu" and a.size >= parallel.MIN_ELEMENTS


def to_chwn(x, padding, value: float = 0.0, block: int = 16):
    """NCHW -> (C, H + 2 ph, W + 2 pw, N), padded with ``value``: one transposing copy, done
    ``block`` images at a time (a cache-friendly transpose: 3-4x faster than one big copy),
    the channels shared among the CPU threads. Only the border is filled with ``value``.
    On the GPU all images at once (one copy kernel, whatever the batch)."""
    n, c, h, w = x.shape
    ph, pw = padding
    block = block if backend.device_of(x) == "cpu" else max(n, 1)
    out = xp_of(x).empty((c, h + 2 * ph, w + 2 * pw, n), dtype=x.dtype)
    for border in (out[:, :ph], out[:, ph + h:], out[:, ph:ph + h, :pw], out[:, ph:ph + h, pw + w:]):
        border[...] = value

    def copy(chans):  # threads take disjoint channels: no two write the same cache line
        for b in range(0, n, block):
            src = x[b:b + block, chans].transpose(1, 2, 3, 0)
            out[chans, ph:ph + h, pw:pw + w, b:b + block] = src

    parallel.for_each(copy, _split(c, parallel.NUM_THREADS), threaded=_threaded(out))
    return out


def _split(length: int, parts: int) -> list[slice]:
    """``parts`` contiguous slices covering range(length) (fewer when length is smaller)."""
    parts = max(1, min(parts, length))
    bounds = [length * i // parts for i in range(parts + 1)]
    return [slice(bounds[i], bounds[i + 1]) for i in range(parts)]


def from_chwn(a, bias=None, padding=(0, 0)):
    """(C, H + 2 ph, W + 2 pw, N) -> NCHW without the padding, plus ``bias`` per channel.
    On the CPU a few channels at a time (a cache-friendly transpose), on the GPU in one go."""
    xp = xp_of(a)
    c, hp, wp, n = a.shape
    ph, pw = padding
    a = a[:, ph:hp - ph, pw:wp - pw, :]
    out = xp.empty((n, c) + a.shape[1:3], dtype=a.dtype)
    block = 2 if backend.device_of(a) == "cpu" else c

    def copy(b):
        src = a[b:b + block].transpose(3, 0, 1, 2)
        if bias is None:
            out[:, b:b + block] = src
        else:
            xp.add(src, bias[b:b + block].reshape(1, -1, 1, 1), out=out[:, b:b + block])

    parallel.for_each(copy, range(0, c, block), threaded=_threaded(out))
    return out


def to_nhwc(x):
    """NCHW -> a new contiguous (N, H, W, C) array, copied in blocks of images on all cores."""
    out = xp_of(x).empty((x.shape[0],) + x.shape[2:] + (x.shape[1],), dtype=x.dtype)
    parallel.copyto(out, x.transpose(0, 2, 3, 1))
    return out


def nhwc_to_nchw(x):
    """(N, H, W, C) -> a new contiguous NCHW array (the inverse of ``to_nhwc``)."""
    out = xp_of(x).empty((x.shape[0], x.shape[3]) + x.shape[1:3], dtype=x.dtype)
    parallel.copyto(out, x.transpose(0, 3, 1, 2))
    return out


def to_cnl(x):
    """NCHW -> (C, N*H*W): a transposing copy that moves whole rows of H*W numbers
    (blocks of channels on the CPU threads)."""
    n, c = x.shape[:2]
    src = x.reshape(n, c, -1).transpose(1, 0, 2)
    out = xp_of(x).empty(src.shape, dtype=x.dtype)
    parallel.for_each(lambda blk: out.__setitem__(blk, src[blk]),
                      _channel_blocks(out, out[0].size), threaded=_threaded(out))
    return out.reshape(c, -1)


def from_cnl(a, n: int, bias=None):
    """(C, N*L) -> (N, C, L), plus ``bias`` per channel (the inverse of ``to_cnl``)."""
    xp, c = xp_of(a), a.shape[0]
    src = a.reshape(c, n, -1).transpose(1, 0, 2)                # (N, C, L) view
    out = xp.empty(src.shape, dtype=a.dtype)
    b3 = None if bias is None else bias.reshape(1, c, 1)

    def copy(blk):
        if b3 is None:
            out[blk] = src[blk]
        else:
            xp.add(src[blk], b3, out=out[blk])

    parallel.for_each(copy, _channel_blocks(out, out[0].size), threaded=_threaded(out))
    return out


# Channels are independent in col2im and in the depthwise loops, so these run a block of
# channels at a time: on the CPU a block's arrays (about 512 KiB) stay in cache across the
# kh*kw kernel offsets (col2im ~1.2x, depthwise ~1.8x faster). The GPU takes all at once.
CACHE_BLOCK = 1 << 17   # numbers per operand block (512 KiB of float32)


def _channel_blocks(xt, per_channel: int) -> list[slice]:
    c = xt.shape[0]
    step = max(1, CACHE_BLOCK // per_channel) if backend.device_of(xt) == "cpu" else c
    return [slice(b, b + step) for b in range(0, c, step)]

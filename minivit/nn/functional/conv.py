"""2-D convolution on NCHW arrays, as ``torch.nn.functional.conv2d``.

Inside the op the input is copied once into a zero-padded (C, Hp, Wp, N) layout, xt (batch
innermost: see ``to_chwn``). General path: im2col on a strided view of xt, one GEMM::

    cols[c, i, j, y, x, n] = xt[c, y*s + i*d, x*s + j*d, n]        (one copy of a strided view)
    out[o, (y, x, n)]     = W[o, (c, i, j)] @ cols[(c, i, j), (y, x, n)]
    dW = dout @ cols^T        dcols = W^T @ dout
    dxt = col2im(dcols)       (kh*kw strided slice additions, one per kernel offset)

The column matrix is (C*kh*kw, Ho*Wo*N): its rows follow the weight's own (in, kh, kw) order,
so W reshapes to (out, in*kh*kw) without a copy and the product is a single large 2-D GEMM
with contiguous operands (with groups: a batch of ``groups`` such GEMMs). The columns are saved
for the weight gradient (kh*kw times the input's size: memory traded for not redoing im2col).

Depthwise path (groups == in_channels > 1, out = k*in): no GEMM at all. For each kernel offset
(i, j) the output accumulates an elementwise product with a strided slice of the input::

    out[c*k + m] += W[c*k + m, 0, i, j] * xt[c, i*d : : s, j*d : : s, :]

(a grouped GEMM with one input channel per group is many times slower on the CPU, Chainer #5403).

Pointwise path (1x1 kernel, stride 1, no padding, groups 1): no windows, so no (C, H, W, N)
layout either. The input is copied to (C, N, H*W), whose transposes move whole rows of H*W
numbers (several times cheaper than batch-innermost), and one GEMM does the rest::

    out[o, (n, p)] = W[o, c] @ xt[c, (n, p)]        dW = dout @ xt^T        dxt = W^T @ dout
"""
from __future__ import annotations

from typing import NamedTuple

from ...autograd import backend
from ...kernels import parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function

xp_of = backend.get_array_module

__all__ = ["conv2d", "Conv2d"]


# --- geometry helpers (shared with pooling.py) ---------------------------------------------

def pair(value, what: str, op: str, minimum: int) -> tuple[int, int]:
    """An int or a pair of ints -> a pair of ints >= ``minimum``; a clear error otherwise."""
    items = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"{op}: {what} must be an int or a pair of ints, got {value!r}")
    if min(items) < minimum:
        raise ValueError(f"{op}: {what} must be >= {minimum}, got {value!r}")
    return items


def out_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Number of window positions along one axis (floor mode, as PyTorch)."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def window_slice(offset: int, dilation: int, stride: int, count: int) -> slice:
    """The padded-input positions that kernel offset ``offset`` touches in ``count`` windows."""
    start = offset * dilation
    return slice(start, start + stride * (count - 1) + 1, stride)


def check_input(x, kernel: tuple[int, int], padding, dilation) -> None:
    """Validate an NCHW input against the (dilated) kernel and the padding.

    Raised inside a Function's forward: ``Function.apply`` prefixes the op's name."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got {x.ndim}-D")
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    hp, wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if eh > hp or ew > wp:
        raise ValueError(f"kernel {kh}x{kw} (dilated extent {eh}x{ew}) is larger than the "
                         f"padded input {hp}x{wp} (padding {padding})")


# --- the conv op ---------------------------------------------------------------------------

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


class Conv2d(Function):
    """y = conv2d(x, W) + b on NCHW arrays; grads for x, W and b. See the module docstring."""

    name = "conv2d"

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
        add_flops(2 * n * o * geo.ho * geo.wo * (c // groups) * kh * kw)
        if ctx.pointwise:
            xt = to_cnl(x)                                           # (C, N*H*W)
            ctx.save_for_backward(xt, weight)
            return from_cnl(weight.reshape(o, c) @ xt, n, bias).reshape(n, o, h, w)
        xt = to_chwn(x, padding)
        if ctx.depthwise:
            ctx.save_for_backward(xt, weight)
            return from_chwn(_depthwise_forward(xt, weight, geo), bias)
        cols = _im2col(xt, geo)                                      # (G, Cg*kh*kw, Ho*Wo*N)
        ctx.save_for_backward(cols, weight)
        out = xp_of(x).matmul(weight.reshape(groups, o // groups, -1), cols)  # (G, O/G, ...)
        return from_chwn(out.reshape(o, geo.ho, geo.wo, n), bias)

    def backward(ctx, g):
        saved, weight = ctx.saved_tensors
        geo, need_x, need_w = ctx.geo, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xp = xp_of(g)
        gt = to_cnl(g) if ctx.pointwise else to_chwn(g, (0, 0))     # (O, Ho*Wo*N) in some order
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[2]:  # contiguous rows, not a strided NCHW sum
            gb = parallel.row_sums(gt.reshape(geo.o, -1))
        if ctx.pointwise:
            xt, w2 = saved, weight.reshape(geo.o, geo.c)
            gw = (gt @ xt.T).reshape(weight.shape) if need_w else None
            gx = from_cnl(w2.T @ gt, geo.n).reshape(g.shape[0], geo.c, geo.h, geo.w) if need_x \
                else None
        elif ctx.depthwise:
            gx, gw = _depthwise_backward(gt, saved, weight, geo, need_x, need_w)
        else:
            cols, gw, gx = saved, None, None
            g2 = gt.reshape(geo.groups, geo.o // geo.groups, -1)
            if need_w:
                gw = xp.matmul(g2, cols.transpose(0, 2, 1)).reshape(weight.shape)
            if need_x:
                w3 = weight.reshape(geo.groups, geo.o // geo.groups, -1)
                gx = _col2im(xp.matmul(w3.transpose(0, 2, 1), g2), geo)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


def _check_conv(x, weight, bias, padding, dilation, groups) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got {x.ndim}-D")
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D weight (out_channels, in_channels/groups, kh, kw), "
                         f"got {weight.ndim}-D")
    c, (o, cg) = x.shape[1], weight.shape[:2]
    if c % groups or o % groups:
        raise ValueError(f"groups={groups} must divide both in_channels ({c}) and out_channels "
                         f"({o})")
    if cg * groups != c:
        raise ValueError(f"the input has {c} channels but the weight (out, in/groups, kh, kw) "
                         f"with groups={groups} expects {cg}*{groups}={cg * groups}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match out_channels={o} "
                         f"(expected shape ({o},))")
    check_input(x, weight.shape[2:], padding, dilation)


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
    the channels shared among the CPU threads. Only the border is filled with ``value``."""
    n, c, h, w = x.shape
    ph, pw = padding
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


# --- general path: im2col, GEMM, col2im ----------------------------------------------------

def _im2col(xt, geo: Geometry):
    """(G, Cg*kh*kw, Ho*Wo*N) columns: one copy of a strided view of the padded input
    (blocks of channels on the CPU threads)."""
    sc, sy, sx, sn = xt.strides
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    shape = (geo.c, geo.kh, geo.kw, geo.ho, geo.wo, geo.n)
    view = backend.as_strided(xt, shape, (sc, sy * dh, sx * dw, sy * sh, sx * sw, sn))
    cols = xp_of(xt).empty(shape, dtype=xt.dtype)
    parallel.for_each(lambda blk: cols.__setitem__(blk, view[blk]),
                      _channel_blocks(cols, cols[0].size), threaded=_threaded(cols))
    return cols.reshape(geo.groups, -1, geo.ho * geo.wo * geo.n)


def _col2im(dcols, geo: Geometry):
    """Gradient of x: add each kernel offset's columns back where im2col read them."""
    dcols = dcols.reshape(geo.c, geo.kh, geo.kw, geo.ho, geo.wo, geo.n)
    (ph, pw) = geo.padding
    dxt = xp_of(dcols).empty((geo.c, geo.h + 2 * ph, geo.w + 2 * pw, geo.n), dtype=dcols.dtype)

    def add_block(blk):   # a cache-sized block of dx at a time
        dx_b, dcols_b = dxt[blk], dcols[blk]
        dx_b[...] = 0
        for i in range(geo.kh):
            for j in range(geo.kw):
                dx_b[:, geo.rows(i), geo.cols(j), :] += dcols_b[:, i, j]

    parallel.for_each(add_block, _channel_blocks(dxt, dxt[0].size), threaded=_threaded(dxt))
    return from_chwn(dxt, padding=geo.padding)


# --- depthwise path: multiply-adds over kernel offsets -------------------------------------

def _depthwise_forward(xt, weight, geo: Geometry):
    """(O, Ho, Wo, N): out[c*k + m] = sum over (i, j) of W[c*k + m, 0, i, j] * window(i, j)[c]."""
    k = geo.o // geo.c                                     # channel multiplier
    wd = weight.reshape(geo.c, k, geo.kh, geo.kw, 1, 1, 1)
    out = xp_of(xt).empty((geo.c, k, geo.ho, geo.wo, geo.n), dtype=xt.dtype)

    def block(blk):
        x_b, w_b, out_b = xt[blk], wd[blk], out[blk]
        out_b[...] = 0
        for i in range(geo.kh):
            for j in range(geo.kw):
                window = x_b[:, geo.rows(i), geo.cols(j), :]
                for m in range(k):
                    out_b[:, m] += window * w_b[:, m, i, j]

    parallel.for_each(block, _channel_blocks(xt, k * geo.ho * geo.wo * geo.n),
                      threaded=_threaded(out))
    return out.reshape(geo.o, geo.ho, geo.wo, geo.n)


def _depthwise_backward(gt, xt, weight, geo: Geometry, need_x, need_w):
    xp = xp_of(gt)
    k = geo.o // geo.c
    wd = weight.reshape(geo.c, k, geo.kh, geo.kw, 1, 1, 1)
    g5 = gt.reshape(geo.c, k, geo.ho, geo.wo, geo.n)
    dxt = xp.empty(xt.shape, dtype=gt.dtype) if need_x else None
    gw = xp.empty((geo.c, k, geo.kh, geo.kw), dtype=gt.dtype) if need_w else None

    def block(blk):
        x_b, w_b, g_b = xt[blk], wd[blk], g5[blk]
        if need_x:
            dxt[blk] = 0
        for i in range(geo.kh):
            for j in range(geo.kw):
                rows, cols = geo.rows(i), geo.cols(j)
                for m in range(k):
                    if need_x:   # dx[window(i, j)] += W[c*k + m, i, j] * dy[c*k + m]
                        dxt[blk, rows, cols, :] += g_b[:, m] * w_b[:, m, i, j]
                    if need_w:   # dW[c*k + m, i, j] = <dy[c*k + m], window(i, j)[c]>
                        gw[blk, m, i, j] = xp.einsum("cyxn,cyxn->c", g_b[:, m],
                                                     x_b[:, rows, cols, :])

    parallel.for_each(block, _channel_blocks(xt, k * geo.ho * geo.wo * geo.n),
                      threaded=_threaded(xt))
    gx = from_chwn(dxt, padding=geo.padding) if need_x else None
    return gx, (gw.reshape(weight.shape) if need_w else None)


def conv2d(x, weight, bias=None, stride=1, padding=0, dilation=1, groups: int = 1):
    """2-D convolution of an NCHW tensor, as ``torch.nn.functional.conv2d``.

    ``weight`` is (out_channels, in_channels/groups, kh, kw); ``stride``, ``padding`` and
    ``dilation`` are ints or (h, w) pairs. Example::

        x = minivit.randn(2, 3, 8, 8)
        w = minivit.randn(16, 3, 3, 3)
        conv2d(x, w, padding=1).shape      # (2, 16, 8, 8)
    """
    if not isinstance(groups, int) or isinstance(groups, bool) or groups < 1:
        raise ValueError(f"conv2d: groups must be a positive int, got {groups!r}")
    attrs = dict(stride=pair(stride, "stride", "conv2d", 1),
                 padding=pair(padding, "padding", "conv2d", 0),
                 dilation=pair(dilation, "dilation", "conv2d", 1), groups=groups)
    if bias is None:
        return Conv2d.apply(x, weight, **attrs)
    return Conv2d.apply(x, weight, bias, **attrs)

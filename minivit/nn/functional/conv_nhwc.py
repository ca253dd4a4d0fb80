"""2-D convolution on channels-last (N, H, W, C) arrays: im2col in that layout, one GEMM.

With the channels last, the window of kernel offset (i, j) at output (n, y, x) is a run of C
contiguous numbers, so the column matrix is one copy of a strided view of the zero-padded
input, and the GEMM's output already is the channels-last result (no layout copies)::

    cols[n, y, x, i, j, c] = xpad[n, y*s + i*d, x*s + j*d, c]         (N*Ho*Wo, kh*kw*C)
    out[(n, y, x), o]      = cols @ Wm^T + b,   Wm[o, (i, j, c)] = W[o, c, i, j]
    dWm = dout^T @ cols      dcols = dout @ Wm
    dxpad[n, y*s + i*d, x*s + j*d, c] += dcols[n, y, x, i, j, c]      (col2im, one add per (i, j))

The weight keeps PyTorch's layout (O, C, kh, kw): ``Wm`` is a small transposed copy of it, so
state dicts are unchanged. A 1x1 stride-1 conv without padding is a plain Linear on the
(N*H*W, C) rows. Copies and col2im run a few images at a time on all CPU threads. Dense
convolutions only (groups 1); depthwise ones have ``depthwise_conv2d_nhwc``.
"""
from __future__ import annotations

from ...autograd import backend
from ...kernels import parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function
from .conv import pair
from .depthwise import (_image_blocks, _pad_into, _padding, _threaded, check_nhwc, expect_nhwc,
                        windows)

xp_of = backend.get_array_module

__all__ = ["conv2d_nhwc"]


class Conv2dNHWC(Function):
    """y = conv2d(x, W) + b on (N, H, W, C) -> (N, Ho, Wo, O); grads for x, W and b."""

    name = "conv2d_nhwc"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        n, h, w, c = expect_nhwc(x)
        if weight.ndim != 4 or weight.shape[1] != c:
            raise ValueError(f"expected a weight of shape (out_channels, {c}, kh, kw) for an "
                             f"input with {c} channels (last axis), got {tuple(weight.shape)}")
        o, _, kh, kw = weight.shape
        if bias is not None and tuple(bias.shape) != (o,):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match out_channels={o} "
                             f"(expected ({o},))")
        ho, wo = check_nhwc(x, (kh, kw), padding, stride, dilation)
        add_flops(2 * n * ho * wo * o * c * kh * kw)
        xp = xp_of(x)
        wm = weight.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)     # (O, (i, j, c)), a copy
        pointwise = (kh, kw) + tuple(stride) == (1, 1, 1, 1) and padding == ((0, 0), (0, 0))
        cols = x.reshape(n * h * w, c) if pointwise else _im2col(x, (kh, kw), padding, stride,
                                                                 dilation, (ho, wo))
        y = cols @ wm.T
        if bias is not None:
            parallel.add_rows_(y, bias)
        ctx.save_for_backward(cols, wm)
        ctx.geo = (x.shape, weight.shape, padding, stride, dilation, (ho, wo), pointwise)
        ctx.has_bias = bias is not None
        return y.reshape(n, ho, wo, o)

    def backward(ctx, g):
        cols, wm = ctx.saved_tensors
        x_shape, w_shape, padding, stride, dilation, (ho, wo), pointwise = ctx.geo
        o, c, kh, kw = w_shape
        g2 = g.reshape(-1, o)
        need = ctx.needs_input_grad
        gw = gx = None
        if need[1]:
            gw = (g2.T @ cols).reshape(o, kh, kw, c).transpose(0, 3, 1, 2)
            gw = xp_of(g).ascontiguousarray(gw)
        if need[0]:
            dcols = g2 @ wm
            gx = dcols.reshape(x_shape) if pointwise else _col2im(
                dcols, x_shape, (kh, kw), padding, stride, dilation, (ho, wo))
        if not ctx.has_bias:
            return gx, gw
        return gx, gw, (parallel.sum_rows(lambda a: a, g2) if need[2] else None)


def _im2col(x, kernel, padding, stride, dilation, out_hw):
    """(N*Ho*Wo, kh*kw*C) columns, built a few images at a time from the padded input."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    (kh, kw), ((pt, pb), (pl, pr)), (ho, wo) = kernel, padding, out_hw
    offsets = windows(kernel, stride, dilation, out_hw)
    cols = xp.empty((n, ho, wo, kh * kw, c), dtype=x.dtype)
    blocks = _image_blocks(n, (h + pt + pb) * (w + pl + pr) * c, backend.device_of(x))

    def block(blk):
        xb = x[blk]
        if pt or pb or pl or pr:
            xpad = xp.empty((xb.shape[0], h + pt + pb, w + pl + pr, c), dtype=x.dtype)
            _pad_into(xpad, xb, pt, pl)
            xb = xpad
        for t, (rows, cs) in enumerate(offsets):
            cols[blk, :, :, t] = xb[:, rows, cs]

    parallel.for_each(block, blocks, threaded=_threaded(cols))
    return cols.reshape(n * ho * wo, kh * kw * c)


def _col2im(dcols, x_shape, kernel, padding, stride, dilation, out_hw):
    """dx: each kernel offset's columns added back where im2col read them, a few images at a
    time (the threads take disjoint images), then the padding cut off."""
    xp = xp_of(dcols)
    n, h, w, c = x_shape
    (kh, kw), ((pt, pb), (pl, pr)), (ho, wo) = kernel, padding, out_hw
    offsets = windows(kernel, stride, dilation, out_hw)
    d5 = dcols.reshape(n, ho, wo, kh * kw, c)
    gx = xp.empty(x_shape, dtype=dcols.dtype)
    blocks = _image_blocks(n, (h + pt + pb) * (w + pl + pr) * c, backend.device_of(dcols))

    def block(blk):
        d = d5[blk]
        dxpad = xp.zeros((d.shape[0], h + pt + pb, w + pl + pr, c), dtype=dcols.dtype)
        for t, (rows, cs) in enumerate(offsets):
            dxpad[:, rows, cs] += d[:, :, :, t]
        gx[blk] = dxpad[:, pt:pt + h, pl:pl + w]

    parallel.for_each(block, blocks, threaded=_threaded(gx))
    return gx


def conv2d_nhwc(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D convolution of a channels-last (N, H, W, C) tensor -> (N, Ho, Wo, O).

    The same numbers as ``conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding,
    dilation).permute(0, 2, 3, 1)`` (groups 1), without the layout copies. ``weight`` is
    (O, C, kh, kw); ``padding`` an int, a pair, or ((top, bottom), (left, right)). Example::

        x = minivit.randn(2, 8, 8, 16)
        w = minivit.randn(32, 16, 3, 3)
        conv2d_nhwc(x, w, padding=1).shape       # (2, 8, 8, 32)
    """
    op = Conv2dNHWC.op_name()
    attrs = dict(stride=pair(stride, "stride", op, 1), padding=_padding(padding, op),
                 dilation=pair(dilation, "dilation", op, 1))
    if bias is None:
        return Conv2dNHWC.apply(x, weight, **attrs)
    return Conv2dNHWC.apply(x, weight, bias, **attrs)


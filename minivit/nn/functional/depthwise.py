"""Depthwise 2-D convolution on channels-last (N, H, W, C) arrays.

Models whose activations are tokens, (B, h*w, C) or (B, h, w, C), convolve them depthwise
(CeiT's LeFF, MaxViT's MBConv). In that layout a depthwise conv needs no transposes at all: the
window of kernel offset (i, j) is a strided view of the zero-padded input, and for every
(n, y, x) its C numbers are contiguous, so each offset is one multiply-add over whole rows::

    out[n, y, x, c]  = b[c] + sum_(i,j) W[c, 0, i, j] * xpad[n, y*s + i*d, x*s + j*d, c]
    dxpad[window(i, j)] += W[c, 0, i, j] * dout               (for each offset (i, j))
    dW[c, 0, i, j]   = sum_(n,y,x) dout[n, y, x, c] * window(i, j)[n, y, x, c]
    db[c]            = sum_(n,y,x) dout[n, y, x, c]

The weight keeps PyTorch's layout (C, 1, kh, kw), so it is the same parameter an NCHW
``conv2d(..., groups=C)`` uses and state dicts are unchanged. The work runs a few images at a
time (a block of about 512 KiB stays in cache across the kh*kw offsets), the blocks shared
among the CPU threads. Each block's weight-gradient sums are kept apart and added in block
order at the end, so the result does not depend on the number of threads.
"""
from __future__ import annotations

from ...autograd import backend
from ...kernels import parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function
from .conv import CACHE_BLOCK, out_size, pair, window_slice

xp_of = backend.get_array_module

__all__ = ["depthwise_conv2d_nhwc"]


def _padding(padding, op: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """int, (ph, pw) or ((top, bottom), (left, right)) -> ((top, bottom), (left, right))."""
    if (isinstance(padding, (tuple, list)) and len(padding) == 2
            and all(isinstance(p, (tuple, list)) for p in padding)):
        (t, b), (lft, r) = (pair(p, "padding", op, 0) for p in padding)
        return (t, b), (lft, r)
    ph, pw = pair(padding, "padding", op, 0)
    return (ph, ph), (pw, pw)


def expect_nhwc(x) -> tuple[int, int, int, int]:
    """(N, H, W, C) of a channels-last input, or the error that says what was expected."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D channels-last input (N, H, W, C), got {x.ndim}-D")
    return x.shape


def check_nhwc(x, kernel, padding, stride, dilation) -> tuple[int, int]:
    """Check that the (dilated) kernel fits the padded channels-last input; returns the
    output size (Ho, Wo). Shared with ``conv2d_nhwc``."""
    (kh, kw), ((pt, pb), (pl, pr)), (sh, sw), (dh, dw) = kernel, padding, stride, dilation
    hp, wp = x.shape[1] + pt + pb, x.shape[2] + pl + pr
    if dh * (kh - 1) + 1 > hp or dw * (kw - 1) + 1 > wp:
        raise ValueError(f"kernel {kh}x{kw} (dilation {dilation}) is larger than the padded "
                         f"input {hp}x{wp} (padding {padding})")
    return out_size(hp, kh, sh, 0, dh), out_size(wp, kw, sw, 0, dw)


def windows(kernel, stride, dilation, out_hw) -> list[tuple[slice, slice]]:
    """(rows, cols) of the padded input read by each kernel offset (i, j), row-major."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    return [(window_slice(i, dh, sh, ho), window_slice(j, dw, sw, wo))
            for i in range(kh) for j in range(kw)]


def _image_blocks(n: int, per_image: int, device: str) -> list[slice]:
    """Runs of images of about CACHE_BLOCK numbers each on the CPU; all at once on the GPU."""
    step = max(1, CACHE_BLOCK // max(per_image, 1)) if device == "cpu" else n
    return [slice(b, b + step) for b in range(0, n, step)]


class DepthwiseConv2dNHWC(Function):
    """y = depthwise_conv(x, W) + b on (N, H, W, C); grads for x, W and b (module docstring)."""

    name = "depthwise_conv2d_nhwc"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        n, h, w, c = expect_nhwc(x)
        if weight.ndim != 4 or tuple(weight.shape[:2]) != (c, 1):
            raise ValueError(f"expected a depthwise weight of shape ({c}, 1, kh, kw) for an "
                             f"input with {c} channels (last axis), got {tuple(weight.shape)}")
        if bias is not None and tuple(bias.shape) != (c,):
            raise ValueError(f"bias of shape {tuple(bias.shape)} does not match the {c} "
                             f"channels (expected ({c},))")
        kh, kw = weight.shape[2:]
        ho, wo = check_nhwc(x, (kh, kw), padding, stride, dilation)
        (pt, pb), (pl, pr) = padding
        add_flops(2 * n * ho * wo * c * kh * kw)
        xp = xp_of(x)
        xpad = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)
        # (kh*kw, Wo, C): each tap's C weights repeated along a row of the output, so that a
        # product with a window runs as one loop over a whole output row of Wo*C numbers (a
        # (C,) vector broadcast against (n, Ho, Wo, C) costs a loop per Wo position: 1.2-1.8x
        # slower here)
        taps = xp.ascontiguousarray(xp.broadcast_to(weight.reshape(c, kh * kw).T[:, None, :],
                                                    (kh * kw, wo, c)))
        offsets = windows((kh, kw), stride, dilation, (ho, wo))
        out = xp.empty((n, ho, wo, c), dtype=x.dtype)

        def block(blk):
            o, xb = out[blk], xpad[blk]
            _pad_into(xb, x[blk], pt, pl)   # the padded copy, block by block while in cache
            tmp = xp.empty_like(o)
            for t, (rows, cols) in enumerate(offsets):
                if t == 0:
                    xp.multiply(xb[:, rows, cols], taps[0], out=o)
                else:
                    o += xp.multiply(xb[:, rows, cols], taps[t], out=tmp)
            if bias is not None:
                o += bias

        blocks = _image_blocks(n, ho * wo * c, backend.device_of(x))
        parallel.for_each(block, blocks, threaded=_threaded(out))
        ctx.save_for_backward(xpad, taps)
        ctx.geo = (x.shape, weight.shape, (pt, pl), offsets, blocks)
        ctx.has_bias = bias is not None
        return out

    def backward(ctx, g):
        xpad, taps = ctx.saved_tensors
        (n, h, w, c), w_shape, (pt, pl), offsets, blocks = ctx.geo
        xp = xp_of(g)
        g = xp.ascontiguousarray(g)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        dxpad = xp.empty(xpad.shape, dtype=g.dtype) if need_x else None
        gx = xp.empty((n, h, w, c), dtype=g.dtype) if need_x else None
        partial = xp.empty((len(blocks), len(offsets), c), dtype=g.dtype) if need_w else None

        def block(k):
            blk = blocks[k]
            gb, xb = g[blk], xpad[blk]
            if need_x:
                tmp = xp.empty_like(gb)
                dxb = dxpad[blk]
                dxb[...] = 0
            for t, (rows, cols) in enumerate(offsets):
                if need_w:  # <dout, window(i, j)> per channel: einsum multiplies and sums in
                    #          one sweep, no product array (3x faster than multiply + a gemv)
                    partial[k, t] = xp.einsum("nhwc,nhwc->c", gb, xb[:, rows, cols])
                if need_x:
                    dxb[:, rows, cols] += xp.multiply(gb, taps[t], out=tmp)
            if need_x:
                gx[blk] = dxb[:, pt:pt + h, pl:pl + w]

        parallel.for_each(block, range(len(blocks)), threaded=_threaded(g))
        gw = partial.sum(axis=0).T.reshape(w_shape) if need_w else None
        if not ctx.has_bias:
            return gx, gw
        gb = parallel.sum_rows(lambda a: a, g.reshape(-1, c)) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _pad_into(dst, src, top: int, left: int) -> None:
    """dst = src zero-padded: only the border is zeroed, the interior is a plain copy."""
    h, w = src.shape[1:3]
    dst[:, :top] = 0
    dst[:, top + h:] = 0
    dst[:, top:top + h, :left] = 0
    dst[:, top:top + h, left + w:] = 0
    dst[:, top:top + h, left:left + w] = src


def _threaded(a) -> bool:
    return backend.device_of(a) == "cpu" and a.size >= parallel.MIN_ELEMENTS


def depthwise_conv2d_nhwc(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """Depthwise conv of a channels-last (N, H, W, C) tensor -> (N, Ho, Wo, C).

    The same numbers as ``conv2d(x.permute(0, 3, 1, 2), weight, bias, stride, padding,
    dilation, groups=C).permute(0, 2, 3, 1)``, without the transposes. ``weight`` is
    (C, 1, kh, kw); ``padding`` is an int, a pair (ph, pw), or ((top, bottom), (left, right))
    for asymmetric padding such as TF's 'SAME'. Example::

        x = minivit.randn(2, 8, 8, 16)                       # 16 channels, last
        w = minivit.randn(16, 1, 3, 3)
        depthwise_conv2d_nhwc(x, w, padding=1).shape         # (2, 8, 8, 16)
    """
    op = DepthwiseConv2dNHWC.op_name()
    attrs = dict(stride=pair(stride, "stride", op, 1), padding=_padding(padding, op),
                 dilation=pair(dilation, "dilation", op, 1))
    if bias is None:
        return DepthwiseConv2dNHWC.apply(x, weight, **attrs)
    return DepthwiseConv2dNHWC.apply(x, weight, bias, **attrs)

"""2-D pooling on NCHW arrays, as ``torch.nn.functional``: max, average and adaptive average.

Max and average pooling work like conv2d's depthwise path: the input is copied once into a
padded (C, Hp, Wp, N) layout (batch innermost, long contiguous runs), then a loop over the
kh*kw kernel offsets combines one strided slice per offset (no Python loop over pixels); the
backward adds the gradient back with one strided slice addition per offset.
Only ``ceil_mode=False`` (PyTorch's default) is implemented.
"""
from __future__ import annotations

import numpy as np

from ...autograd import backend
from ...autograd.function import Function
from .conv import Geometry, check_input, from_chwn, out_size, pair, to_chwn

xp_of = backend.get_array_module


def _pool_geometry(x, kernel, stride, padding, dilation) -> Geometry:
    """Validate the pooling geometry (PyTorch's rules) and describe it as conv2d does."""
    check_input(x, kernel, padding, dilation)
    for k, p, d in zip(kernel, padding, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"padding {padding} must be at most half of the (dilated) kernel "
                             f"size {kernel} (dilation {dilation}), as in PyTorch")
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
    """Adjoint of reading the windows: add ``contribution(k)`` (C, Ho, Wo, N) back where
    offset k read it; return the NCHW gradient of the unpadded input."""
    ph, pw = geo.padding
    dxt = xp_of(like).zeros((geo.c, geo.h + 2 * ph, geo.w + 2 * pw, geo.n), dtype=like.dtype)
    for k, rows, cols in _offsets(geo):
        dxt[:, rows, cols, :] += contribution(k)
    return from_chwn(dxt, padding=geo.padding)


class MaxPool2d(Function):
    """Max over each window. Ties: the whole gradient goes to the first maximum in the
    window's row-major order (as PyTorch). A NaN in a window makes the output NaN."""

    name = "max_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        geo = ctx.geo = _pool_geometry(x, kernel, stride, padding, dilation)
        xp = xp_of(x)
        xt = to_chwn(x, padding, value=-np.inf)
        out = arg = None
        for k, rows, cols in _offsets(geo):
            window = xt[:, rows, cols, :]
            if out is None:
                out = window.copy()
                arg = xp.zeros(out.shape, dtype=xp.uint8 if geo.kh * geo.kw <= 256 else xp.int32)
            else:  # arg = k where strictly greater (a tie keeps the first maximum); as k only
                # grows, that is max(arg, k * better): arithmetic, much faster than a masked copy
                step = (window > out).astype(arg.dtype)
                step *= k
                xp.maximum(arg, step, out=arg)
                xp.maximum(out, window, out=out)        # (maximum propagates NaN)
        ctx.save_for_backward(arg)
        return from_chwn(out)

    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        gt = to_chwn(g, (0, 0))
        # a product with the mask (faster than where); the winner of each window gets dy
        return _add_back(ctx.geo, lambda k: gt * (arg == k), g)


class AvgPool2d(Function):
    """Mean over each window; the divisor counts the padding unless ``count_include_pad`` is
    False (then only the input elements in the window), or is ``divisor_override``."""

    name = "avg_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), count_include_pad=True,
                divisor_override=None):
        geo = ctx.geo = _pool_geometry(x, kernel, stride, padding, (1, 1))
        xp = xp_of(x)
        if divisor_override is not None:
            ctx.scale = 1.0 / divisor_override
        elif count_include_pad or padding == (0, 0):
            ctx.scale = 1.0 / (geo.kh * geo.kw)
        else:  # elements of the window inside the input: (rows inside) * (columns inside)
            inside = np.outer(_inside(geo.h, geo.ho, geo.kh, stride[0], padding[0]),
                              _inside(geo.w, geo.wo, geo.kw, stride[1], padding[1]))
            ctx.scale = xp.asarray(1.0 / inside[:, :, None], dtype=x.dtype)   # (Ho, Wo, 1)
        xt = to_chwn(x, padding)
        total = None
        for _, rows, cols in _offsets(geo):
            window = xt[:, rows, cols, :]
            total = window.copy() if total is None else xp.add(total, window, out=total)
        return from_chwn(total * ctx.scale)

    def backward(ctx, g):
        gs = to_chwn(g, (0, 0)) * ctx.scale
        return _add_back(ctx.geo, lambda k: gs, g)


def _inside(size, count, kernel, stride, padding):
    """For each of ``count`` windows along an axis: how many of its positions are in the input."""
    start = np.arange(count) * stride - padding
    return np.minimum(start + kernel, size) - np.maximum(start, 0)


class AdaptiveAvgPool2d(Function):
    """Output cell (i, j) averages rows floor(i*H/Ho) .. ceil((i+1)*H/Ho) - 1, and likewise
    columns (PyTorch's formula). When Ho divides H and Wo divides W it is a reshape and a mean;
    otherwise y = Ph @ x @ Pw^T with averaging matrices Ph (Ho, H), Pw (Wo, W)."""

    name = "adaptive_avg_pool2d"

    def forward(ctx, x, output_size=(1, 1)):
        if x.ndim != 4:
            raise ValueError(f"expected a 4-D input (N, C, H, W), got {x.ndim}-D")
        n, c, h, w = x.shape
        ho, wo = output_size
        ho, wo = ho or h, wo or w   # None keeps the input size, as PyTorch
        if ho < 1 or wo < 1:
            raise ValueError(f"output_size must be positive, got {output_size}")
        ctx.shape = x.shape
        xp = xp_of(x)
        if h % ho == 0 and w % wo == 0:
            ctx.mats = None
            ctx.block = (ho, h // ho, wo, w // wo)
            return x.reshape(n, c, *ctx.block).mean(axis=(3, 5), dtype=x.dtype)
        ctx.mats = (xp.asarray(_averaging_matrix(h, ho), dtype=x.dtype),
                    xp.asarray(_averaging_matrix(w, wo), dtype=x.dtype))
        ph, pw = ctx.mats
        return xp.matmul(xp.matmul(ph, x), pw.T)   # (Ho, H) @ (N, C, H, W) @ (W, Wo)

    def backward(ctx, g):
        xp = xp_of(g)
        n, c, h, w = ctx.shape
        if ctx.mats is None:
            ho, kh, wo, kw = ctx.block
            g6 = (g * (1.0 / (kh * kw))).reshape(n, c, ho, 1, wo, 1)
            return xp.broadcast_to(g6, (n, c, ho, kh, wo, kw)).reshape(ctx.shape)
        ph, pw = ctx.mats
        return xp.matmul(xp.matmul(ph.T, g), pw)


def _averaging_matrix(size: int, out: int) -> np.ndarray:
    """(out, size) matrix whose row i averages input[floor(i*size/out) : ceil((i+1)*size/out)]."""
    m = np.zeros((out, size))
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        m[i, start:end] = 1.0 / (end - start)
    return m


# --- public functions ----------------------------------------------------------------------

def _pool_args(op, kernel_size, stride, padding, ceil_mode):
    if ceil_mode:
        raise NotImplementedError(f"{op}: ceil_mode=True is not implemented (only PyTorch's "
                                  f"default ceil_mode=False)")
    kernel = pair(kernel_size, "kernel_size", op, 1)
    stride = kernel if stride is None or stride == () else pair(stride, "stride", op, 1)
    return kernel, stride, pair(padding, "padding", op, 0)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False,
               return_indices: bool = False):
    """Max pooling over (kh, kw) windows, as ``torch.nn.functional.max_pool2d``.

    ``stride`` defaults to ``kernel_size``; the padding is -inf (at most half the kernel).
    A tie sends the whole gradient to the first maximum of the window (row-major), as PyTorch.
    Example::

        x = minivit.randn(2, 3, 8, 8)
        max_pool2d(x, 2).shape             # (2, 3, 4, 4)
    """
    if return_indices:
        raise NotImplementedError("max_pool2d: return_indices=True is not implemented")
    kernel, stride, padding = _pool_args("max_pool2d", kernel_size, stride, padding, ceil_mode)
    return MaxPool2d.apply(x, kernel=kernel, stride=stride, padding=padding,
                           dilation=pair(dilation, "dilation", "max_pool2d", 1))


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: int | None = None):
    """Average pooling over (kh, kw) windows, as ``torch.nn.functional.avg_pool2d``.

    The zero padding counts in the divisor unless ``count_include_pad=False``. Example::

        x = minivit.randn(2, 3, 8, 8)
        avg_pool2d(x, 3, stride=2, padding=1).shape      # (2, 3, 4, 4)
    """
    kernel, stride, padding = _pool_args("avg_pool2d", kernel_size, stride, padding, ceil_mode)
    if divisor_override is not None and (not isinstance(divisor_override, int)
                                         or divisor_override < 1):
        raise ValueError(f"avg_pool2d: divisor_override must be a positive int, got "
                         f"{divisor_override!r}")
    return AvgPool2d.apply(x, kernel=kernel, stride=stride, padding=padding,
                           count_include_pad=bool(count_include_pad),
                           divisor_override=divisor_override)


def adaptive_avg_pool2d(x, output_size):
    """Average pooling to a fixed (Ho, Wo) output, as ``torch.nn.functional.adaptive_avg_pool2d``.

    ``output_size`` is an int or a pair (``None`` keeps that input size). Example::

        x = minivit.randn(2, 3, 7, 7)
        adaptive_avg_pool2d(x, 1).shape    # (2, 3, 1, 1)
    """
    items = tuple(output_size) if isinstance(output_size, (tuple, list)) else (output_size,) * 2
    if len(items) != 2 or not all(v is None or (isinstance(v, int) and v >= 1) for v in items):
        raise ValueError(f"adaptive_avg_pool2d: output_size must be a positive int or a pair "
                         f"of them (or None), got {output_size!r}")
    return AdaptiveAvgPool2d.apply(x, output_size=items)

"""2-D pooling on NCHW arrays, as ``torch.nn.functional``: max, average and adaptive average.

Windows are strided views of the input padded once (no Python loop over pixels); the backward
passes add the gradient back with one strided slice addition per kernel offset (kh*kw of them).
Only ``ceil_mode=False`` (PyTorch's default) is implemented.
"""
from __future__ import annotations

import numpy as np

from ...autograd import backend
from ...autograd.function import Function
from .conv import check_input, out_size, pad2d, pair, unpad2d, window_slice

xp_of = backend.get_array_module


def _windows(xpad, kernel, stride, dilation, ho, wo):
    """(N, C, Ho, Wo, kh, kw) strided view: window (y, x) of the padded input."""
    sn, sc, sy, sx = xpad.strides
    return backend.as_strided(xpad, xpad.shape[:2] + (ho, wo) + tuple(kernel),
                              (sn, sc, sy * stride[0], sx * stride[1],
                               sy * dilation[0], sx * dilation[1]))


def _check_pool(x, kernel, stride, padding, dilation):
    """Validate the geometry; return the output height and width."""
    check_input(x, kernel, padding, dilation)
    for k, p, d in zip(kernel, padding, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"padding {padding} must be at most half of the (dilated) kernel "
                             f"size {kernel} (dilation {dilation}), as in PyTorch")
    return (out_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0]),
            out_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1]))


def _scatter_windows(gwin, g, shape, kernel, stride, padding, dilation):
    """Adjoint of ``_windows``: add ``gwin(i, j)`` (an array shaped like the output gradient
    ``g``) back to the input positions that kernel offset (i, j) read, one strided slice
    per offset; return the gradient of the unpadded input."""
    n, c, h, w = shape
    ho, wo = g.shape[2:]
    dxpad = xp_of(g).zeros((n, c, h + 2 * padding[0], w + 2 * padding[1]), dtype=g.dtype)
    for i in range(kernel[0]):
        rows = window_slice(i, dilation[0], stride[0], ho)
        for j in range(kernel[1]):
            dxpad[:, :, rows, window_slice(j, dilation[1], stride[1], wo)] += gwin(i, j)
    return unpad2d(dxpad, padding)


class MaxPool2d(Function):
    """Max over each window. Ties: the whole gradient goes to the first maximum in the
    window's row-major order (as PyTorch); a NaN in a window is its maximum."""

    name = "max_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        ho, wo = _check_pool(x, kernel, stride, padding, dilation)
        xp = xp_of(x)
        xpad = pad2d(x, padding, value=-np.inf)
        # copy the windows to (N, C, Ho, Wo, kh*kw) so argmax runs over one contiguous axis
        win = xp.ascontiguousarray(_windows(xpad, kernel, stride, dilation, ho, wo))
        win = win.reshape(win.shape[:4] + (-1,))
        arg = win.argmax(axis=-1)[..., None]          # first maximum (or first NaN)
        y = xp.take_along_axis(win, arg, axis=-1)[..., 0]
        ctx.save_for_backward(arg[..., 0])
        ctx.geometry = (x.shape, kernel, stride, padding, dilation)
        return y

    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        shape, kernel, stride, padding, dilation = ctx.geometry
        xp = xp_of(g)
        zero = xp.zeros((), dtype=g.dtype)
        return _scatter_windows(lambda i, j: xp.where(arg == i * kernel[1] + j, g, zero), g,
                                shape, kernel, stride, padding, dilation)


class AvgPool2d(Function):
    """Mean over each window; the divisor counts the padding unless ``count_include_pad`` is
    False (then only the input elements in the window), or is ``divisor_override``."""

    name = "avg_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), count_include_pad=True,
                divisor_override=None):
        ho, wo = _check_pool(x, kernel, stride, padding, (1, 1))
        xp = xp_of(x)
        total = _windows(pad2d(x, padding), kernel, stride, (1, 1), ho, wo).sum(axis=(4, 5))
        if divisor_override is not None:
            divisor = divisor_override
        elif count_include_pad or padding == (0, 0):
            divisor = kernel[0] * kernel[1]
        else:  # elements of the window inside the input: (rows inside) * (columns inside)
            rows = _inside(x.shape[2], ho, kernel[0], stride[0], padding[0])
            cols = _inside(x.shape[3], wo, kernel[1], stride[1], padding[1])
            divisor = xp.asarray(np.outer(rows, cols), dtype=x.dtype)
        ctx.scale = 1.0 / divisor if isinstance(divisor, int) else (1.0 / divisor).astype(x.dtype)
        ctx.geometry = (x.shape, kernel, stride, padding, (1, 1))
        return (total * ctx.scale).astype(x.dtype, copy=False)

    def backward(ctx, g):
        gs = (g * ctx.scale).astype(g.dtype, copy=False)
        return _scatter_windows(lambda i, j: gs, g, *ctx.geometry)


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

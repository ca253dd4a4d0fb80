"""2-D pooling on NCHW arrays, as ``torch.nn.functional``: max, average and adaptive average.

Max and average pooling read the same windows as a convolution, so their reference bodies
use conv.py's one ``im2col``: cols[n, c, i, j, y, x] = xpad[n, c, y s + i d, x s + j d]
(padding -inf for max, 0 for average), then reduce over the window axes (i, j)::

    max:      y = max_(i,j) cols,          dcols = g at the first maximum of each window, else 0
    average:  y = Σ_(i,j) cols / divisor,  dcols = g / divisor at every window position

and backward adds dcols back where the windows were read (``col2im``). Ties send the whole
gradient to the first maximum in the window's row-major order (as PyTorch). The fast bodies
(a batch-innermost layout, one strided slice per kernel offset) are in
``minivit/kernels/cpu_pooling.py``. Only ``ceil_mode=False`` (PyTorch's default) is
implemented.
"""
from __future__ import annotations

import numpy as np

from ...autograd import backend
from ...autograd.function import Function
from .conv import check_input, col2im, im2col, pair

xp_of = backend.get_array_module


def check_pool(x, kernel, padding, dilation) -> None:
    """Validate the pooling geometry (PyTorch's rules: the padding at most half the kernel)."""
    check_input(x, kernel, padding, dilation)
    for k, p, d in zip(kernel, padding, dilation):
        if p > (d * (k - 1) + 1) // 2:
            raise ValueError(f"padding {padding} must be at most half of the (dilated) kernel "
                             f"size {kernel} (dilation {dilation}), as in PyTorch")


def _pads(padding):
    return (padding[0], padding[0]), (padding[1], padding[1])


class MaxPool2d(Function):
    """Max over each window (module docstring). A NaN in a window makes the output NaN.
    Fast body: minivit/kernels/cpu_pooling.py."""

    name = "max_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
        check_pool(x, kernel, padding, dilation)
        ctx.geo = (x.shape, stride, _pads(padding), dilation)
        cols = im2col(x, kernel, stride, _pads(padding), dilation, value=-np.inf)
        n, c, kh, kw, ho, wo = cols.shape
        cols = cols.reshape(n, c, kh * kw, ho, wo)
        ctx.save_for_backward(cols.argmax(axis=2))       # the first maximum (or NaN) wins
        ctx.kernel = (kh, kw)
        return cols.max(axis=2)

    def backward(ctx, g):
        (arg,) = ctx.saved_tensors
        xp = xp_of(g)
        n, c, ho, wo = g.shape
        kh, kw = ctx.kernel
        winner = xp.arange(kh * kw).reshape(1, 1, -1, 1, 1) == arg[:, :, None]
        dcols = (winner * g[:, :, None]).reshape(n, c, kh, kw, ho, wo)
        return col2im(dcols, *ctx.geo)


def avg_divisor(geo_hw, out_hw, kernel, stride, padding, count_include_pad, divisor_override):
    """1 / divisor of each output cell: a number, or (Ho, Wo) NumPy floats when the padding does
    not count (then the divisor is the number of the window's positions inside the input)."""
    if divisor_override is not None:
        return 1.0 / divisor_override
    if count_include_pad or tuple(padding) == (0, 0):
        return 1.0 / (kernel[0] * kernel[1])
    inside = np.outer(_inside(geo_hw[0], out_hw[0], kernel[0], stride[0], padding[0]),
                      _inside(geo_hw[1], out_hw[1], kernel[1], stride[1], padding[1]))
    return 1.0 / inside


class AvgPool2d(Function):
    """Mean over each window; the divisor counts the padding unless ``count_include_pad`` is
    False (then only the input elements in the window), or is ``divisor_override``.
    Fast body: minivit/kernels/cpu_pooling.py."""

    name = "avg_pool2d"

    def forward(ctx, x, kernel=(1, 1), stride=(1, 1), padding=(0, 0), count_include_pad=True,
                divisor_override=None):
        check_pool(x, kernel, padding, (1, 1))
        ctx.geo = (x.shape, stride, _pads(padding), (1, 1))
        cols = im2col(x, kernel, stride, _pads(padding), (1, 1))
        scale = avg_divisor(x.shape[2:], cols.shape[-2:], kernel, stride, padding,
                            count_include_pad, divisor_override)
        ctx.scale = scale if np.isscalar(scale) else xp_of(x).asarray(scale, dtype=x.dtype)
        ctx.cols_shape = cols.shape
        return cols.sum(axis=(2, 3)) * ctx.scale

    def backward(ctx, g):
        xp = xp_of(g)
        gs = (g * ctx.scale)[:, :, None, None]
        return col2im(xp.broadcast_to(gs, ctx.cols_shape), *ctx.geo)


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

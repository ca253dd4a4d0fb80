"""2-D convolution, as ``torch.nn.functional.conv2d``, written as im2col and one matrix
product: the one im2col, used by every convolution and pooling reference body.

With xpad the input zero-padded, output pixel (y, x) of output channel o sums the kernel
against the window of xpad starting at (y s, x s), its taps d apart (s stride, d dilation)::

    y[n, o, y, x] = b[o] + Σ_(c, i, j) W[o, c, i, j] xpad[n, c, y s + i d, x s + j d]

im2col copies every window into a column, cols[n, c, i, j, y, x] = xpad[n, c, y s + i d,
x s + j d] (one strided slice per kernel offset (i, j)); then, per group g of channels, with
cols viewed as (N, G, Cg·kh·kw, Ho·Wo) and W as (G, O/G, Cg·kh·kw), the convolution is a
matrix product, and its backward the two products of a matmul's backward::

    y[n, g] = W[g] @ cols[n, g]
    dW[g] = Σ_n dy[n, g] @ cols[n, g]^T,    dcols[n, g] = W[g]^T @ dy[n, g],
    dx = col2im(dcols)  (each column added back where im2col read it),   db[o] = Σ dy[:, o]

A depthwise convolution is the case groups = C (one input channel per group).
The fast bodies (a batch-innermost layout, channels-last im2col, depthwise multiply-adds
without a GEMM, a pointwise path) are in ``minivit/kernels/cpu_conv.py``.
"""
from __future__ import annotations

from ...autograd import backend
from ...autograd.autocast import cast_inputs
from ...autograd.flops import add_flops
from ...autograd.function import Function

xp_of = backend.get_array_module

__all__ = ["conv2d", "Conv2d", "im2col", "col2im"]


# --- geometry helpers (shared with pooling and the channels-last convolutions) --------------

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


# --- im2col: the one window copy ------------------------------------------------------------

def im2col(x, kernel, stride, padding, dilation, value: float = 0.0):
    """(N, C, H, W) -> columns (N, C, kh, kw, Ho, Wo), cols[n, c, i, j, y, x] =
    xpad[n, c, y sh + i dh, x sw + j dw], with xpad = x padded by ``padding`` =
    ((top, bottom), (left, right)) with ``value`` (0 for convolutions, -inf for max pooling)."""
    xp = xp_of(x)
    (kh, kw), (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = kernel, stride, padding, dilation
    xpad = xp.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=value)
    ho = out_size(xpad.shape[2], kh, sh, 0, dh)
    wo = out_size(xpad.shape[3], kw, sw, 0, dw)
    cols = xp.empty(x.shape[:2] + (kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, :, i, j] = xpad[:, :, window_slice(i, dh, sh, ho), window_slice(j, dw, sw, wo)]
    return cols


def col2im(dcols, x_shape, stride, padding, dilation):
    """The adjoint of ``im2col``: every column added back where im2col read it,
    dx[n, c, y sh + i dh - pt, x sw + j dw - pl] += dcols[n, c, i, j, y, x]."""
    xp = xp_of(dcols)
    n, c, kh, kw, ho, wo = dcols.shape
    (sh, sw), ((pt, pb), (pl, pr)), (dh, dw) = stride, padding, dilation
    h, w = x_shape[2:]
    dxpad = xp.zeros((n, c, h + pt + pb, w + pl + pr), dtype=dcols.dtype)
    for i in range(kh):
        for j in range(kw):
            dxpad[:, :, window_slice(i, dh, sh, ho), window_slice(j, dw, sw, wo)] += dcols[:, :, i, j]
    return dxpad[:, :, pt:pt + h, pl:pl + w]


# --- the convolution as a matrix product ------------------------------------------------------

def conv_forward(x, weight, bias, stride, padding, dilation, groups):
    """(y, cols) of the module docstring's convolution; ``padding`` ((top, bottom), (left, right))."""
    xp = xp_of(x)
    (n, c), (o, cg, kh, kw) = x.shape[:2], weight.shape
    cols = im2col(x, (kh, kw), stride, padding, dilation)
    ho, wo = cols.shape[-2:]
    c4 = cols.reshape(n, groups, cg * kh * kw, ho * wo)
    w3 = weight.reshape(groups, o // groups, cg * kh * kw)
    y = xp.matmul(w3, c4).reshape(n, o, ho, wo)              # y[n, g] = W[g] @ cols[n, g]
    add_flops(2 * y.size * cg * kh * kw)
    if bias is not None:
        y = y + bias.reshape(1, o, 1, 1)
    return y, cols


def conv_backward(g, cols, weight, x_shape, stride, padding, dilation, groups, need):
    """(dx, dW, db) of ``conv_forward`` from dy = g; ``need``: which of the three to compute."""
    xp = xp_of(g)
    n, o, ho, wo = g.shape
    g4 = g.reshape(n, groups, o // groups, ho * wo)
    c4 = cols.reshape(n, groups, -1, ho * wo)
    w3 = weight.reshape(groups, o // groups, -1)
    gx = gw = gb = None
    if need[0]:
        dcols = xp.matmul(xp.swapaxes(w3, 1, 2), g4)          # W[g]^T @ dy[n, g]
        gx = col2im(dcols.reshape(cols.shape), x_shape, stride, padding, dilation)
    if need[1]:
        gw = xp.matmul(g4, xp.swapaxes(c4, 2, 3)).sum(axis=0).reshape(weight.shape)
    if need[2]:
        gb = g.sum(axis=(0, 2, 3))
    return gx, gw, gb


class Conv2d(Function):
    """y = conv2d(x, W) + b on NCHW arrays (the module docstring). Fast body:
    minivit/kernels/cpu_conv.py."""

    name = "conv2d"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                groups=1):
        _check_conv(x, weight, bias, padding, dilation, groups)
        pads = ((padding[0], padding[0]), (padding[1], padding[1]))
        y, cols = conv_forward(x, weight, bias, stride, pads, dilation, groups)
        ctx.geo = (x.shape, stride, pads, dilation, groups)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(cols, weight)
        return y

    def backward(ctx, g):
        cols, weight = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad) + (False,) * (3 - len(ctx.needs_input_grad))
        gx, gw, gb = conv_backward(g, cols, weight, *ctx.geo, need)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


class ChannelsLastConv(Function):
    """The reference body of a convolution of channels-last arrays, x (N, H, W, C) ->
    (N, Ho, Wo, O): the NCHW convolution above on the transposed arrays (the same numbers)."""

    def conv(ctx, x, weight, bias, stride, padding, dilation, groups):
        xt = x.transpose(0, 3, 1, 2)
        y, cols = conv_forward(xt, weight, bias, stride, padding, dilation, groups)
        ctx.geo = (xt.shape, stride, padding, dilation, groups)
        ctx.has_bias = bias is not None
        ctx.save_for_backward(cols, weight)
        return y.transpose(0, 2, 3, 1)

    def backward(ctx, g):
        cols, weight = ctx.saved_tensors
        need = tuple(ctx.needs_input_grad) + (False,) * (3 - len(ctx.needs_input_grad))
        gx, gw, gb = conv_backward(g.transpose(0, 3, 1, 2), cols, weight, *ctx.geo, need)
        gx = None if gx is None else gx.transpose(0, 2, 3, 1)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


# under minivit.autocast x, the weight and the bias are rounded to bf16/fp16, and the output
# (minivit/autograd/autocast.py)
cast_inputs(Conv2d, None)


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

"""2-D convolution on NCHW arrays, as ``torch.nn.functional.conv2d``.

General path: im2col on a strided view of the padded input, then one GEMM per group::

    cols[c, i, j, n, y, x] = xpad[n, c, y*s + i*d, x*s + j*d]     (one copy of a strided view)
    out[o, (n, y, x)]     = W[o, (c, i, j)] @ cols[(c, i, j), (n, y, x)]
    dW    = dout @ cols^T          dcols = W^T @ dout
    dxpad = col2im(dcols)          (kh*kw strided slice additions, one per kernel offset)

The column matrix is (C*kh*kw, N*Ho*Wo): rows follow the weight's own (in, kh, kw) order,
so W reshapes to (out, in*kh*kw) without a copy and the product is a single large 2-D GEMM
with contiguous operands (with groups: a batch of ``groups`` such GEMMs).

Depthwise path (groups == in_channels > 1, out = k*in): no GEMM at all. For each kernel offset
(i, j) the output accumulates an elementwise product of a strided slice of the input::

    out[n, c*k + m] += W[c*k + m, 0, i, j] * xpad[n, c, i*d : : s, j*d : : s]

(a grouped GEMM with one input channel per group is many times slower on the CPU, Chainer #5403).
"""
from __future__ import annotations

from ...autograd import backend
from ...autograd.function import Function

xp_of = backend.get_array_module


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


def pad2d(x, padding: tuple[int, int], value: float = 0.0):
    """Pad the last two axes once (a new array only when there is padding)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    xp = xp_of(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * ph, w + 2 * pw), value, dtype=x.dtype)
    out[:, :, ph:ph + h, pw:pw + w] = x
    return out


def unpad2d(xpad, padding: tuple[int, int]):
    """Crop the padding off a gradient (contiguous, so the caller gets a plain array)."""
    ph, pw = padding
    if ph == 0 and pw == 0:
        return xpad
    h, w = xpad.shape[2] - 2 * ph, xpad.shape[3] - 2 * pw
    return xp_of(xpad).ascontiguousarray(xpad[:, :, ph:ph + h, pw:pw + w])


def check_input(x, kernel: tuple[int, int], padding, dilation) -> None:
    """Validate an NCHW input against the (dilated) kernel and the padding.

    Raised inside a Function's forward: ``Function.apply`` prefixes the op's name."""
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    hp, wp = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if eh > hp or ew > wp:
        raise ValueError(f"kernel {kh}x{kw} (dilated extent {eh}x{ew}) is larger than the "
                         f"padded input {hp}x{wp} (input {tuple(x.shape)}, padding {padding})")


# --- the conv op ---------------------------------------------------------------------------

class Conv2d(Function):
    """y = conv2d(x, W) + b on NCHW arrays; grads for x, W and b. See the module docstring."""

    name = "conv2d"

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1),
                groups=1):
        n, c, h, w = _check_conv(x, weight, bias, padding, dilation, groups)
        o, _, kh, kw = weight.shape
        (sh, sw), (dh, dw) = stride, dilation
        ho = out_size(h, kh, sh, padding[0], dh)
        wo = out_size(w, kw, sw, padding[1], dw)
        ctx.geometry = (x.shape, kh, kw, stride, padding, dilation, groups, ho, wo)
        ctx.has_bias = bias is not None
        xpad = pad2d(x, padding)
        ctx.depthwise = groups == c and groups > 1
        if ctx.depthwise:
            ctx.save_for_backward(xpad, weight)
            y = _depthwise_forward(xpad, weight, ctx.geometry)
            if bias is not None:
                y += bias.reshape(1, o, 1, 1)
            return y
        cols = _im2col(xpad, ctx.geometry)                        # (G, Cg*kh*kw, N*Ho*Wo)
        ctx.save_for_backward(cols, weight)
        out = xp_of(x).matmul(weight.reshape(groups, o // groups, -1), cols)  # (G, O/G, M)
        # (O, N, Ho, Wo) -> NCHW: one transposing copy, with the bias added on the way
        out = out.reshape(o, n, ho, wo).transpose(1, 0, 2, 3)
        y = xp_of(x).empty((n, o, ho, wo), dtype=x.dtype)
        if bias is not None:
            xp_of(x).add(out, bias.reshape(1, o, 1, 1), out=y)
        else:
            y[...] = out
        return y

    def backward(ctx, g):
        xpad_or_cols, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xp = xp_of(g)
        gb = None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(axis=(0, 2, 3))
        if ctx.depthwise:
            gx, gw = _depthwise_backward(g, xpad_or_cols, weight, ctx.geometry, need_x, need_w)
        else:
            cols = xpad_or_cols
            groups = ctx.geometry[6]
            o = weight.shape[0]
            # dout as (G, O/G, N*Ho*Wo): the forward's transposing copy, undone
            g2 = xp.ascontiguousarray(g.transpose(1, 0, 2, 3)).reshape(groups, o // groups, -1)
            w3 = weight.reshape(groups, o // groups, -1)
            gx = gw = None
            if need_w:
                gw = xp.matmul(g2, cols.transpose(0, 2, 1)).reshape(weight.shape)
            if need_x:
                gx = _col2im(xp.matmul(w3.transpose(0, 2, 1), g2), ctx.geometry)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


def _check_conv(x, weight, bias, padding, dilation, groups):
    if x.ndim != 4:
        raise ValueError(f"expected a 4-D input (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"expected a 4-D weight (out_channels, in_channels/groups, kh, kw), "
                         f"got shape {tuple(weight.shape)}")
    n, c, h, w = x.shape
    o, cg = weight.shape[:2]
    if c % groups or o % groups:
        raise ValueError(f"groups={groups} must divide both in_channels ({c}) and out_channels "
                         f"({o}); input {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if cg * groups != c:
        raise ValueError(f"input {tuple(x.shape)} has {c} channels but weight "
                         f"{tuple(weight.shape)} with groups={groups} expects "
                         f"{cg}*{groups}={cg * groups}")
    if bias is not None and tuple(bias.shape) != (o,):
        raise ValueError(f"bias of shape {tuple(bias.shape)} does not match out_channels={o} "
                         f"(expected shape ({o},))")
    check_input(x, weight.shape[2:], padding, dilation)
    return n, c, h, w


# --- general path: im2col, GEMM, col2im ----------------------------------------------------

def _im2col(xpad, geometry):
    """(G, Cg*kh*kw, N*Ho*Wo) columns: one copy of a strided view of the padded input."""
    (n, c, _, _), kh, kw, (sh, sw), _, (dh, dw), groups, ho, wo = geometry
    sn, sc, sy, sx = xpad.strides
    view = backend.as_strided(xpad, (c, kh, kw, n, ho, wo),
                              (sc, sy * dh, sx * dw, sn, sy * sh, sx * sw))
    return xp_of(xpad).ascontiguousarray(view).reshape(groups, (c // groups) * kh * kw, -1)


def _col2im(dcols, geometry):
    """Gradient of the padded input: add each kernel offset's columns back where they came from."""
    (n, c, h, w), kh, kw, (sh, sw), (ph, pw), (dh, dw), _, ho, wo = geometry
    dcols = dcols.reshape(c, kh, kw, n, ho, wo)
    dxpad = xp_of(dcols).zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=dcols.dtype)
    for i in range(kh):
        rows = window_slice(i, dh, sh, ho)
        for j in range(kw):
            dxpad[:, :, rows, window_slice(j, dw, sw, wo)] += dcols[:, i, j].transpose(1, 0, 2, 3)
    return unpad2d(dxpad, (ph, pw))


# --- depthwise path: multiply-adds over kernel offsets -------------------------------------

def _depthwise_forward(xpad, weight, geometry):
    (n, c, _, _), kh, kw, (sh, sw), _, (dh, dw), _, ho, wo = geometry
    k = weight.shape[0] // c                      # channel multiplier
    wd = weight.reshape(c, k, kh, kw)
    out = xp_of(xpad).zeros((n, c, k, ho, wo), dtype=xpad.dtype)
    for i in range(kh):
        rows = window_slice(i, dh, sh, ho)
        for j in range(kw):
            xs = xpad[:, :, None, rows, window_slice(j, dw, sw, wo)]   # (N, C, 1, Ho, Wo)
            out += xs * wd[:, :, i, j, None, None]
    return out.reshape(n, c * k, ho, wo)


def _depthwise_backward(g, xpad, weight, geometry, need_x, need_w):
    (n, c, h, w), kh, kw, (sh, sw), padding, (dh, dw), _, ho, wo = geometry
    xp = xp_of(g)
    k = weight.shape[0] // c
    wd = weight.reshape(c, k, kh, kw)
    g5 = g.reshape(n, c, k, ho, wo)
    dxpad = xp.zeros(xpad.shape, dtype=g.dtype) if need_x else None
    gw = xp.empty((c, k, kh, kw), dtype=g.dtype) if need_w else None
    for i in range(kh):
        rows = window_slice(i, dh, sh, ho)
        for j in range(kw):
            cols = window_slice(j, dw, sw, wo)
            if need_x:
                dxpad[:, :, rows, cols] += (g5 * wd[:, :, i, j, None, None]).sum(axis=2)
            if need_w:
                gw[:, :, i, j] = xp.einsum("ncmyx,ncyx->cm", g5, xpad[:, :, rows, cols])
    gx = unpad2d(dxpad, padding) if need_x else None
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

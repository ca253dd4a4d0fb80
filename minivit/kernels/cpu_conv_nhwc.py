"""Fast bodies of the channels-last convolutions, ``conv2d_nhwc`` and
``depthwise_conv2d_nhwc`` (the reference bodies are in ``minivit/nn/functional/conv.py``):
no layout copies, the windows as strided slices of a zero-padded copy made a few images at a
time while they sit in cache, the images shared among the CPU threads.
"""
from __future__ import annotations

from ..autograd import backend
from ..autograd.flops import add_flops
from ..nn.functional.conv import window_slice
from ..nn.functional.conv_nhwc import Conv2dNHWC, check_conv_nhwc
from ..nn.functional.depthwise import DepthwiseConv2dNHWC, check_depthwise, check_nhwc
from . import cuda, cuda_conv, parallel, register

xp_of = backend.get_array_module

CACHE_BLOCK = 1 << 17   # numbers per operand block (512 KiB of float32)
COLS_CHUNK = 1 << 21    # dx's im2col numbers built at a time on the CPU (8 MiB of float32)


def windows(kernel, stride, dilation, out_hw) -> list[tuple[slice, slice]]:
    """(rows, cols) of the padded input read by each kernel offset (i, j), row-major."""
    (kh, kw), (sh, sw), (dh, dw), (ho, wo) = kernel, stride, dilation, out_hw
    return [(window_slice(i, dh, sh, ho), window_slice(j, dw, sw, wo))
            for i in range(kh) for j in range(kw)]


def _image_blocks(n: int, per_image: int, device: str) -> list[slice]:
    """Runs of images of about CACHE_BLOCK numbers each on the CPU; all at once on the GPU."""
    step = max(1, CACHE_BLOCK // max(per_image, 1)) if device == "cpu" else n
    return [slice(b, b + step) for b in range(0, n, step)]


@register(DepthwiseConv2dNHWC)
class DepthwiseConv2dNHWCFast(DepthwiseConv2dNHWC):
    """On the CPU, no copies but one zero-padded input: the kh*kw windows are one strided
    view of it, (N, Ho, Wo, kh, kw, C) with the same memory read kh*kw times, and each
    product-and-sum is one ``einsum`` sweep (no product array is written), a few images at a
    time on all CPU threads::

        out[n, y, x, c]  = Σ_(i,j) xpad[n, y*s + i*d, x*s + j*d, c] W[c, 0, i, j]
        dW[c, 0, i, j]   = Σ_(n,y,x) dout[n, y, x, c] xpad[n, y*s + i*d, x*s + j*d, c]
        dx (stride 1)    = the same conv of dout, zero-padded by (k-1)d - p, with W flipped

    With a stride, dx is the scatter instead: dxpad[window(i, j)] += W[c, 0, i, j] dout, per
    kernel offset. Each block's weight-gradient sums are kept apart and added in block order
    at the end, so no result depends on the number of threads. (The GPU runs the per-offset
    loop: one multiply-add over whole rows per offset.)
    """

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        check_depthwise(x, weight, bias)
        check_nhwc(x, weight.shape[2:], padding, stride, dilation)
        out, xpad, taps, ctx.geo = depthwise_forward(x, weight, bias, stride, padding, dilation)
        ctx.save_for_backward(xpad, taps)
        ctx.has_bias = bias is not None
        return out

    def backward(ctx, g):
        gx, gw, gb = depthwise_backward(g, *ctx.saved_tensors, ctx.geo, ctx.needs_input_grad)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


def depthwise_forward(x, weight, bias, stride, padding, dilation):
    """(out, xpad, taps, geometry) of the depthwise conv of a checked (N, H, W, C) x; the NCHW
    conv's depthwise path (``cpu_conv``) uses it too: the one fast depthwise convolution.
    ``taps`` is the weight as (kh, kw, C) on the CPU. On the GPU the fused kernels of
    ``cuda_conv`` take over (one launch; they return (out, x, W, their geometry)); with fused
    kernels switched off the GPU runs the per-offset loop below, ``taps`` as (kh*kw, Wo, C)."""
    if cuda.enabled(x):
        return cuda_conv.depthwise_fwd(x, weight, bias, stride, padding, dilation)
    n, h, w, c = x.shape
    kh, kw = weight.shape[2:]
    ho, wo = check_nhwc(x, (kh, kw), padding, stride, dilation)
    (pt, pb), (pl, pr) = padding
    add_flops(2 * n * ho * wo * c * kh * kw)
    xp = xp_of(x)
    device = backend.device_of(x)
    xpad = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)
    out = xp.empty((n, ho, wo, c), dtype=x.dtype)
    offsets = windows((kh, kw), stride, dilation, (ho, wo))
    if device == "cpu":
        taps = xp.ascontiguousarray(weight.reshape(c, kh, kw).transpose(1, 2, 0))  # (kh, kw, C)
        blocks = _image_blocks(n, (h + pt + pb) * (w + pl + pr) * c, device)
        _einsum_windows(x, xpad, taps, bias, padding, stride, dilation, out, blocks)
        return out, xpad, taps, (x.shape, weight.shape, padding, stride, dilation, offsets,
                                 blocks)
    # the GPU: one multiply-add per kernel offset over whole rows, all images at once.
    # (kh*kw, Wo, C): each tap's C weights repeated along a row of the output, so that a
    # product with a window runs as one loop over a whole output row of Wo*C numbers
    taps = xp.ascontiguousarray(xp.broadcast_to(weight.reshape(c, kh * kw).T[:, None, :],
                                                (kh * kw, wo, c)))
    blocks = _image_blocks(n, ho * wo * c, device)

    def block(blk):
        o, xb = out[blk], xpad[blk]
        _pad_into(xb, x[blk], pt, pl)
        tmp = xp.empty_like(o)
        for t, (rows, cols) in enumerate(offsets):
            if t == 0:
                xp.multiply(xb[:, rows, cols], taps[0], out=o)
            else:
                o += xp.multiply(xb[:, rows, cols], taps[t], out=tmp)
        if bias is not None:
            o += bias

    parallel.for_each(block, blocks, threaded=_threaded(out))
    geo = (x.shape, weight.shape, padding, stride, dilation, offsets, blocks)
    return out, xpad, taps, geo


def depthwise_backward(g, xpad, taps, geo, need):
    """(dx, dW, db) of ``depthwise_forward`` (each None where ``need`` says so)."""
    if cuda_conv.ran_on_gpu(geo):
        return cuda_conv.depthwise_bwd(g, xpad, taps, geo, need)
    (n, h, w, c), w_shape, padding, stride, dilation, offsets, blocks = geo
    kh, kw = w_shape[2:]
    xp = xp_of(g)
    g = xp.ascontiguousarray(g)
    need_x, need_w = need[0], need[1]
    cpu = backend.device_of(g) == "cpu"
    gw = gx = gb = None
    if cpu and need_w:   # per block Σ dout * window(i, j), one einsum sweep, no product array
        view = _window_view(xpad, (kh, kw), stride, dilation, g.shape[1:3])
        partial = xp.empty((len(blocks), kh, kw, c), dtype=g.dtype)
        parallel.for_each(lambda k: xp.einsum("nyxijc,nyxc->ijc", view[blocks[k]],
                                              g[blocks[k]], out=partial[k]),
                          range(len(blocks)), threaded=_threaded(g))
        gw = partial.sum(axis=0).transpose(2, 0, 1).reshape(w_shape)
    # dx at stride 1: the stride-1 conv of dout, padded by (k-1)d - p, with W flipped
    back = (_transposed_conv_padding(padding, (kh, kw), dilation)
            if cpu and tuple(stride) == (1, 1) else None)
    if need_x and back is not None:
        (bt, bb), (bl, br) = back
        gpad = xp.empty((n, g.shape[1] + bt + bb, g.shape[2] + bl + br, c), dtype=g.dtype)
        gx = xp.empty((n, h, w, c), dtype=g.dtype)
        _einsum_windows(g, gpad, taps[::-1, ::-1], None, back, (1, 1), dilation, gx,
                        _image_blocks(n, gpad[0].size, "cpu"))
    scatter_x, scatter_w = need_x and back is None, need_w and not cpu
    if scatter_x or scatter_w:
        sx, sw = _depthwise_backward_scatter(g, xpad, taps, geo, scatter_x, scatter_w)
        gx, gw = (sx if scatter_x else gx), (sw if scatter_w else gw)
    if len(need) > 2 and need[2]:
        gb = parallel.column_sums(g.reshape(-1, c))
    return gx, gw, gb


def _depthwise_backward_scatter(g, xpad, taps, geo, need_x, need_w):
    """dx by the scatter, dxpad[window(i, j)] += W[c, 0, i, j] dout per kernel offset (any
    stride), and on the GPU dW per offset; a few images at a time."""
    (n, h, w, c), w_shape, ((pt, _), (pl, _)), _, _, offsets, blocks = geo
    xp = xp_of(g)
    cpu = backend.device_of(g) == "cpu"
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
            if need_w:
                partial[k, t] = xp.einsum("nhwc,nhwc->c", gb, xb[:, rows, cols])
            if need_x:
                tap = taps[t // taps.shape[1], t % taps.shape[1]] if cpu else taps[t]
                dxb[:, rows, cols] += xp.multiply(gb, tap, out=tmp)
        if need_x:
            gx[blk] = dxb[:, pt:pt + h, pl:pl + w]

    parallel.for_each(block, range(len(blocks)), threaded=_threaded(g))
    gw = partial.sum(axis=0).T.reshape(w_shape) if need_w else None
    return gx, gw


def _einsum_windows(x, xpad, taps, bias, padding, stride, dilation, out, blocks):
    """out = Σ_(i,j) window(i, j) of xpad * taps[i, j] (+ bias) on the CPU, block by block:
    the block's padded copy, then one einsum over its window view while it is in cache."""
    (pt, _), (pl, _) = padding
    view = _window_view(xpad, taps.shape[:2], stride, dilation, out.shape[1:3])

    def block(blk):
        _pad_into(xpad[blk], x[blk], pt, pl)
        xp_of(x).einsum("nyxijc,ijc->nyxc", view[blk], taps, out=out[blk])
        if bias is not None:
            out[blk] += bias

    parallel.for_each(block, blocks, threaded=_threaded(out))


def _window_view(xpad, kernel, stride, dilation, out_hw):
    """The (N, Ho, Wo, kh, kw, C) view of the padded input whose [n, y, x, i, j] is the pixel
    under kernel offset (i, j) of output (y, x): a strided view, no copy."""
    s = xpad.strides
    (sh, sw), (dh, dw) = stride, dilation
    shape = (xpad.shape[0], *out_hw, *kernel, xpad.shape[3])
    strides = (s[0], s[1] * sh, s[2] * sw, s[1] * dh, s[2] * dw, s[3])
    return xp_of(xpad).lib.stride_tricks.as_strided(xpad, shape, strides)


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


@register(Conv2dNHWC)
class Conv2dNHWCFast(Conv2dNHWC):
    """im2col in the channels-last layout itself::

        cols[n, y, x, i, j, c] = xpad[n, y*s + i*d, x*s + j*d, c]         (N*Ho*Wo, kh*kw*C)
        out[(n, y, x), o]      = cols @ Wm^T + b,   Wm[o, (i, j, c)] = W[o, c, i, j]
        dWm = dout^T @ cols      dcols = dout @ Wm
        dxpad[n, y*s + i*d, x*s + j*d, c] += dcols[n, y, x, i, j, c]   (col2im, one add per (i, j))

    ``Wm`` is a small transposed copy of the weight. A 1x1 stride-1 conv without padding is a
    plain Linear on the (N*H*W, C) rows. Without dilation along W, the kw pixels of one kernel
    row and all their channels lie side by side in memory, so im2col copies one run of kw*C
    numbers per kernel row (kh copies, not kh*kw). At stride 1, dx is the same kind of conv of
    dout, zero-padded by (k-1)d - p, with W flipped and its two channel axes swapped (the
    transposed convolution), which costs an im2col copy where the col2im costs kh*kw adds.
    Those columns are not kept, so on the CPU they are built a few images at a time
    (COLS_CHUNK numbers) into one reused buffer, each chunk multiplied while it is in cache;
    built whole, BoTNet's (128, 16, 16, 32) 3x3 conv writes 38 MB that the GEMM then reads
    back from memory. Copies and col2im run a few images at a time on all CPU threads."""

    def forward(ctx, x, weight, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)),
                dilation=(1, 1)):
        check_conv_nhwc(x, weight, bias, stride, padding, dilation)
        y, cols, wm, ctx.geo = conv_forward(x, weight, bias, stride, padding, dilation)
        ctx.save_for_backward(cols, wm)
        ctx.has_bias = bias is not None
        return y

    def backward(ctx, g):
        gx, gw, gb = conv_backward(g, *ctx.saved_tensors, ctx.geo, ctx.needs_input_grad)
        return (gx, gw, gb) if ctx.has_bias else (gx, gw)


def conv_forward(x, weight, bias, stride, padding, dilation):
    """(y, cols, Wm, geometry) of the dense conv of a checked (N, H, W, C) x, groups 1; the
    NCHW conv (``cpu_conv``) uses it too: the one fast im2col."""
    n, h, w, c = x.shape
    o, _, kh, kw = weight.shape
    ho, wo = check_nhwc(x, (kh, kw), padding, stride, dilation)
    add_flops(2 * n * ho * wo * o * c * kh * kw)
    wm = weight.transpose(0, 2, 3, 1).reshape(o, kh * kw * c)     # (O, (i, j, c)), a copy
    pointwise = (kh, kw) + tuple(stride) == (1, 1, 1, 1) and padding == ((0, 0), (0, 0))
    cols = x.reshape(n * h * w, c) if pointwise else _im2col(x, (kh, kw), padding, stride,
                                                             dilation, (ho, wo))
    y = cols @ wm.T
    if bias is not None:
        parallel.add_rows_(y, bias)
    geo = (x.shape, weight.shape, padding, stride, dilation, (ho, wo), pointwise)
    return y.reshape(n, ho, wo, o), cols, wm, geo


def _transposed_conv_padding(padding, kernel, dilation):
    """The padding of dout under which the stride-1 conv with the flipped kernel gives dx,
    (k-1)d - p per side; None where some p exceeds (k-1)d (then col2im gives dx)."""
    back = tuple(((k - 1) * d - p0, (k - 1) * d - p1)
                 for (p0, p1), k, d in zip(padding, kernel, dilation))
    return back if min(min(b) for b in back) >= 0 else None


def conv_backward(g, cols, wm, geo, need):
    """(dx, dW, db) of ``conv_forward`` (each None where ``need`` says so)."""
    x_shape, w_shape, padding, stride, dilation, (ho, wo), pointwise = geo
    o, c, kh, kw = w_shape
    g2 = g.reshape(-1, o)
    gw = gx = gb = None
    if need[1]:
        gw = parallel.t_matmul(cols, g2)            # ((i, j, c), O): the wide side first
        gw = xp_of(g).ascontiguousarray(gw.reshape(kh, kw, c, o).transpose(3, 2, 0, 1))
    back = _transposed_conv_padding(padding, (kh, kw), dilation)
    if need[0] and not pointwise and tuple(stride) == (1, 1) and back is not None \
            and backend.device_of(g) == "cpu":
        # dx[n, y, x, c] = Σ_(i,j,o) dout_pad[n, y + i*d, x + j*d, o] W[o, c, kh-1-i, kw-1-j]
        wt = wm.reshape(o, kh, kw, c)[:, ::-1, ::-1].transpose(3, 1, 2, 0).reshape(c, -1)
        gx = _conv_in_chunks(g, wt.T, (kh, kw), back, dilation, x_shape[1:3])
        gx = gx.reshape(x_shape)
    elif need[0]:
        dcols = g2 @ wm
        gx = dcols.reshape(x_shape) if pointwise else _col2im(
            dcols, x_shape, (kh, kw), padding, stride, dilation, (ho, wo))
    if len(need) > 2 and need[2]:
        gb = parallel.column_sums(g2)
    return gx, gw, gb


def _im2col(x, kernel, padding, stride, dilation, out_hw):
    """(N*Ho*Wo, kh*kw*C) columns, built a few images at a time from the padded input."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    (kh, kw), ((pt, pb), (pl, pr)), (ho, wo) = kernel, padding, out_hw
    device = backend.device_of(x)
    blocks = _image_blocks(n, (h + pt + pb) * (w + pl + pr) * c, device)
    if device == "cpu":
        # cols[n, y, x, i, j, c] = xpad[n, y*s + i*d, x*s + j*d, c] is a strided view of the
        # padded input; without dilation along W, kernel row i's kw pixels are one run of kw*C
        # numbers there, so the copy below moves whole runs
        padded = bool(pt or pb or pl or pr)
        xpad = (xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype) if padded
                else xp.ascontiguousarray(x))
        view = _window_view(xpad, kernel, stride, dilation, out_hw)
        cols = xp.empty(view.shape, dtype=x.dtype)

        def rows_block(blk):
            if padded:
                _pad_into(xpad[blk], x[blk], pt, pl)
            cols[blk] = view[blk]

        parallel.for_each(rows_block, blocks, threaded=_threaded(cols))
        return cols.reshape(n * ho * wo, kh * kw * c)
    offsets = windows(kernel, stride, dilation, out_hw)
    cols = xp.empty((n, ho, wo, kh * kw, c), dtype=x.dtype)

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


def _conv_in_chunks(x, w_t, kernel, padding, dilation, out_hw):
    """``_im2col(x, ...) @ w_t`` at stride 1 on the CPU. Past 4 COLS_CHUNK numbers, without
    the whole columns: those of a few images at a time (COLS_CHUNK numbers, at least one
    image) are copied into one reused buffer, from the strided window view of the zero-padded
    x, and multiplied while they are in cache; each chunk's GEMM writes its rows of the
    result. The copy of a chunk is shared among the CPU threads."""
    xp = xp_of(x)
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = padding
    rows = out_hw[0] * out_hw[1]
    per_image = rows * kernel[0] * kernel[1] * c
    if n * per_image <= 4 * COLS_CHUNK:   # up to 32 MB the whole is as fast: one GEMM
        return _im2col(x, kernel, padding, (1, 1), dilation, out_hw) @ w_t
    xpad = xp.empty((n, h + pt + pb, w + pl + pr, c), dtype=x.dtype)
    parallel.for_each(lambda blk: _pad_into(xpad[blk], x[blk], pt, pl),
                      _image_blocks(n, xpad[0].size, "cpu"), threaded=_threaded(xpad))
    view = _window_view(xpad, kernel, (1, 1), dilation, out_hw)
    k = max(1, COLS_CHUNK // per_image)                  # images per chunk
    buf = xp.empty((k,) + view.shape[1:], dtype=x.dtype)
    y = xp.empty((n * rows, w_t.shape[1]), dtype=x.dtype)
    step = -(-k // max(1, parallel.NUM_THREADS))         # images per thread's copy
    for start in range(0, n, k):
        m = min(k, n - start)
        part = buf[:m]

        def copy(i):   # this chunk's images i to i + step, one thread's share
            part[i:i + step] = view[start + i:start + min(i + step, m)]

        parallel.for_each(copy, range(0, m, step), threaded=_threaded(part))
        xp.matmul(part.reshape(m * rows, -1), w_t, out=y[start * rows:(start + m) * rows])
    return y


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


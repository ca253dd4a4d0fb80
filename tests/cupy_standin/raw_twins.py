"""NumPy twins of minivit's RawKernels (``minivit/kernels/cuda_rows.py``, ``cuda_conv.py``), which the stand-in
cannot interpret (threads, shared memory, warp shuffles).

Each twin is registered with the SHA-256 prefix of the CUDA source it was written against: a
changed kernel is refused on the stand-in until its twin has been re-read against the new
source and the hash updated here (and on a GPU ``tests/test_cuda_kernels.py`` compares the
kernel itself with the array code; ``tools/nvrtc_check.py`` compiles it anywhere). A twin gets
the launch's grid, block and arguments as the kernel does, and writes its outputs in place.
"""
from __future__ import annotations

import numpy as np

from . import _kernel


def _rows(grid, block, n):
    rows = int(grid[0])
    threads = int(block[0])
    if rows < 1 or threads % 32 or not 32 <= threads <= 1024:
        raise ValueError(f"bad launch: grid {grid}, block {block}")
    return rows, int(n)


def _2d(a, rows, n):
    return a._a.reshape(-1)[:rows * n].reshape(rows, n)


def layer_norm_fwd(grid, block, args, shared_mem):
    x, w, b, y, xhat, rstd, d, eps, has_w, has_b = args
    rows, d = _rows(grid, block, d)
    xa = _2d(x, rows, d)
    t = xa.dtype.type
    mu = xa.sum(axis=1, keepdims=True) / t(d)
    diff = xa - mu
    r = t(1) / np.sqrt((diff * diff).sum(axis=1, keepdims=True) / t(d) + t(eps))
    h = diff * r
    _2d(xhat, rows, d)[...] = h
    out = h * (w._a.reshape(-1)[:d] if has_w else t(1)) + (b._a.reshape(-1)[:d] if has_b else t(0))
    _2d(y, rows, d)[...] = out
    rstd._a.reshape(-1)[:rows] = r[:, 0]


def layer_norm_bwd(grid, block, args, shared_mem):
    g, xhat, rstd, w, dx, d, has_w = args
    rows, d = _rows(grid, block, d)
    ga, ha = _2d(g, rows, d), _2d(xhat, rows, d)
    t = ga.dtype.type
    gh = ga * (w._a.reshape(-1)[:d] if has_w else t(1))
    m1 = gh.sum(axis=1, keepdims=True) / t(d)
    m2 = (gh * ha).sum(axis=1, keepdims=True) / t(d)
    _2d(dx, rows, d)[...] = rstd._a.reshape(-1)[:rows, None] * (gh - m1 - ha * m2)


def layer_norm_affine_grads(grid, block, args, shared_mem):
    g, xhat, dw, db, rows, d, want_w, want_b = args
    if tuple(block) != (32, 16) or int(grid[0]) != -(-int(d) // 32):
        raise ValueError(f"bad launch: grid {grid}, block {block} for {d} columns")
    ga, ha = _2d(g, int(rows), int(d)), _2d(xhat, int(rows), int(d))
    if want_w:
        dw._a.reshape(-1)[:int(d)] = (ga * ha).sum(axis=0)
    if want_b:
        db._a.reshape(-1)[:int(d)] = ga.sum(axis=0)


def softmax_rows(grid, block, args, shared_mem):
    s, p, k, scale = args
    rows, k = _rows(grid, block, k)
    sa = _2d(s, rows, k)
    t = sa.dtype.type
    sa = t(scale) * sa
    m = sa.max(axis=1, keepdims=True)
    m = np.where(np.isinf(m), t(0), m)
    with np.errstate(invalid="ignore", over="ignore"):
        e = np.exp(sa - m)
    tot = e.sum(axis=1, keepdims=True)
    _2d(p, rows, k)[...] = e * np.where(tot > 0, t(1) / np.where(tot > 0, tot, t(1)), t(1))


def round_bf16(grid, block, args, shared_mem):
    x, y, n = args
    if int(grid[0]) < 1 or int(block[0]) < 1:
        raise ValueError(f"bad launch: grid {grid}, block {block}")
    u = x._a.reshape(-1)[:int(n)].view(np.uint32)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
    y._a.reshape(-1)[:int(n)] = np.where(nan, u, r).view(np.float32)


# --- the depthwise convolution (cuda_conv.py): NHWC arrays, weight (C, 1, kh, kw) ----------

def _geometry(args):
    """The kernels' GEOMETRY arguments as Python ints: N, H, W, C, Ho, Wo, kh, kw, the stride,
    the top and left padding, the dilation."""
    return tuple(int(v) for v in args)


def _threads_1d(grid, block):
    if len(block) != 1 or int(block[0]) % 32 or not 32 <= int(block[0]) <= 1024 or \
            int(grid[0]) < 1:
        raise ValueError(f"bad launch: grid {grid}, block {block}")


def _taps(geo):
    """(i, j, output rows, output cols, input rows, input cols) per kernel offset (i, j): the
    output positions whose offset-(i, j) reads fall inside the input, and the input rows and
    columns they read (slices of the unpadded input)."""
    n, h, w, c, ho, wo, kh, kw, sh, sw, pt, pl, dh, dw = geo
    out = []
    for i in range(kh):
        for j in range(kw):
            ys = [y for y in range(ho) if 0 <= y * sh - pt + i * dh < h]
            xs = [x for x in range(wo) if 0 <= x * sw - pl + j * dw < w]
            if ys and xs:
                out.append((i, j, slice(ys[0], ys[-1] + 1),
                            slice(xs[0], xs[-1] + 1),
                            slice(ys[0] * sh - pt + i * dh, ys[-1] * sh - pt + i * dh + 1, sh),
                            slice(xs[0] * sw - pl + j * dw, xs[-1] * sw - pl + j * dw + 1, sw)))
    return out


def _nhwc(a, shape):
    return a._a.reshape(-1)[:int(np.prod(shape))].reshape(shape)


def _gather_taps(src, wt, geo, into_output: bool):
    """Σ over kernel offsets of W[c, i, j] times ``src`` read through each offset's window:
    the forward (``src`` the input, summed into the output) or the input gradient (``src``
    dout, summed back into the input's shape)."""
    n, h, w, c, ho, wo, kh, kw = geo[:8]
    wa = _nhwc(wt, (c, kh, kw))
    acc = np.zeros((n, ho, wo, c) if into_output else (n, h, w, c), src.dtype)
    for i, j, oy, ox, iy, ix in _taps(geo):
        if into_output:
            acc[:, oy, ox] += wa[:, i, j] * src[:, iy, ix]
        else:
            acc[:, iy, ix] += wa[:, i, j] * src[:, oy, ox]
    return acc


def depthwise_fwd(grid, block, args, shared_mem):
    x, wt, b, out = args[:4]
    geo = _geometry(args[4:18])
    _threads_1d(grid, block)
    n, h, w, c = geo[:4]
    acc = _gather_taps(_nhwc(x, (n, h, w, c)), wt, geo, True)
    if int(args[18]):
        acc += b._a.reshape(-1)[:c]
    out._a.reshape(-1)[:acc.size] = acc.reshape(-1)


def depthwise_bwd_input(grid, block, args, shared_mem):
    g, wt, dx = args[:3]
    geo = _geometry(args[3:17])
    _threads_1d(grid, block)
    n, c, ho, wo = geo[0], geo[3], geo[4], geo[5]
    acc = _gather_taps(_nhwc(g, (n, ho, wo, c)), wt, geo, False)
    dx._a.reshape(-1)[:acc.size] = acc.reshape(-1)


def depthwise_bwd_weight(grid, block, args, shared_mem):
    g, x, dw, db = args[:4]
    geo = _geometry(args[4:18])
    first = int(args[18])
    n, h, w, c, ho, wo, kh, kw = geo[:8]
    if tuple(block) != (32, 16) or int(grid[0]) != -(-c // 32) or \
            first not in (0, kh * kw) or int(grid[1]) < 1 or first + int(grid[1]) > kh * kw + 1:
        raise ValueError(f"bad launch: grid {grid}, block {block}, first {first}")
    ga, xa = _nhwc(g, (n, ho, wo, c)), _nhwc(x, (n, h, w, c))
    if first == 0:
        gw = np.zeros((c, kh, kw), ga.dtype)
        for i, j, oy, ox, iy, ix in _taps(geo):
            gw[:, i, j] = np.einsum("nhwc,nhwc->c", ga[:, oy, ox], xa[:, iy, ix])
        dw._a.reshape(-1)[:gw.size] = gw.reshape(-1)
    if first + int(grid[1]) == kh * kw + 1:
        db._a.reshape(-1)[:c] = ga.sum(axis=(0, 1, 2))


TWINS = {
    "minivit_layer_norm_affine_grads": ("f8e0b8cbc3b15c4a", layer_norm_affine_grads),
    "minivit_layer_norm_fwd": ("c84ab6fb96f0825f", layer_norm_fwd),
    "minivit_layer_norm_bwd": ("bacdf9ecb3fae735", layer_norm_bwd),
    "minivit_softmax_rows": ("2328d40b879dea58", softmax_rows),
    "minivit_round_bf16": ("990820924d40c611", round_bf16),
    "minivit_depthwise_fwd": ("4d61133870fca0f3", depthwise_fwd),
    "minivit_depthwise_bwd_input": ("ddd04ae3149bf092", depthwise_bwd_input),
    "minivit_depthwise_bwd_weight": ("a22ab24081d5e8f3", depthwise_bwd_weight),
}
for _name, (_sha, _fn) in TWINS.items():
    _kernel.register_raw(_name, _fn, _sha)

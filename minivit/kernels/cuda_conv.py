"""The depthwise convolution on the GPU: one launch forward, two backward, where the array code
takes a multiply and an add per kernel offset (and as many again, with an einsum each, in
backward): about 70 launches per 3x3 conv and training step, 3 here.

Channels-last (N, H, W, C) arrays, the weight in PyTorch's layout (C, 1, kh, kw); padding
(top, bottom), (left, right), stride s, dilation d, as ``depthwise_conv2d_nhwc``::

    out[n, y, x, c]  = b[c] + Σ_(i,j) W[c, i, j] x[n, y s - pt + i d, x s - pl + j d, c]
    dx[n, h, w, c]   = Σ_(i,j) W[c, i, j] dout[n, (h + pt - i d)/s, (w + pl - j d)/s, c]
                       (the offsets whose quotient is a whole output position)
    dW[c, i, j]      = Σ_(n,y,x) dout[n, y, x, c] x[n, y s - pt + i d, x s - pl + j d, c]
    db[c]            = Σ_(n,y,x) dout[n, y, x, c]

Positions outside the input read zero (the padding is never made). The forward and the input
gradient give each output number a thread (a gather, so no two threads write one number);
the weight and bias gradients give each (32 channels, kernel offset) a block of 32 x 16
threads, each summing every 16th output position of its channel, the 16 partial sums added
in a fixed order (the same result every run). ``T`` is float or double. The CPU never runs
these; the stand-in (``tests/cupy_standin``) runs a NumPy twin of each, registered against
this source's hash, and ``tools/nvrtc_check.py`` compiles them.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..autograd import backend
from ..autograd.flops import add_flops
from ..nn.functional.depthwise import check_nhwc
from . import cuda_rows

_INDEX = r"""
// the geometry every depthwise kernel takes, after its arrays
#define GEOMETRY int N, int H, int W, int C, int Ho, int Wo, int kh, int kw, \
                 int str_h, int str_w, int pad_t, int pad_l, int dil_h, int dil_w
#define GRID_STRIDE(k, total) \
    for (long long k = blockIdx.x * (long long)blockDim.x + threadIdx.x; k < (total); \
         k += (long long)gridDim.x * blockDim.x)
// the position (n, y, x, c) of flat index e in a C-contiguous (N, rows, cols, C) array
struct Pos { long long n; int y, x, c; };
__device__ Pos position(long long e, int rows, int cols, int C) {
    Pos p;
    p.c = e % C;
    e /= C;
    p.x = e % cols;
    e /= cols;
    p.y = e % rows;
    p.n = e / rows;
    return p;
}
"""

DEPTHWISE_FWD = _INDEX + r"""
extern "C" __global__ void minivit_depthwise_fwd(
        const T* x, const T* w, const T* b, T* out, GEOMETRY, int has_b) {
    GRID_STRIDE(e, (long long)N * Ho * Wo * C) {
        Pos o = position(e, Ho, Wo, C);               // the output number of this thread
        T acc = 0;
        for (int i = 0; i < kh; ++i) {
            int yi = o.y * str_h - pad_t + i * dil_h;
            if (yi < 0 || yi >= H) continue;
            for (int j = 0; j < kw; ++j) {
                int xi = o.x * str_w - pad_l + j * dil_w;
                if (xi >= 0 && xi < W)
                    acc += w[(o.c * kh + i) * kw + j] * x[((o.n * H + yi) * W + xi) * C + o.c];
            }
        }
        out[e] = has_b ? acc + b[o.c] : acc;
    }
}
"""

DEPTHWISE_BWD_INPUT = _INDEX + r"""
extern "C" __global__ void minivit_depthwise_bwd_input(
        const T* g, const T* w, T* dx, GEOMETRY) {
    GRID_STRIDE(e, (long long)N * H * W * C) {
        Pos p = position(e, H, W, C);                 // the input number of this thread
        T acc = 0;
        for (int i = 0; i < kh; ++i) {
            int ty = p.y + pad_t - i * dil_h;         // = yo * str_h for the output row yo
            int yo = ty / str_h;
            if (ty < 0 || ty % str_h || yo >= Ho) continue;
            for (int j = 0; j < kw; ++j) {
                int tx = p.x + pad_l - j * dil_w;
                int xo = tx / str_w;
                if (tx >= 0 && tx % str_w == 0 && xo < Wo)
                    acc += w[(p.c * kh + i) * kw + j] * g[((p.n * Ho + yo) * Wo + xo) * C + p.c];
            }
        }
        dx[e] = acc;
    }
}
"""

DEPTHWISE_BWD_WEIGHT = _INDEX + r"""
// block (32, 16): 32 channels, 16 threads down the output positions of each; blockIdx.y + first
// is the kernel offset i * kw + j, or kh * kw for the bias gradient
extern "C" __global__ void minivit_depthwise_bwd_weight(
        const T* g, const T* x, T* dw, T* db, GEOMETRY, int first) {
    __shared__ T part[16][33];
    int c = blockIdx.x * 32 + threadIdx.x;
    int tap = first + blockIdx.y;
    bool bias = tap == kh * kw;
    int i = tap / kw, j = tap % kw;
    T acc = 0;
    if (c < C) {
        long long rows = (long long)N * Ho * Wo;
        for (long long r = threadIdx.y; r < rows; r += 16) {
            T gv = g[r * C + c];
            if (bias) {
                acc += gv;
                continue;
            }
            Pos o = position(r, Ho, Wo, 1);          // the output position (o.c = 0)
            int yi = o.y * str_h - pad_t + i * dil_h;
            int xi = o.x * str_w - pad_l + j * dil_w;
            if (yi >= 0 && yi < H && xi >= 0 && xi < W)
                acc += gv * x[((o.n * H + yi) * W + xi) * C + c];
        }
    }
    part[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        T t = 0;
        for (int k = 0; k < 16; ++k) t += part[k][threadIdx.x];
        if (bias) db[c] = t;
        else dw[c * kh * kw + tap] = t;
    }
}
"""

SOURCES = {"minivit_depthwise_fwd": DEPTHWISE_FWD,
           "minivit_depthwise_bwd_input": DEPTHWISE_BWD_INPUT,
           "minivit_depthwise_bwd_weight": DEPTHWISE_BWD_WEIGHT}

THREADS = 256   # per block of the one-thread-per-number kernels


def source(name: str, dtype) -> str:
    """The CUDA source of kernel ``name`` for arrays of ``dtype``."""
    return cuda_rows.typed(SOURCES[name], dtype)


def _kernel(name: str, dtype):
    return cuda_rows.raw_kernel(source(name, dtype), name)


class DepthwiseGeometry(NamedTuple):
    """What the backward needs of a depthwise forward on the GPU (its saved arrays are x, W)."""

    x_shape: tuple
    w_shape: tuple
    ho: int
    wo: int
    stride: tuple
    top_left: tuple
    dilation: tuple

    def args(self) -> tuple:
        """The kernels' GEOMETRY arguments."""
        (n, h, w, c), (kh, kw) = self.x_shape, self.w_shape[2:]
        return tuple(np.int32(v) for v in (n, h, w, c, self.ho, self.wo, kh, kw, *self.stride,
                                           *self.top_left, *self.dilation))


def ran_on_gpu(geometry) -> bool:
    """Whether a depthwise forward's geometry is this module's (its backward runs here too)."""
    return isinstance(geometry, DepthwiseGeometry)


def _grid(total: int) -> tuple:
    return (int(min(max(-(-total // THREADS), 1), 1 << 20)),)


def depthwise_fwd(x, weight, bias, stride, padding, dilation):
    """(out, x, W, geometry) of the depthwise conv of a checked (N, H, W, C) x, in one launch;
    ``depthwise_bwd`` takes the last three (as ``cpu_conv_nhwc.depthwise_forward``'s)."""
    xp = backend.get_array_module(x)
    n, h, w, c = x.shape
    kh, kw = weight.shape[2:]
    ho, wo = check_nhwc(x, (kh, kw), padding, stride, dilation)
    add_flops(2 * n * ho * wo * c * kh * kw)
    x, weight = xp.ascontiguousarray(x), xp.ascontiguousarray(weight)
    geo = DepthwiseGeometry(tuple(x.shape), tuple(weight.shape), ho, wo, tuple(stride),
                            (padding[0][0], padding[1][0]), tuple(dilation))
    out = xp.empty((n, ho, wo, c), dtype=x.dtype)
    if out.size:
        _kernel("minivit_depthwise_fwd", x.dtype)(
            _grid(out.size), (THREADS,),
            (x, weight, weight if bias is None else xp.ascontiguousarray(bias), out,
             *geo.args(), np.int32(bias is not None)))
    return out, x, weight, geo


def depthwise_bwd(g, x, weight, geo: DepthwiseGeometry, need):
    """(dx, dW, db) of ``depthwise_fwd`` (each None where ``need`` says so): one launch for
    dx, one for dW and db together."""
    xp = backend.get_array_module(g)
    g = xp.ascontiguousarray(g)
    need_x, need_w, need_b = need[0], need[1], len(need) > 2 and need[2]
    kh, kw = geo.w_shape[2:]
    c = geo.x_shape[3]
    gx = gw = gb = None
    if need_x:
        gx = xp.empty(geo.x_shape, dtype=g.dtype)
        if gx.size:
            _kernel("minivit_depthwise_bwd_input", g.dtype)(
                _grid(gx.size), (THREADS,), (g, weight, gx, *geo.args()))
    if need_w or need_b:
        gw = xp.empty(geo.w_shape, dtype=g.dtype) if need_w else None
        gb = xp.empty((c,), dtype=g.dtype) if need_b else None
    if (need_w or need_b) and c:
        blocks = (kh * kw if need_w else 0) + (1 if need_b else 0)
        _kernel("minivit_depthwise_bwd_weight", g.dtype)(
            (-(-c // 32), blocks), (32, 16),
            (g, x, g if gw is None else gw, g if gb is None else gb, *geo.args(),
             np.int32(0 if need_w else kh * kw)))
    return gx, gw, gb

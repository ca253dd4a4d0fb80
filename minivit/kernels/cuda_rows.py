"""Row-wise CUDA kernels: one launch for a whole LayerNorm or softmax over the rows of a 2-D
array, where array code takes 7 to 10 (a mean, a variance, a square root, a reciprocal, the
normalisation...; a max, a subtraction, an exp, a sum, a division...).

One thread block per row: the block's threads stride along the row, and the row's sums (and
max) are block reductions, warp shuffles then one value per warp through shared memory. The
formulas are the array code's (``nn/functional/norm.py``, ``kernels/cpu_reduce.py``):

    layer norm     μ = mean x,  σ² = mean (x - μ)²,  r = 1/√(σ² + eps),  x̂ = (x - μ) r,
                   y = x̂ w + b;   backward  ĝ = g w,  dx = r (ĝ - mean ĝ - x̂ mean(ĝ x̂))
    softmax        of c s (attention's scale c > 0 folded in): m = max c s (0 for a row of
                   -inf only),  e = exp(c s - m),  p = e / Σe
                   (a fully masked row gives 0, as the array code)

One more kernel here is elementwise, ``minivit_round_bf16`` (autocast's rounding of float32
values to bfloat16, ``minivit/autograd/autocast.py``): it works on the bit pattern, which the
stand-in's ElementwiseKernel interpreter does not read, so it is a RawKernel with a twin; one
launch where the array code takes seven.

``T`` is float or double (one compiled kernel per dtype, made on first use and cached by
CuPy). The CPU never runs these; without a GPU the tests run them on the CuPy stand-in, whose
NumPy twin of each kernel is registered against this source's hash (``tests/cupy_standin``),
and on a GPU ``tests/test_cuda_kernels.py`` compares them with the array code.
"""
from __future__ import annotations

import functools

import numpy as np

from ..autograd import backend

_COMMON = r"""
#define MINIVIT_NEG_INF (-__longlong_as_double(0x7ff0000000000000LL))
struct SumOp { __device__ T operator()(T a, T b) const { return a + b; } };
struct MaxOp { __device__ T operator()(T a, T b) const { return max(a, b); } };
// op over v of every thread of the block, returned to all of them: warp shuffles, then one
// value per warp through sh (32 values), then the first warp; id is op's identity.
template <class Op> __device__ T block_reduce(T v, T id, T* sh, Op op) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = (blockDim.x + 31) >> 5;
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();   // sh may still be read from the previous reduction
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < nwarps ? sh[lane] : id;
        for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
        if (lane == 0) sh[0] = v;
    }
    __syncthreads();
    return sh[0];
}
__device__ T block_sum(T v, T* sh) { return block_reduce(v, (T)0, sh, SumOp()); }
__device__ T block_max(T v, T* sh) { return block_reduce(v, (T)MINIVIT_NEG_INF, sh, MaxOp()); }
"""

LAYER_NORM_FWD = _COMMON + r"""
extern "C" __global__ void minivit_layer_norm_fwd(
        const T* x, const T* w, const T* b, T* y, T* xhat, T* rstd, int D, double eps,
        int has_w, int has_b) {
    __shared__ T sh[32];
    long long row = blockIdx.x;
    const T* xr = x + row * D;
    T s = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) s += xr[j];
    T mu = block_sum(s, sh) / (T)D;
    T v = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) { T d = xr[j] - mu; v += d * d; }
    T r = (T)1 / sqrt(block_sum(v, sh) / (T)D + (T)eps);
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        T h = (xr[j] - mu) * r;
        xhat[row * D + j] = h;
        y[row * D + j] = h * (has_w ? w[j] : (T)1) + (has_b ? b[j] : (T)0);
    }
    if (threadIdx.x == 0) rstd[row] = r;
}
"""

LAYER_NORM_BWD = _COMMON + r"""
extern "C" __global__ void minivit_layer_norm_bwd(
        const T* g, const T* xhat, const T* rstd, const T* w, T* dx, int D, int has_w) {
    __shared__ T sh[32];
    long long row = blockIdx.x;
    const T* gr = g + row * D;
    const T* hr = xhat + row * D;
    T s1 = 0, s2 = 0;
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        T gh = gr[j] * (has_w ? w[j] : (T)1);
        s1 += gh;
        s2 += gh * hr[j];
    }
    T m1 = block_sum(s1, sh) / (T)D;
    T m2 = block_sum(s2, sh) / (T)D;
    T r = rstd[row];
    for (int j = threadIdx.x; j < D; j += blockDim.x) {
        T gh = gr[j] * (has_w ? w[j] : (T)1);
        dx[row * D + j] = r * (gh - m1 - hr[j] * m2);
    }
}
"""

SOFTMAX = _COMMON + r"""
extern "C" __global__ void minivit_softmax_rows(const T* s, T* p, int K, double scale) {
    // p = softmax(scale s): attention's 1/sqrt(d) rides along (scale > 0)
    __shared__ T sh[32];
    long long row = blockIdx.x;
    const T* sr = s + row * K;
    T m = (T)MINIVIT_NEG_INF;
    for (int j = threadIdx.x; j < K; j += blockDim.x) m = max(m, (T)scale * sr[j]);
    m = block_max(m, sh);
    if (isinf(m)) m = 0;   // a row of -inf only: exp(-inf - 0) = 0 everywhere
    T t = 0;
    for (int j = threadIdx.x; j < K; j += blockDim.x) {
        T e = exp((T)scale * sr[j] - m);
        p[row * K + j] = e;
        t += e;
    }
    t = block_sum(t, sh);
    T inv = t > (T)0 ? (T)1 / t : (T)1;
    for (int j = threadIdx.x; j < K; j += blockDim.x) p[row * K + j] *= inv;
}
"""

LAYER_NORM_AFFINE_GRADS = r"""
// dw_j = sum_i g_ij xhat_ij and db_j = sum_i g_ij down the rows: a block of 32 x 16 threads
// per 32 columns, each thread summing every 16th row of its column, then the 16 partial sums
// of each column added in shared memory (in a fixed order: the same result every run).
extern "C" __global__ void minivit_layer_norm_affine_grads(
        const T* g, const T* xhat, T* dw, T* db, int rows, int D, int want_w, int want_b) {
    __shared__ T sw[16][33];
    __shared__ T sb[16][33];
    int j = blockIdx.x * 32 + threadIdx.x;
    T aw = 0, ab = 0;
    if (j < D) {
        for (long long r = threadIdx.y; r < rows; r += 16) {
            T gv = g[r * D + j];
            ab += gv;
            aw += gv * xhat[r * D + j];
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && j < D) {
        T tw = 0, tb = 0;
        for (int k = 0; k < 16; ++k) { tw += sw[k][threadIdx.x]; tb += sb[k][threadIdx.x]; }
        if (want_w) dw[j] = tw;
        if (want_b) db[j] = tb;
    }
}
"""

ROUND_BF16 = r"""
// y = x rounded to bfloat16 (round to nearest, ties to even), stored float: add 0x7fff plus
// the lowest kept bit to the bit pattern, clear the low 16 bits (a carry rounds up, into the
// exponent if need be: the largest values become inf); a NaN is kept as it is. float only.
extern "C" __global__ void minivit_round_bf16(const float* x, float* y, long long n) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        unsigned int u = __float_as_uint(x[i]);
        if ((u & 0x7fffffffu) > 0x7f800000u) { y[i] = x[i]; continue; }
        u += 0x7fffu + ((u >> 16) & 1u);
        y[i] = __uint_as_float(u & 0xffff0000u);
    }
}
"""

SOURCES = {"minivit_layer_norm_affine_grads": LAYER_NORM_AFFINE_GRADS,"minivit_layer_norm_fwd": LAYER_NORM_FWD, "minivit_layer_norm_bwd": LAYER_NORM_BWD,
           "minivit_softmax_rows": SOFTMAX, "minivit_round_bf16": ROUND_BF16}
_CTYPE = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def typed(body: str, dtype) -> str:
    """A kernel source with ``T`` defined as the C type of ``dtype`` (float or double)."""
    return f"typedef {_CTYPE[np.dtype(dtype)]} T;\n" + body


def source(name: str, dtype) -> str:
    """The CUDA source of kernel ``name`` for arrays of ``dtype``."""
    return typed(SOURCES[name], dtype)


@functools.cache
def raw_kernel(src: str, name: str):
    """The compiled RawKernel ``name`` of ``src`` (compiled once, on first use)."""
    return backend._import_cupy().RawKernel(src, name)


def _kernel(name: str, dtype):
    return raw_kernel(source(name, np.dtype(dtype)), name)


def _threads(n: int) -> int:
    """Threads per block for rows of n: a multiple of 32, at most 256."""
    return int(min(256, max(32, -(-n // 32) * 32)))


def _launch(name, rows, n, args, dtype):
    _kernel(name, np.dtype(dtype))((max(rows, 1),), (_threads(n),), args)


def layer_norm_rows(x, w, b, eps: float):
    """(y, x̂, 1/σ) of the rows of a C-contiguous 2-D x, in one launch."""
    xp = backend.get_array_module(x)
    rows, d = x.shape
    y, xhat = xp.empty_like(x), xp.empty_like(x)
    rstd = xp.empty((rows, 1), x.dtype)
    if rows:
        _launch("minivit_layer_norm_fwd", rows, d,
                (x, x if w is None else w, x if b is None else b, y, xhat, rstd, np.int32(d),
                 np.float64(eps), np.int32(w is not None), np.int32(b is not None)), x.dtype)
    return y, xhat, rstd


def layer_norm_rows_backward(g, xhat, rstd, w):
    """dx of ``layer_norm_rows`` for C-contiguous 2-D g and x̂, in one launch."""
    xp = backend.get_array_module(g)
    rows, d = g.shape
    dx = xp.empty_like(g)
    if rows:
        _launch("minivit_layer_norm_bwd", rows, d,
                (g, xhat, rstd, g if w is None else w, dx, np.int32(d), np.int32(w is not None)),
                g.dtype)
    return dx


def layer_norm_affine_grads(g, xhat, dw, db):
    """Σ_rows g x̂ into dw and Σ_rows g into db (1-D, either may be None), in one launch."""
    rows, d = g.shape
    if dw is None and db is None:
        return
    xp = backend.get_array_module(g)
    g, xhat = xp.ascontiguousarray(g), xp.ascontiguousarray(xhat)
    _kernel("minivit_layer_norm_affine_grads", np.dtype(g.dtype))(
        (-(-d // 32),), (32, 16), (g, xhat, g if dw is None else dw, g if db is None else db,
                                   np.int32(rows), np.int32(d), np.int32(dw is not None),
                                   np.int32(db is not None)))


def softmax_rows(s, scale: float = 1.0):
    """softmax of ``scale * s`` along the rows of a 2-D s (scale > 0), in one launch."""
    xp = backend.get_array_module(s)
    rows, k = s.shape
    p = xp.empty_like(s)
    if rows:
        s = xp.ascontiguousarray(s)
        _launch("minivit_softmax_rows", rows, k, (s, p, np.int32(k), np.float64(scale)), s.dtype)
    return p


def round_bf16(x):
    """float32 x rounded to bfloat16 values (kept float32), in one launch."""
    xp = backend.get_array_module(x)
    x = xp.ascontiguousarray(x)
    y = xp.empty_like(x)
    if x.size:
        blocks = min(-(-x.size // 256), 4096)   # a grid-stride loop covers the rest
        _kernel("minivit_round_bf16", np.dtype(np.float32))((blocks,), (256,),
                                                              (x, y, np.int64(x.size)))
    return y

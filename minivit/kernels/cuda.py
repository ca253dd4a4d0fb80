"""Fused CUDA kernels for the GPU path: one kernel per elementwise chain instead of one per op.

On the GPU every CuPy call is a kernel launch that reads its inputs from and writes its result
to GPU memory. The backward of GELU written with array operations (``x * x``, ``* c``, ``+ 1``,
``* s``, ...) is six launches and six round trips for what one pass over the data can do. Each
kernel below computes exactly the formula of its plain-array twin, which stays the code that
runs on the CPU (NumPy) and on the GPU when fusion is off; ``tests/test_cuda_kernels.py``
checks that the two agree on a GPU.

    GELU (exact)     y = x Φ(x),  Φ = erfc(-x/√2) / 2;   dx = g (Φ + x φ(x))
    GELU (tanh)      y = x s,  s = (1 + tanh u) / 2 = 1 / (1 + e),  e = exp(-2u),
                     u = √(2/π)(x + 0.044715 x³);  dx = g s (1 + x (e s) 2u'),  1 - s = e s
    (erfc and the sigmoid avoid the cancellation of 1 + erf and 1 + tanh for x below about
    -4.5, which in float32 left the gradient there off by more than its own size.)
    softmax          dx = y (g - Σ g y)                     (the row sum as a reduction kernel)
    layer norm       one RawKernel per pass over the rows (``cuda_rows``)
    cross entropy    dz = (p Σq - q) · scale
    Adam / AdamW     p ← p (1 - lr wd);  m ← β₁m + (1-β₁)g;  v ← β₂v + (1-β₂)g²;
                     p ← p - lr/(1-β₁ᵗ) · m / (√v / √(1-β₂ᵗ) + ε)      (in place, one pass)

``enabled(*arrays)`` says whether to use them: CuPy arrays, and fusion not switched off with
``MINIVIT_FUSED_KERNELS=0`` or ``with fused_kernels(False):``. Kernels are compiled by CuPy on
first use and cached on disk; ``T`` is the arrays' dtype (float32 or float64), and scalar
arguments are float64 converted to ``T`` inside the kernel.
"""
from __future__ import annotations

import contextlib
import functools
import os

from ..autograd import backend
from . import cuda_rows

_enabled = os.environ.get("MINIVIT_FUSED_KERNELS", "1") != "0"


def enabled(*arrays) -> bool:
    """True when all ``arrays`` live on the GPU and fused kernels are switched on."""
    return _enabled and all(backend.device_of(a) == "cuda" for a in arrays if a is not None)


@contextlib.contextmanager
def fused_kernels(on: bool):
    """Switch fused kernels on or off inside a ``with`` block (tests compare the two paths)."""
    global _enabled
    before, _enabled = _enabled, bool(on)
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def _k():
    """Build the kernels once, the first time a GPU array needs one."""
    cp = backend._import_cupy()
    ew, red = cp.ElementwiseKernel, cp.ReductionKernel
    return {
        "gelu_exact_fwd": ew(
            "T x", "T y, T cdf",
            "cdf = (T)0.5 * erfc(x * (T)-0.70710678118654752);"   # no 1 + erf cancellation
            "y = x * cdf;",
            "minivit_gelu_exact_fwd"),
        "gelu_exact_bwd": ew(
            "T g, T x, T cdf", "T dx",
            "dx = g * (cdf + x * (T)0.39894228040143268 * exp((T)-0.5 * x * x));",
            "minivit_gelu_exact_bwd"),
        "gelu_tanh_fwd": ew(
            "T x", "T y, T s",
            "T u = (T)0.79788456080286536 * (x + (T)0.044715 * x * x * x);"
            "s = (T)1 / ((T)1 + exp((T)-2 * u));"   # (1 + tanh u)/2 without its cancellation
            "y = x * s;",
            "minivit_gelu_tanh_fwd"),
        "gelu_tanh_bwd": ew(
            "T g, T x, T s", "T dx",
            "T du2 = (T)1.5957691216057307 * ((T)1 + (T)0.134145 * x * x);"  # 2 u'
            "T e = exp((T)-1.5957691216057307 * (x + (T)0.044715 * x * x * x));"  # exp(-2u)
            "T oms = s > (T)0.5 ? e * s : (T)1 - s;"   # 1 - s = e s: no cancellation near 1
            "dx = g * s * ((T)1 + x * oms * du2);",
            "minivit_gelu_tanh_bwd"),
        "scale_shift_gelu_exact_fwd": ew(   # BatchNorm's GELU: z = x a + c, then as above
            "T x, T a, T c", "T y, T cdf",
            "T z = x * a + c;"
            "cdf = (T)0.5 * erfc(z * (T)-0.70710678118654752);"
            "y = z * cdf;",
            "minivit_scale_shift_gelu_exact_fwd"),
        "scale_shift_gelu_tanh_fwd": ew(
            "T x, T a, T c", "T y, T s",
            "T z = x * a + c;"
            "T u = (T)0.79788456080286536 * (z + (T)0.044715 * z * z * z);"
            "s = (T)1 / ((T)1 + exp((T)-2 * u));"
            "y = z * s;",
            "minivit_scale_shift_gelu_tanh_fwd"),
        "row_dot": red(  # Σ_k a b along the reduced axes
            "T a, T b", "T out", "a * b", "a + b", "out = a", "0", "minivit_row_dot"),
        "softmax_bwd": ew(
            "T y, T g, T s", "T dx", "dx = y * (g - s);", "minivit_softmax_bwd"),
        "one_hot_targets": ew(   # q of class-index targets, smoothed; NaN rows out of range
            "raw I t, int32 C, I ignore, float64 on, float64 off, float64 nan_value", "T q",
            "I c = t[i / C];"
            "bool valid = c != ignore;"
            "q = valid && (c < 0 || c >= C) ? (T)nan_value : (T)(c == i % C ? on : off);",
            "minivit_one_hot_targets"),
        "target_weights": ew(
            "I t, I ignore", "T w", "w = t != ignore ? (T)1 : (T)0;", "minivit_target_weights"),
        "sq_dev_sum": red(   # Σ (x - μ)² over the reduced axes (BatchNorm's variance)
            "T x, T mu", "T out", "(x - mu) * (x - mu)", "a + b", "out = a", "0",
            "minivit_sq_dev_sum"),
        "dev_dot": red(      # Σ g (x - μ) (BatchNorm's weight gradient, before 1/σ)
            "T g, T x, T mu", "T out", "g * (x - mu)", "a + b", "out = a", "0",
            "minivit_dev_dot"),
        "bn_coeffs": ew(     # per channel: y = x a + c from the batch statistics
            "T mean, T sq, T w, T b, float64 count, float64 eps", "T var, T rstd, T a, T c",
            "var = sq / (T)count;"
            "rstd = (T)1 / sqrt(var + (T)eps);"
            "a = rstd * w;"
            "c = b - mean * a;",
            "minivit_bn_coeffs"),
        "bn_ema": ew(        # both running statistics, in place (the variance unbiased)
            "T mu, T var, float64 unbias, float64 momentum", "T rm, T rv",
            "rm = rm * (T)(1 - momentum) + (T)momentum * mu;"
            "rv = rv * (T)(1 - momentum) + (T)momentum * (var * (T)unbias);",
            "minivit_bn_ema"),
        "bn_bwd_coeffs": ew(  # per channel: dx = g k + x alpha + beta, and dw = Σ g x̂
            "T sum_g, T sum_gxc, T rstd, T w, T mean, float64 count", "T dw, T k, T alpha, T beta",
            "dw = sum_gxc * rstd;"
            "k = rstd * w;"
            "T q = dw / (T)count * rstd * k;"
            "alpha = -q;"
            "beta = mean * q - sum_g / (T)count * k;",
            "minivit_bn_bwd_coeffs"),
        "relu_grad_affine": ew(   # g where x a + c > 0 (the BatchNorm's ReLU recomputed)
            "T g, T x, T a, T c", "T gm", "gm = x * a + c > (T)0 ? g : (T)0;",
            "minivit_relu_grad_affine"),
        "relu_grad_kept": ew(     # g where the kept output y > 0
            "T g, T y", "T gm", "gm = y > (T)0 ? g : (T)0;", "minivit_relu_grad_kept"),
        "scale_shift": ew("T x, T a, T c", "T z", "z = x * a + c;", "minivit_scale_shift"),
        "affine3": ew(       # out = g k + x alpha + beta (per-channel k, alpha, beta broadcast)
            "T g, T x, T k, T alpha, T beta", "T out", "out = g * k + (x * alpha + beta);",
            "minivit_affine3"),
        "cross_entropy_bwd": ew(
            "T p, T qs, T q, T scale", "T dz", "dz = (p * qs - q) * scale;",
            "minivit_cross_entropy_bwd"),
        "adam": ew(
            "T g, float64 l2, float64 decay, float64 b1, float64 b2, float64 step_size, "
            "float64 bc2_sqrt, float64 eps",
            "T p, T m, T v",
            "T gr = g + (T)l2 * p;"                      # Adam: L2 penalty in the gradient
            "p = p * (T)decay;"                          # AdamW: decoupled decay
            "m = (T)b1 * m + (T)(1 - b1) * gr;"
            "v = (T)b2 * v + (T)(1 - b2) * gr * gr;"
            "p = p - (T)step_size * m / (sqrt(v) / (T)bc2_sqrt + (T)eps);",
            "minivit_adam", no_return=True),
    }


# --- the calls the ops make (each mirrors a plain-array function of the same name) ---------

def gelu_forward(x, approximate: str):
    """(y, Φ(x)) (exact) or (y, s) (tanh): with x, what ``gelu_backward`` needs."""
    return _k()["gelu_tanh_fwd" if approximate == "tanh" else "gelu_exact_fwd"](x)


def gelu_backward(g, x, saved, approximate: str):
    return _k()["gelu_tanh_bwd" if approximate == "tanh" else "gelu_exact_bwd"](g, x, saved)


def scale_shift_gelu(x, a, c, act: str):
    """(gelu(z), Φ(z) or s) of z = x a + c (a, c per channel, shaped to broadcast against x)
    in one launch: BatchNorm's fused GELU forward, where the array code takes about ten."""
    return _k()["scale_shift_gelu_tanh_fwd" if act == "gelu_tanh" else
                "scale_shift_gelu_exact_fwd"](x, a, c)


def softmax_backward(y, g, axis: int = -1):
    """y (g - Σ_axis g y)."""
    s = _k()["row_dot"](g, y, axis=axis, keepdims=True)
    return _k()["softmax_bwd"](y, g, s)


def layer_norm_rows(x, w, b, eps: float):
    """Rows of x (rows, D): (y, x̂, 1/σ), as ``nn.functional.norm._layer_norm_rows``, in one
    launch (``cuda_rows``)."""
    xp = backend.get_array_module(x)
    return cuda_rows.layer_norm_rows(xp.ascontiguousarray(x), w, b, eps)


def layer_norm_rows_backward(g, xhat, rstd, w):
    """(1/σ)(ĝ - mean ĝ - x̂ mean(ĝ x̂)), ĝ = g w, along each row, in one launch."""
    xp = backend.get_array_module(g)
    return cuda_rows.layer_norm_rows_backward(xp.ascontiguousarray(g), xhat, rstd, w)


def linear_backward(ctx, g, g2, x2, w, gelu_backward):
    """Linear's backward on the GPU: the weight and bias gradients written straight into the
    optimizer's gradient buffer where it has one (``engine.grad_slot``), so no copy follows."""
    from ..autograd.engine import grad_slot  # noqa: PLC0415
    from ..nn.functional.linear import GELU_ACTS, linear_grads  # noqa: PLC0415

    need = ctx.needs_input_grad
    if ctx.act is not None:   # the GELU's x and Φ(x) (or s): cpu_elementwise.gelu_forward's saved
        g2 = gelu_backward(g2, ctx.saved_tensors[2:], GELU_ACTS[ctx.act])
    gb = None
    if ctx.has_bias and need[2]:
        gb = g2.sum(axis=0, out=grad_slot(ctx, 2))
    gx = (g2 @ w).reshape(ctx.x_shape) if need[0] else None
    gw = None
    if need[1]:
        slot = grad_slot(ctx, 1)
        gw = g2.T @ x2 if slot is None else backend.get_array_module(g2).matmul(g2.T, x2, out=slot)
    return linear_grads(ctx, gx, gw, gb, g)


def one_hot_targets(t, num_classes: int, ignore_index: int, label_smoothing: float, dtype):
    """(q, row weights) of class-index targets t (B,), in two launches: q = (1 - eps) onehot +
    eps / C per row, a row whose class is out of range all NaN (nothing is read back to check
    it: the loss turns NaN, which the training loop's finiteness check reports), weight 0 for
    ``ignore_index``."""
    import numpy as np  # noqa: PLC0415

    xp = backend.get_array_module(t)
    q = xp.empty((t.shape[0], num_classes), dtype)
    off = label_smoothing / num_classes
    _k()["one_hot_targets"](t, np.int32(num_classes), ignore_index, 1.0 - label_smoothing + off,
                            off, float("nan"), q)
    w = xp.empty(t.shape, dtype)
    _k()["target_weights"](t, ignore_index, w)
    return q, w


def bn_axes(xv, col: bool) -> tuple:
    return (0,) if col else (0, 2)


def bn_batch_coeffs(xv, col, w, b, eps: float, count: int):
    """(mean, var, rstd, a, c) of BatchNorm's batch statistics in three launches: the mean,
    Σ (x - μ)², and every per-channel quantity in one kernel. ``w``, ``b`` may be None."""
    xp = backend.get_array_module(xv)
    axes = bn_axes(xv, col)
    mean = xv.mean(axis=axes)
    sq = _k()["sq_dev_sum"](xv, mean if col else mean[:, None], axis=axes)
    one, zero = xp.ones((), xv.dtype) if w is None else w, xp.zeros((), xv.dtype) if b is None else b
    var, rstd, a, c = _k()["bn_coeffs"](mean, sq, one, zero, float(count), float(eps))
    return mean, var, rstd, a, c


def bn_update_running(rm, rv, mu, var, unbias: float, momentum: float) -> None:
    """running = (1 - m) running + m batch for the mean and the (unbiased) variance: one launch."""
    _k()["bn_ema"](mu.astype(rm.dtype, copy=False), var.astype(rm.dtype, copy=False),
                   float(unbias), float(momentum), rm, rv)


def bn_backward(gv, xv, col, mean, rstd, w, count: int, need_input: bool):
    """(dx or None, Σ g x̂, Σ g) of batch-statistics BatchNorm without an activation, in four
    launches: Σ g, Σ g (x - μ), the per-channel coefficients, dx = g k + x α + β."""
    xp = backend.get_array_module(gv)
    axes = bn_axes(xv, col)
    sum_g = gv.sum(axis=axes)
    sum_gxc = _k()["dev_dot"](gv, xv, mean if col else mean[:, None], axis=axes)
    one = xp.ones((), gv.dtype) if w is None else w
    dw, k, alpha, beta = _k()["bn_bwd_coeffs"](sum_g, sum_gxc, rstd, one, mean, float(count))
    dx = None
    if need_input:
        per = (lambda v: v) if col else (lambda v: v[:, None])
        dx = _k()["affine3"](gv, xv, per(k), per(alpha), per(beta))
    return dx, dw, sum_g


def bn_act_grad(g, xv, a, c, kept, act: str):
    """g act'(z), z = x a + c recomputed (per-channel a, c shaped for xv): one launch for the
    ReLU, two for GELU (z, then the GELU backward with the Φ(z) or s kept by the forward)."""
    if act == "relu":
        if kept is not None:   # with a residual the ReLU's mask is the output's sign
            return _k()["relu_grad_kept"](g, kept)
        return _k()["relu_grad_affine"](g, xv, a, c)
    z = _k()["scale_shift"](xv, a, c)
    return gelu_backward(g, z, kept, "tanh" if act == "gelu_tanh" else "none")


def cross_entropy_backward(p, q, scale):
    """(p Σq - q) · scale; scale broadcasts against (B, C) (row weights times the output grad)."""
    xp = backend.get_array_module(p)
    return _k()["cross_entropy_bwd"](p, q.sum(axis=1, keepdims=True), q,
                                     xp.asarray(scale, dtype=p.dtype))


def adam_step(p, g, m, v, *, lr, b1, b2, eps, wd, decoupled: bool, step: int,
              t_offset=None) -> None:
    """One Adam/AdamW update of p, m, v in place (the formulas of ``optim.adam.Adam._update``).
    ``t_offset``: a 0-d float64 device array subtracted from ``step`` (the steps a GradScaler
    undid); the bias corrections are then 0-d device arrays, read by the kernel as such."""
    l2 = 0.0 if decoupled else wd
    decay = 1.0 - lr * wd if decoupled else 1.0
    from ..optim.adam import bias_corrections  # noqa: PLC0415 (optim imports this module)

    step_size, bc2_sqrt = bias_corrections(lr, b1, b2, step, t_offset)
    _k()["adam"](g, l2, decay, b1, b2, step_size, bc2_sqrt, eps, p, m, v)

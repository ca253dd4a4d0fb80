"""Elementwise ops: each forward beside its derivative.

Binary ops broadcast like NumPy; their backward returns the gradient at the broadcast shape
and the engine sums it back to each input's shape.
"""
from __future__ import annotations

import math

from .. import backend, cuda_kernels, parallel
from ..function import Function

xp_of = backend.get_array_module
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Add(Function):
    def forward(ctx, a, b):
        return parallel.add(a, b)  # a + b (big same-shape arrays on all cores)

    def backward(ctx, g):
        return g, g


class Sub(Function):
    def forward(ctx, a, b):
        return a - b

    def backward(ctx, g):
        return g, -g


class Mul(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return parallel.binary(xp_of(a).multiply, a, b)   # a * b (large ones on all cores)

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da, db = ctx.needs_input_grad
        mul = xp_of(g).multiply
        return (parallel.binary(mul, g, b) if da else None), \
            (parallel.binary(mul, g, a) if db else None)


class Div(Function):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a / b

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        ga = g / b
        return ga, (-ga * a / b if ctx.needs_input_grad[1] else None)  # d(a/b)/db = -a/b^2


class Neg(Function):
    def forward(ctx, a):
        return -a

    def backward(ctx, g):
        return -g


class Pow(Function):
    """a ** b for two tensors (b may broadcast). d/da = b a^(b-1), d/db = a^b log a."""

    def forward(ctx, a, b):
        y = a ** b
        ctx.save_for_backward(a, b, y)
        return y

    def backward(ctx, g):
        a, b, y = ctx.saved_tensors
        xp = xp_of(a)
        ga = g * b * a ** (b - 1)
        gb = g * y * xp.log(xp.where(a > 0, a, 1)) if ctx.needs_input_grad[1] else None
        return ga, gb


class PowScalar(Function):
    """a ** p for a Python number p: d/da = p a^(p-1)."""

    name = "pow"

    def forward(ctx, a, p):
        ctx.save_for_backward(a)
        ctx.p = p
        return a ** p

    def backward(ctx, g):
        (a,) = ctx.saved_tensors
        return g * ctx.p * a ** (ctx.p - 1)


class Exp(Function):
    def forward(ctx, x):
        y = xp_of(x).exp(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y


class Log(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return xp_of(x).log(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g / x


class Sqrt(Function):
    def forward(ctx, x):
        y = xp_of(x).sqrt(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * 0.5 / y


class Abs(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return xp_of(x).abs(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * xp_of(x).sign(x)  # 0 at the kink


class Tanh(Function):
    def forward(ctx, x):
        y = xp_of(x).tanh(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)


class Sigmoid(Function):
    def forward(ctx, x):
        xp = xp_of(x)
        # 1/(1+e^-x) for x >= 0 and e^x/(1+e^x) for x < 0: never overflows
        e = xp.exp(-xp.abs(x))
        y = xp.where(x >= 0, 1 / (1 + e), e / (1 + e))
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


class ReLU(Function):
    """y = max(x, 0); dx = g where x > 0, else 0 (x is kept: its input tensor lives anyway)."""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return parallel.blockwise(lambda a, out: xp_of(a).maximum(a, 0, out=out[0]), x,
                                  out=parallel.empty_like(x))

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return parallel.blockwise(lambda g_, a, out: xp_of(a).multiply(g_, a > 0, out=out[0]),
                                  g, x, out=parallel.empty_like(g))


class Erf(Function):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.erf(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 / math.sqrt(math.pi)) * xp_of(x).exp(-x * x)


# Each GELU pass takes ``out``, the arrays it fills (given by ``parallel.blockwise`` one block
# at a time, so no block result is copied into place); without it, it makes new ones.

def _gelu_exact(x, out=None):
    """y = x Φ(x) and Φ(x) = (1 + erf(x / √2)) / 2, kept for backward."""
    y, cdf = out if out is not None else (xp_of(x).empty_like(x), xp_of(x).empty_like(x))
    backend.normal_cdf_block(x, out=cdf)
    xp_of(x).multiply(x, cdf, out=y)
    return y, cdf


def _gelu_exact_grad(g, x, cdf, out=None):
    """g (Φ(x) + x φ(x))."""
    xp = xp_of(x)
    d = out[0] if out is not None else xp.empty_like(x)
    xp.multiply(x, x, out=d)
    d *= -0.5
    xp.exp(d, out=d)
    d *= INV_SQRT_2PI      # φ(x)
    d *= x
    d += cdf
    d *= g
    return d


def _gelu_tanh(x, out=None):
    """y = x s and s = (1 + t) / 2, t = tanh(z), z = √(2/π) (x + 0.044715 x³); s kept for
    backward. s is computed as the same number written as a sigmoid, s = 1 / (1 + exp(-2z)):
    NumPy's float32 ``exp`` costs about half its ``tanh`` (see ``backend.normal_cdf_block``)."""
    xp = xp_of(x)
    y, s = out if out is not None else (xp.empty_like(x), xp.empty_like(x))
    with backend.overflow_to_inf():   # exp(-2z) = inf far left (x³ too, |x| > 1e13): s = 0
        xp.multiply(x, x, out=s)  # in place from here: a new array costs more than arithmetic
        s *= -2 * 0.044715 * SQRT_2_OVER_PI
        s -= 2 * SQRT_2_OVER_PI
        s *= x  # -2z
        xp.exp(s, out=s)
    s += 1
    xp.divide(1.0, s, out=s)
    xp.multiply(x, s, out=y)
    return y, s


def _gelu_tanh_grad(g, x, s, out=None):
    """g s (1 + 2 x (1 - s) u'), u' = √(2/π) (1 + 3·0.044715 x²), using 1 - t² = 4 s (1 - s)."""
    xp = xp_of(x)
    d = out[0] if out is not None else xp.empty_like(x)
    xp.multiply(x, x, out=d)
    d *= 2 * SQRT_2_OVER_PI * 3 * 0.044715
    d += 2 * SQRT_2_OVER_PI  # 2 u'
    d *= x
    d *= 1 - s
    d += 1
    d *= s
    d *= g
    return d


class GELU(Function):
    """GELU(x) = x Φ(x) (exact, with erf) or its tanh approximation (Hendrycks & Gimpel).

    exact:  y = x Φ(x),            dy/dx = Φ(x) + x φ(x)
    tanh:   y = x s,  s = (1 + t) / 2,  t = tanh(√(2/π) (x + 0.044715 x³)),
            dy/dx = s + x (1 - t²) √(2/π) (1 + 3·0.044715 x²) / 2
    Forward keeps Φ(x) (or s) for backward, so erf/tanh run once per element. Both passes
    run flat, in cache-sized blocks on all cores (``parallel.blockwise``); on the GPU each pass
    is one fused kernel (``cuda_kernels``) computing the same formula.
    """

    def forward(ctx, x, approximate="none"):
        ctx.approximate = approximate
        xf = x.reshape(-1)
        y, saved = gelu_forward(xf, approximate)
        ctx.save_for_backward(xf, saved)
        return y.reshape(x.shape)

    def backward(ctx, g):
        xf, saved = ctx.saved_tensors
        return gelu_backward(g.reshape(-1), xf, saved, ctx.approximate).reshape(g.shape)


def gelu_forward(x, approximate: str = "none", bias=None, bias_layout: str = "row"):
    """GELU of a raw array: (y, saved), saved = Φ(x) (exact) or s (tanh) for ``gelu_backward``.

    ``bias``: added to x *in place* first, in the same pass over each block, so x ends up
    holding the GELU's input x + bias (``F.linear(..., act="gelu")`` uses this).
    ``bias_layout="row"``: one bias per column, shape (F,) for x (N, F), as Linear's;
    ``"column"``: one per row, shape (N,), as LinearColumns' (the same names as
    ``gelu_backward``'s ``bias_grad``).
    """
    if bias is not None:
        want = {"row": x.shape[-1:], "column": x.shape[:1]}.get(bias_layout)
        if want is None:
            raise ValueError(f"bias_layout must be 'row' or 'column', got {bias_layout!r}")
        if x.ndim != 2 or bias.shape != want:
            raise ValueError(f"a {bias_layout} bias for an input of shape {x.shape} must have "
                             f"shape {want} (and the input must be 2-D), got {bias.shape}")
        if bias_layout == "column":
            bias = bias[:, None]
    if cuda_kernels.enabled(x):
        if bias is not None:
            x += bias
        return cuda_kernels.gelu_forward(x, approximate)
    fn = _gelu_tanh if approximate == "tanh" else _gelu_exact
    out = parallel.empty_like(x, 2)
    if bias is None:
        return parallel.blockwise(fn, x, out=out)
    if bias_layout == "column":          # the bias is cut into blocks with x's rows
        def shifted(xb, bb, out):
            xb += bb
            return fn(xb, out=out)

        return parallel.blockwise(shifted, x, bias, out=out)

    def shifted_row(xb, out):            # every block gets the whole row of biases
        xb += bias
        return fn(xb, out=out)

    return parallel.blockwise(shifted_row, x, out=out)


def gelu_backward(g, x, saved, approximate: str = "none", bias_grad: str | None = None):
    """dL/dx of ``gelu_forward`` from its x and saved array.

    ``bias_grad="row"`` also returns the column sums of dL/dx (the gradient of a row bias),
    ``"column"`` its row sums (a column bias), each summed block by block in the same pass.
    """
    if cuda_kernels.enabled(g):
        gx = cuda_kernels.gelu_backward(g, x, saved, approximate)
    else:
        fn = _gelu_tanh_grad if approximate == "tanh" else _gelu_exact_grad
        if bias_grad == "row":
            gx = parallel.empty_like(x)[0]

            def fill(gb, xb, sb, ob):
                return fn(gb, xb, sb, out=(ob,))

            return gx, parallel.sum_rows(fill, g, x, saved, gx)
        if bias_grad == "column":
            gx, gb = parallel.empty_like(x)[0], xp_of(x).empty(x.shape[0], x.dtype)

            def fill_and_sum(gb_, xb, sb, out):
                fn(gb_, xb, sb, out=out[:1])
                out[1][...] = parallel.row_sums(out[0])
                return out

            parallel.blockwise(fill_and_sum, g, x, saved, out=(gx, gb))
            return gx, gb
        gx = parallel.blockwise(fn, g, x, saved, out=parallel.empty_like(x))
    if bias_grad == "row":
        return gx, parallel.column_sums(gx)
    if bias_grad == "column":
        return gx, parallel.row_sums(gx)
    return gx


class Maximum(Function):
    """Elementwise max; at ties each input gets half the gradient."""

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return xp_of(a).maximum(a, b)

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        share = ((a > b) + 0.5 * (a == b)).astype(g.dtype, copy=False)
        return g * share, g * (1 - share)


class Minimum(Function):
    """Elementwise min; at ties each input gets half the gradient."""

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return xp_of(a).minimum(a, b)

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        share = ((a < b) + 0.5 * (a == b)).astype(g.dtype, copy=False)
        return g * share, g * (1 - share)


class Where(Function):
    """``cond ? a : b``; ``cond`` is a boolean array (not differentiated)."""

    def forward(ctx, a, b, cond):
        ctx.save_for_backward(cond)
        return xp_of(a).where(cond, a, b)

    def backward(ctx, g):
        (cond,) = ctx.saved_tensors
        return g * cond, g * ~cond


class Clip(Function):
    """Clamp to [lo, hi]; the gradient passes where lo <= x <= hi."""

    def forward(ctx, x, lo=None, hi=None):
        inside = xp_of(x).ones(x.shape, dtype=bool)
        if lo is not None:
            inside &= x >= lo
        if hi is not None:
            inside &= x <= hi
        ctx.save_for_backward(inside)
        return xp_of(x).clip(x, lo, hi)

    def backward(ctx, g):
        (inside,) = ctx.saved_tensors
        return g * inside


class Cast(Function):
    """Change the float dtype; the gradient is cast back."""

    def forward(ctx, x, dtype=None):
        ctx.dtype = x.dtype
        return x.astype(dtype)

    def backward(ctx, g):
        return g.astype(ctx.dtype)


class ToDevice(Function):
    """Move to "cpu" or "cuda"; the gradient moves back."""

    def forward(ctx, x, device="cpu"):
        ctx.device = backend.device_of(x)
        return backend.to_device(x, device)

    def backward(ctx, g):
        return backend.to_device(g, ctx.device)


# --- the functional names -------------------------------------------------------------------

def add(a, b): return Add.apply(a, b)
def sub(a, b): return Sub.apply(a, b)
def mul(a, b): return Mul.apply(a, b)
def div(a, b): return Div.apply(a, b)
def neg(a): return Neg.apply(a)
def exp(x): return Exp.apply(x)
def log(x): return Log.apply(x)
def sqrt(x): return Sqrt.apply(x)
def abs(x): return Abs.apply(x)  # noqa: A001 (PyTorch's name)
def tanh(x): return Tanh.apply(x)
def sigmoid(x): return Sigmoid.apply(x)
def relu(x): return ReLU.apply(x)
def erf(x): return Erf.apply(x)
def maximum(a, b): return Maximum.apply(a, b)
def minimum(a, b): return Minimum.apply(a, b)


def pow(a, b):  # noqa: A001
    """``a ** b``; a Python-number exponent is an attribute, a tensor exponent is differentiated."""
    if isinstance(b, (int, float)):
        # float(): a NumPy float64 scalar (a float subclass) would make a float32 x float64
        return PowScalar.apply(a, p=float(b) if isinstance(b, float) else b)
    return Pow.apply(a, b)


def gelu(x, approximate: str = "none"):
    """GELU, exact (``"none"``, erf form) or ``"tanh"`` approximation."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return GELU.apply(x, approximate=approximate)


def where(cond, a, b):
    """``cond ? a : b`` elementwise; ``cond`` is a boolean Tensor or array."""
    from ..tensor import Tensor  # noqa: PLC0415

    if isinstance(cond, Tensor):
        cond = cond.data
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise TypeError("where: at least one of a, b must be a Tensor")
    ref = a if isinstance(a, Tensor) else b
    cond = xp_of(ref.data).asarray(cond, dtype=bool)
    return Where.apply(a, b, cond=cond)


def clip(x, lo=None, hi=None):
    """Clamp ``x`` to ``[lo, hi]`` (either bound may be None)."""
    if lo is None and hi is None:
        raise ValueError("clip: give at least one of lo, hi")
    return Clip.apply(x, lo=lo, hi=hi)

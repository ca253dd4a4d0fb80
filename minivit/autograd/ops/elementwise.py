"""Elementwise ops: each forward beside its derivative.

Binary ops broadcast like NumPy; their backward returns the gradient at the broadcast shape
and the engine sums it back to each input's shape. These are the reference bodies; Add, Mul,
ReLU, Erf and GELU also have fast bodies in ``minivit/kernels/cpu_elementwise.py``.
"""
from __future__ import annotations

import math

from .. import backend
from ..function import Function

xp_of = backend.get_array_module
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


class Add(Function):
    """Fast body: minivit/kernels/cpu_elementwise.py (AddFast)."""

    def forward(ctx, a, b):
        return a + b

    def backward(ctx, g):
        return g, g


class Sub(Function):
    def forward(ctx, a, b):
        return a - b

    def backward(ctx, g):
        return g, -g


class Mul(Function):
    """y = a b;  da = g b,  db = g a.  Fast body: minivit/kernels/cpu_elementwise.py."""

    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a * b

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da, db = ctx.needs_input_grad
        return (g * b if da else None), (g * a if db else None)


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


def sigmoid_value(x):
    """σ(x) = 1 / (1 + e^-x), written as 1/(1+e^-|x|) for x >= 0 and e^-|x|/(1+e^-|x|) for
    x < 0, so that e^-|x| <= 1 never overflows (the one sigmoid: SiLU uses it too)."""
    xp = xp_of(x)
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


class Sigmoid(Function):
    """y = σ(x);  dy/dx = σ(x) (1 - σ(x)) = y (1 - y)."""

    def forward(ctx, x):
        y = sigmoid_value(x)
        ctx.save_for_backward(y)
        return y

    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * y * (1 - y)


class ReLU(Function):
    """y = max(x, 0);  dx = g where x > 0, else 0.  Fast body: kernels/cpu_elementwise.py."""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return xp_of(x).maximum(x, 0)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x > 0)


class Erf(Function):
    """y = erf(x) = 2/√π ∫_0^x e^(-t²) dt;  dy/dx = 2/√π e^(-x²).
    Fast body (float32 rational approximation): minivit/kernels/cpu_elementwise.py."""

    def forward(ctx, x):
        ctx.save_for_backward(x)
        return backend.erf(x)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (2 / math.sqrt(math.pi)) * xp_of(x).exp(-x * x)


# --- GELU: the one set of formulas (the fast bodies compute the same numbers) ---------------

GELU_TANH_C = 0.044715


def normal_cdf(x):
    """Φ(x) = (1 + erf(x / √2)) / 2, the standard normal CDF."""
    return 0.5 * (1 + backend.erf(x * (1 / math.sqrt(2))))


def normal_pdf(x):
    """φ(x) = Φ'(x) = e^(-x²/2) / √(2π)."""
    return xp_of(x).exp(-0.5 * x * x) * INV_SQRT_2PI


def gelu_value(x, approximate: str = "none"):
    """GELU(x) = x Φ(x) (exact), or x (1 + tanh(√(2/π) (x + 0.044715 x³))) / 2 (tanh)."""
    if approximate == "tanh":
        with backend.overflow_to_inf():      # x³ = inf far out: tanh(±inf) = ±1
            t = xp_of(x).tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
        return 0.5 * x * (1 + t)
    return x * normal_cdf(x)


def gelu_derivative(x, approximate: str = "none"):
    """d GELU / dx = Φ(x) + x φ(x) (exact); for tanh, with t = tanh(u),
    u = √(2/π) (x + 0.044715 x³): (1 + t) / 2 + x (1 - t²) u'(x) / 2,
    u'(x) = √(2/π) (1 + 3·0.044715 x²)."""
    if approximate == "tanh":
        with backend.overflow_to_inf():
            t = xp_of(x).tanh(SQRT_2_OVER_PI * (x + GELU_TANH_C * x * x * x))
            du = SQRT_2_OVER_PI * (1 + 3 * GELU_TANH_C * x * x)
            return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * du
    return normal_cdf(x) + x * normal_pdf(x)


class GELU(Function):
    """GELU(x) = x Φ(x) (Hendrycks & Gimpel), exact (with erf) or its tanh approximation.

    y = x Φ(x), so by the product rule dy/dx = Φ(x) + x Φ'(x) = Φ(x) + x φ(x) with
    φ(x) = e^(-x²/2) / √(2π). The tanh form replaces Φ(x) by s = (1 + tanh(u)) / 2,
    u = √(2/π) (x + 0.044715 x³), and tanh' = 1 - tanh² gives
    dy/dx = s + x (1 - tanh(u)²) u'(x) / 2.  Backward: dx = g dy/dx.

    Fast body: minivit/kernels/cpu_elementwise.py (blocked on all cores, a float32 Φ
    polynomial from minivit/kernels/normal_cdf.py; one CUDA kernel per pass on the GPU).
    """

    def forward(ctx, x, approximate="none"):
        ctx.approximate = approximate
        ctx.save_for_backward(x)
        return gelu_value(x, approximate)

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * gelu_derivative(x, ctx.approximate)


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

"""Fast bodies of the elementwise ops: Add, Mul, ReLU, Erf and GELU.

Each computes what its reference body in ``minivit/autograd/ops/elementwise.py`` does, in
cache-sized blocks on all cores (``parallel.blockwise``: a chain of ufuncs runs on one block
while it sits in cache), in place where a new array would cost more than the
arithmetic, and as one CUDA kernel per pass on the GPU (``cuda.py``).
"""
from __future__ import annotations

import math

from ..autograd import backend
from ..autograd.ops.elementwise import GELU_TANH_C, Add, Erf, GELU, Mul, ReLU
from . import cuda, normal_cdf, parallel
from . import register

xp_of = backend.get_array_module
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


@register(Add)
class AddFast(Add):
    def forward(ctx, a, b):
        return parallel.add(a, b)  # big same-shape arrays on all cores


@register(Mul)
class MulFast(Mul):
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return parallel.binary(xp_of(a).multiply, a, b)

    def backward(ctx, g):
        a, b = ctx.saved_tensors
        da, db = ctx.needs_input_grad
        mul = xp_of(g).multiply
        return (parallel.binary(mul, g, b) if da else None), \
            (parallel.binary(mul, g, a) if db else None)


@register(ReLU)
class ReLUFast(ReLU):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return parallel.blockwise(lambda a, out: xp_of(a).maximum(a, 0, out=out[0]), x,
                                  out=parallel.empty_like(x))

    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return parallel.blockwise(lambda g_, a, out: xp_of(a).multiply(g_, a > 0, out=out[0]),
                                  g, x, out=parallel.empty_like(g))


@register(Erf)
class ErfFast(Erf):
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return normal_cdf.erf(x)


def grad_wanted(ctx) -> bool:
    """In a forward body: will backward run? (``Function.apply`` sets ``needs_input_grad``
    before forward; a body called some other way, with it still empty, assumes yes.)"""
    return any(ctx.needs_input_grad) or not ctx.needs_input_grad


# --- GELU --------------------------------------------------------------------------------
# Each pass takes ``out``, the arrays it fills (given by ``parallel.blockwise`` one block at a
# time, so no block result is copied into place); without it, it makes new ones. When a
# gradient will be wanted, the forward also computes the derivative dy/dx while x is in cache
# and keeps it instead of x and Φ(x): the backward is then one product, g dy/dx, and only one
# array of x's size stays alive between the passes. (Without a gradient the second array
# holds Φ(x) or s, and nobody reads it.)

def gelu_exact_block(x, out=None, grad=True):
    """y = x Φ(x) (Φ by ``normal_cdf.normal_cdf_block``) and, with ``grad``, its derivative
    Φ(x) + x φ(x), φ(x) = exp(-x²/2) / √(2π)."""
    xp = xp_of(x)
    y, d = out if out is not None else (xp.empty_like(x), xp.empty_like(x))
    normal_cdf.normal_cdf_block(x, out=d)       # Φ(x), then the derivative in the same array
    xp.multiply(x, d, out=y)
    if grad:
        t = xp.multiply(x, x)
        t *= -0.5
        xp.exp(t, out=t)
        t *= INV_SQRT_2PI      # φ(x)
        t *= x
        d += t
    return y, d


def gelu_tanh_block(x, out=None, grad=True):
    """y = x s, s = (1 + tanh(z)) / 2, z = √(2/π) (x + 0.044715 x³), computed as the same
    number written as a sigmoid, s = 1 / (1 + exp(-2z)); with ``grad``, its derivative
    s (1 + 2 x (1 - s) z'), z' = √(2/π) (1 + 3·0.044715 x²), using 1 - tanh² = 4 s (1 - s)."""
    xp = xp_of(x)
    y, s = out if out is not None else (xp.empty_like(x), xp.empty_like(x))
    with backend.overflow_to_inf():   # exp(-2z) = inf far left (x³ too, |x| > 1e13): s = 0
        xp.multiply(x, x, out=s)
        s *= -2 * GELU_TANH_C * SQRT_2_OVER_PI
        s -= 2 * SQRT_2_OVER_PI
        s *= x  # -2z
        xp.exp(s, out=s)
    s += 1
    xp.divide(1.0, s, out=s)
    xp.multiply(x, s, out=y)
    if grad:
        t = xp.multiply(x, x)
        t *= 2 * SQRT_2_OVER_PI * 3 * GELU_TANH_C
        t += 2 * SQRT_2_OVER_PI  # 2 z'
        t *= x
        t *= 1 - s
        t += 1
        s *= t                   # s becomes the derivative
    return y, s


def gelu_grad_block(g, d, out=None):
    """dL/dx = g dy/dx, from the derivative the forward kept."""
    return xp_of(g).multiply(g, d, out=None if out is None else out[0])


# approximate -> the forward block, for the ops that fuse a GELU (backward: ``gelu_grad_block``)
GELU_BLOCKS = {"none": gelu_exact_block, "tanh": gelu_tanh_block}


def gelu_forward(x, approximate: str = "none", grad: bool = True):
    """(y, saved) of a raw array: ``saved`` is what ``gelu_backward`` needs, a tuple of arrays,
    on the CPU (dy/dx,) (nothing of use without ``grad``), on the GPU (x, Φ(x) or s)."""
    if cuda.enabled(x):
        y, kept = cuda.gelu_forward(x, approximate)
        return y, (x, kept)
    fn = GELU_BLOCKS[approximate]
    y, d = parallel.blockwise(lambda a, out: fn(a, out, grad), x, out=parallel.empty_like(x, 2))
    return y, (d,)


def gelu_backward(g, saved, approximate: str = "none"):
    """dL/dx of ``gelu_forward`` from the ``saved`` it returned."""
    if cuda.enabled(g):
        return cuda.gelu_backward(g, *saved, approximate)
    return parallel.blockwise(gelu_grad_block, g, saved[0], out=parallel.empty_like(g))


@register(GELU)
class GELUFast(GELU):
    def forward(ctx, x, approximate="none"):
        ctx.approximate = approximate
        y, saved = gelu_forward(x.reshape(-1), approximate, grad=grad_wanted(ctx))
        ctx.save_for_backward(*saved)
        return y.reshape(x.shape)

    def backward(ctx, g):
        return gelu_backward(g.reshape(-1), ctx.saved_tensors, ctx.approximate).reshape(g.shape)

"""Fast bodies of the elementwise ops: Add, Mul, ReLU, Erf and GELU.

Each computes what its reference body in ``minivit/autograd/ops/elementwise.py`` does, in
cache-sized blocks on all cores (``parallel.blockwise``: a chain of ufuncs runs on one block
while it sits in the L2 cache), in place where a new array would cost more than the
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


# --- GELU --------------------------------------------------------------------------------
# Each pass takes ``out``, the arrays it fills (given by ``parallel.blockwise`` one block at a
# time, so no block result is copied into place); without it, it makes new ones. Forward keeps
# Φ(x) (or s) for backward, so the exp runs once per element.

def gelu_exact_block(x, out=None):
    """y = x Φ(x) and Φ(x) (``normal_cdf.normal_cdf_block``), kept for backward."""
    y, cdf = out if out is not None else (xp_of(x).empty_like(x), xp_of(x).empty_like(x))
    normal_cdf.normal_cdf_block(x, out=cdf)
    xp_of(x).multiply(x, cdf, out=y)
    return y, cdf


def gelu_exact_grad_block(g, x, cdf, out=None):
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


def gelu_tanh_block(x, out=None):
    """y = x s and s = (1 + tanh(z)) / 2, z = √(2/π) (x + 0.044715 x³), kept for backward,
    computed as the same number written as a sigmoid, s = 1 / (1 + exp(-2z))."""
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
    return y, s


def gelu_tanh_grad_block(g, x, s, out=None):
    """g s (1 + 2 x (1 - s) u'), u' = √(2/π) (1 + 3·0.044715 x²), using 1 - t² = 4 s (1 - s)."""
    xp = xp_of(x)
    d = out[0] if out is not None else xp.empty_like(x)
    xp.multiply(x, x, out=d)
    d *= 2 * SQRT_2_OVER_PI * 3 * GELU_TANH_C
    d += 2 * SQRT_2_OVER_PI  # 2 u'
    d *= x
    d *= 1 - s
    d += 1
    d *= s
    d *= g
    return d


# approximate -> (forward block, backward block), for the ops that fuse a GELU
GELU_BLOCKS = {"none": (gelu_exact_block, gelu_exact_grad_block),
               "tanh": (gelu_tanh_block, gelu_tanh_grad_block)}


def gelu_forward(x, approximate: str = "none"):
    """(y, saved) of a raw array, saved = Φ(x) (exact) or s (tanh) for ``gelu_backward``."""
    if cuda.enabled(x):
        return cuda.gelu_forward(x, approximate)
    return parallel.blockwise(GELU_BLOCKS[approximate][0], x, out=parallel.empty_like(x, 2))


def gelu_backward(g, x, saved, approximate: str = "none"):
    """dL/dx of ``gelu_forward`` from its x and saved array."""
    if cuda.enabled(g):
        return cuda.gelu_backward(g, x, saved, approximate)
    return parallel.blockwise(GELU_BLOCKS[approximate][1], g, x, saved,
                              out=parallel.empty_like(x))


@register(GELU)
class GELUFast(GELU):
    def forward(ctx, x, approximate="none"):
        ctx.approximate = approximate
        xf = x.reshape(-1)
        y, saved = gelu_forward(xf, approximate)
        ctx.save_for_backward(xf, saved)
        return y.reshape(x.shape)

    def backward(ctx, g):
        xf, saved = ctx.saved_tensors
        return gelu_backward(g.reshape(-1), xf, saved, ctx.approximate).reshape(g.shape)

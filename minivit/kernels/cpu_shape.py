"""Fast body of Reshape: reshaping a large permuted view copies it on all cores."""
from __future__ import annotations

from ..autograd.ops.shape import Reshape, _reshape
from . import parallel, register


@register(Reshape)
class ReshapeFast(Reshape):
    def forward(ctx, x, shape=()):
        ctx.shape = x.shape
        return _reshape(lambda s: parallel.reshape(x, s), x, shape)

    def backward(ctx, g):
        return parallel.reshape(g, ctx.shape)

"""Fast body of MatMul: a stack of small products (attention's heads) split over the CPU
threads (``parallel.matmul``; NumPy runs a batched product on one core)."""
from __future__ import annotations

from ..autograd import backend
from ..autograd.flops import add_flops
from ..autograd.ops.matmul import MatMul, check_matmul
from . import parallel, register

xp_of = backend.get_array_module


@register(MatMul)
class MatMulFast(MatMul):
    def forward(ctx, a, b):
        check_matmul(a, b)
        ctx.save_for_backward(a, b)
        out = parallel.matmul(a, b)
        add_flops(2 * out.size * a.shape[-1])
        return out

    def backward(ctx, g):
        return ctx.backward_with(g, parallel.matmul)

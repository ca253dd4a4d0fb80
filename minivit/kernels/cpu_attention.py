"""Fast bodies of scaled dot-product attention and self-attention (the reference bodies and
the formulas are in ``minivit/nn/functional/attention.py``): the heads' products split over
the CPU threads (``parallel.matmul``), the softmax rows in blocks on all cores (the one fast
softmax, ``cpu_reduce.softmax_rows``), the heads copied once into contiguous matrices.
"""
from __future__ import annotations

from ..autograd import backend
from ..autograd.flops import add_flops
from ..nn import _random
from ..nn.functional.attention import ScaledDotProductAttention, SelfAttention
from . import cuda, cuda_rows, parallel, register
from .cpu_reduce import softmax_rows, softmax_rows_backward

xp_of = backend.get_array_module


def _attend(q, k, v, bias, keep, scale, dropout_p):
    """The forward math on raw arrays q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv):
    returns (P v, P, the dropout mask or None)."""
    xp = xp_of(q)
    s = parallel.matmul(q, xp.swapaxes(k, -1, -2))
    add_flops(2 * s.size * q.shape[-1] + 2 * s.size * v.shape[-1])  # q k^T and P v
    if bias is None and keep is None and scale > 0 and cuda.enabled(s):
        p = cuda_rows.softmax_rows(s.reshape(-1, s.shape[-1]), scale).reshape(s.shape)
        return _attend_rest(p, v, q, dropout_p)
    s *= scale
    if bias is not None:
        s += bias            # the mask broadcasts to the scores' shape (checked by the callers)
    if keep is not None:  # boolean mask: True = attend
        s = xp.where(keep, s, -xp.inf)
    s2 = s.reshape(-1, s.shape[-1])
    p = parallel.blockwise(softmax_rows, s2, out=parallel.empty_like(s2)).reshape(s.shape)
    return _attend_rest(p, v, q, dropout_p)


def _attend_rest(p, v, q, dropout_p):
    """P v after the softmax, with dropout on P: (P v, P, the mask or None)."""
    drop = None
    pd = p
    if dropout_p > 0.0:
        drop = _random.bernoulli(p.shape, 1.0 - dropout_p, backend.device_of(q))
        pd = p * drop * (1.0 / (1.0 - dropout_p))
    return parallel.matmul(pd, v), p, drop


def _attend_backward(g, q, k, v, p, drop, scale, dropout_p, need, out=(None, None, None)):
    """The backward math: (dq, dk, dv, dS) from the incoming gradient g of P v; dq, dk, dv
    (each None where ``need`` says so) go into the arrays in ``out`` where given."""
    xp = xp_of(g)
    inv_keep = 1.0 / (1.0 - dropout_p)
    pd = p if drop is None else p * drop * inv_keep
    gv = parallel.matmul(xp.swapaxes(pd, -1, -2), g, out=out[2]) if need[2] else None
    dp = parallel.matmul(g, xp.swapaxes(v, -1, -2))
    if drop is not None:
        dp = dp * drop * inv_keep
    p2 = p.reshape(-1, p.shape[-1])
    ds = parallel.blockwise(softmax_rows_backward, p2, dp.reshape(-1, p.shape[-1]),
                            out=parallel.empty_like(p2)).reshape(p.shape)
    gq = gk = None
    if need[0]:
        gq = parallel.matmul(ds, k, out=out[0])
        gq *= scale
    if need[1]:
        gk = parallel.matmul(xp.swapaxes(ds, -1, -2), q, out=out[1])
        gk *= scale
    return gq, gk, gv, ds


@register(ScaledDotProductAttention)
class ScaledDotProductAttentionFast(ScaledDotProductAttention):

    def forward(ctx, q, k, v, *bias, scale=1.0, keep=None, dropout_p=0.0):
        out, p, drop = _attend(q, k, v, bias[0] if bias else None, keep, scale, dropout_p)
        ctx.scale, ctx.dropout_p, ctx.has_bias = scale, dropout_p, bool(bias)
        ctx.save_for_backward(q, k, v, p, drop)
        return out

    def backward(ctx, g):
        q, k, v, p, drop = ctx.saved_tensors
        need = ctx.needs_input_grad
        gq, gk, gv, ds = _attend_backward(g, q, k, v, p, drop, ctx.scale, ctx.dropout_p, need)
        if ctx.has_bias:
            return gq, gk, gv, (ds if need[3] else None)
        return gq, gk, gv


# Self-attention straight from the packed projections. qkv = x W_qkv^T + b comes out of its
# GEMM as (B, N, 3, heads, d) (timm's column order); the heads' products want stacks of
# contiguous (N, d) matrices: BLAS runs MaxViT's 16x32 ones about twice as fast contiguous as
# through strided views of the packed array (each product is small enough that its call and
# memory access, not its arithmetic, set the time). So q, k, v are copied once, on all cores,
# into one (3, B, heads, N, d) array, their gradients are written by the products into one
# such array, and the output and the input gradient are copied back to the tokens' layouts:
# four copies, where splitting qkv into q, k, v Tensors and joining their gradients took
# five, and left every product on strided operands.

def _split_heads(x, parts: int, heads: int):
    """(B, N, parts·heads·d) -> a new contiguous (parts, B, heads, N, d) array."""
    B, N, C = x.shape
    d = C // (parts * heads)
    out = xp_of(x).empty((parts, B, heads, N, d), x.dtype)
    parallel.copyto(out, x.reshape(B, N, parts, heads, d).transpose(2, 0, 3, 1, 4), axis=1)
    return out


def _merge_heads(x):
    """(parts, B, heads, N, d) -> a new contiguous (B, N, parts·heads·d) array."""
    parts, B, heads, N, d = x.shape
    out = xp_of(x).empty((B, N, parts, heads, d), x.dtype)
    parallel.copyto(out, x.transpose(1, 3, 0, 2, 4), axis=0)
    return out.reshape(B, N, parts * heads * d)


@register(SelfAttention)
class SelfAttentionFast(SelfAttention):
    """The reference's math without splitting q, k and v into separate strided views (see
    the comment above)."""

    def forward(ctx, qkv, *bias, num_heads=1, scale=1.0, keep=None, dropout_p=0.0):
        t = _split_heads(qkv, 3, num_heads)                      # (3, B, heads, N, d)
        out, p, drop = _attend(t[0], t[1], t[2], bias[0] if bias else None, keep, scale,
                               dropout_p)
        ctx.num_heads, ctx.scale, ctx.dropout_p, ctx.has_bias = (num_heads, scale, dropout_p,
                                                                 bool(bias))
        ctx.save_for_backward(t, p, drop)
        return _merge_heads(out[None])

    def backward(ctx, g):
        t, p, drop = ctx.saved_tensors
        need = ctx.needs_input_grad
        gt = xp_of(g).empty_like(t) if need[0] else None
        g4 = _split_heads(g, 1, ctx.num_heads)[0]                 # (B, heads, N, d)
        need_qkv = (need[0],) * 3
        _, _, _, ds = _attend_backward(g4, t[0], t[1], t[2], p, drop, ctx.scale,
                                       ctx.dropout_p, need_qkv,
                                       out=tuple(gt) if need[0] else (None, None, None))
        gqkv = _merge_heads(gt) if need[0] else None
        if ctx.has_bias:
            return gqkv, (ds if need[1] else None)
        return gqkv



"""Scaled dot-product attention: one Function, one batched matmul over all heads each way.
``scaled_dot_product_attention(q, k, v)`` takes the heads as separate arrays,
``self_attention(qkv, heads)`` the packed output of a qkv projection (the models use it).

    S = q k^T * scale + bias        (bias: an additive float mask, e.g. relative positions)
    P = softmax(S)  along keys      (rows where every key is masked give P = 0, not NaN)
    out = dropout(P) v

Backward, with D the dropout mask scaled by 1/(1-p) and Pd = P * D:
    dv = Pd^T g,   dP = (g v^T) * D,   dS = P * (dP - sum_k dP * P),
    dq = dS k * scale,   dk = dS^T q * scale,   dbias = dS (summed to its shape by the engine)
"""
from __future__ import annotations

import math

import numpy as np

from ...autograd import backend, cuda_kernels, parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function
from ...autograd.tensor import Tensor
from .. import _random

xp_of = backend.get_array_module


def _attend(q, k, v, bias, keep, scale, dropout_p):
    """The forward math on raw arrays q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv):
    returns (P v, P, the dropout mask or None)."""
    xp = xp_of(q)
    s = parallel.matmul(q, xp.swapaxes(k, -1, -2))
    add_flops(2 * s.size * q.shape[-1] + 2 * s.size * v.shape[-1])  # q k^T and P v
    s *= scale
    if bias is not None:
        s += bias            # the mask broadcasts to the scores' shape (checked by the callers)
    if keep is not None:  # boolean mask: True = attend
        s = xp.where(keep, s, -xp.inf)
    s2 = s.reshape(-1, s.shape[-1])
    p = parallel.blockwise(_softmax_rows, s2, out=parallel.empty_like(s2)).reshape(s.shape)
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
    ds = parallel.blockwise(_softmax_rows_backward, p2, dp.reshape(-1, p.shape[-1]),
                            out=parallel.empty_like(p2)).reshape(p.shape)
    gq = gk = None
    if need[0]:
        gq = parallel.matmul(ds, k, out=out[0])
        gq *= scale
    if need[1]:
        gk = parallel.matmul(xp.swapaxes(ds, -1, -2), q, out=out[1])
        gk *= scale
    return gq, gk, gv, ds


class ScaledDotProductAttention(Function):
    name = "scaled_dot_product_attention"

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


class SelfAttention(Function):
    """softmax(q k^T * scale + bias) v for every head, from packed qkv (B, N, 3·heads·d) to
    the heads side by side, (B, N, heads·d): the same math as ``ScaledDotProductAttention``,
    without splitting q, k and v into separate Tensors (see the comment above)."""
    name = "self_attention"

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


def _softmax_rows(s, out=None):
    """softmax along each row of s (rows, keys); rows in blocks on all cores (blockwise)."""
    xp = xp_of(s)
    p = out[0] if out is not None else xp.empty_like(s)
    m = parallel.row_max(s)[:, None]
    # a fully masked row has max -inf: take 0 there, so exp(-inf - 0) = 0 (the check is a
    # small pass on the CPU; on the GPU it would cost a device sync, so it always masks)
    finite = backend.device_of(s) == "cpu" and bool(xp.isfinite(m).all())
    if not finite:
        m = xp.where(xp.isfinite(m), m, 0)
    xp.subtract(s, m, out=p)
    xp.exp(p, out=p)
    den = parallel.row_sums(p)[:, None]  # >= 1 (the max itself gives e^0) unless fully masked
    p *= 1 / (den if finite else xp.where(den > 0, den, 1))
    return p


def _softmax_rows_backward(p, dp, out=None):
    """dS = P (dP - sum_k dP P) along each row."""
    if cuda_kernels.enabled(p):
        return cuda_kernels.softmax_backward(p, dp, -1)
    xp = xp_of(p)
    ds = out[0] if out is not None else xp.empty_like(p)
    xp.subtract(dp, xp.einsum("ij,ij->i", dp, p)[:, None], out=ds)
    ds *= p
    return ds


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p: float = 0.0,
                                 scale: float | None = None):
    """softmax(q k^T * scale + mask) v over the last two axes; q (..., Nq, d), k (..., Nk, d),
    v (..., Nk, dv); leading (batch, head) axes broadcast.

    ``attn_mask``: a float Tensor/array added to the scores (relative position bias; it may
    require grad), or a boolean one where True means "may attend"; either must broadcast to the
    scores' shape (..., Nq, Nk). ``scale`` defaults to 1/sqrt(d). ``dropout_p`` is applied to the
    attention probabilities whenever it is > 0 (pass 0.0 in eval, as PyTorch).

    ``F.scaled_dot_product_attention(q, k, v)`` with q, k, v of shape (B, heads, N, head_dim).
    """
    name = "scaled_dot_product_attention"
    for t_name, t in (("q", q), ("k", k), ("v", v)):
        if t.ndim < 2:
            raise ValueError(f"{name}: {t_name} must have at least 2 dims (..., N, d), "
                             f"got shape {tuple(t.shape)}")
    if q.shape[-1] != k.shape[-1] or k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{name}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do "
                         f"not fit: need q.shape[-1] == k.shape[-1] and k.shape[-2] == v.shape[-2]")
    try:
        lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    except ValueError:
        raise ValueError(f"{name}: the batch dims of q {tuple(q.shape)}, k {tuple(k.shape)} and "
                         f"v {tuple(v.shape)} do not broadcast") from None
    scores = tuple(lead) + (q.shape[-2], k.shape[-2])
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    bias, keep = _mask_inputs(name, attn_mask, scores, q)
    return ScaledDotProductAttention.apply(q, k, v, *bias, scale=scale, keep=keep,
                                           dropout_p=dropout_p)


def _mask_inputs(name: str, attn_mask, scores: tuple, like):
    """The mask as the Functions take it: (bias,) and keep=None for a float mask, () and the
    boolean array for a boolean one, () and None for none; checks that it broadcasts."""
    if attn_mask is None:
        return (), None
    mshape = tuple(attn_mask.shape)
    try:
        ok = np.broadcast_shapes(mshape, scores) == scores
    except ValueError:
        ok = False
    if not ok:
        raise ValueError(f"{name}: attn_mask of shape {mshape} does not broadcast to the "
                         f"attention scores of shape {scores} (..., Nq, Nk)")
    raw = attn_mask.data if isinstance(attn_mask, Tensor) else attn_mask
    if getattr(raw, "dtype", None) == np.bool_:
        return (), xp_of(like.data).asarray(raw)
    return (attn_mask,), None


def self_attention(qkv, num_heads: int, attn_mask=None, dropout_p: float = 0.0,
                   scale: float | None = None):
    """Multi-head self-attention from packed projections: ``qkv`` (B, N, 3·num_heads·d), its
    last axis ordered (q/k/v, head, d) as timm's ``qkv(x).reshape(B, N, 3, heads, d)``;
    returns (B, N, num_heads·d), the heads side by side, ready for the output projection.

    The same as splitting qkv into q, k, v of shape (B, heads, N, d), calling
    ``scaled_dot_product_attention`` and merging the heads, in one op (fewer copies, and the
    heads' products on contiguous matrices). ``attn_mask``, ``dropout_p`` and ``scale``
    (default 1/sqrt(d)) as there; the mask broadcasts to (B, heads, N, N).
    """
    name = "self_attention"
    if qkv.ndim != 3:
        raise ValueError(f"{name}: qkv must have shape (B, N, 3 * heads * head_dim), got "
                         f"{tuple(qkv.shape)}")
    if not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"{name}: num_heads must be a positive int, got {num_heads!r}")
    B, N, C3 = qkv.shape
    if C3 % (3 * num_heads) or C3 == 0:
        raise ValueError(f"{name}: the last axis of qkv ({C3}) must be 3 * num_heads "
                         f"({num_heads}) * head_dim for some head_dim >= 1")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"{name}: dropout_p must be in [0, 1), got {dropout_p}")
    d = C3 // (3 * num_heads)
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    bias, keep = _mask_inputs(name, attn_mask, (B, num_heads, N, N), qkv)
    return SelfAttention.apply(qkv, *bias, num_heads=int(num_heads), scale=scale, keep=keep,
                               dropout_p=dropout_p)


class RelToAbs(Function):
    """out[..., i, j] = x[..., i, j - i + L - 1]: logits against the 2L - 1 relative offsets of
    a length-L axis, (..., L, 2L - 1), turned into logits against the L absolute key positions,
    (..., L, L) (query i, key j, offset j - i). The official BoTNet code's ``rel_to_abs``
    pads and reshapes to the same effect.

    No gather is needed: in a contiguous row-major x, element (i, j - i + L - 1) sits at
    (L - 1) + i (2L - 2) + j elements from the start of its (L, 2L - 1) matrix, so ``out`` is
    the strided view of x starting at x[..., 0, L - 1] with row stride 2L - 2 and column stride
    1, copied. Each (i, j) reads a different element, so backward writes g into the same view
    of a zero array (the offsets a query never meets keep gradient 0): two copies, no
    scatter-add.
    """

    name = "rel_to_abs"

    def forward(ctx, x):
        xp = xp_of(x)
        if x.ndim < 2 or x.shape[-1] != 2 * x.shape[-2] - 1:
            raise ValueError(f"rel_to_abs: expected (..., L, 2L - 1) logits, got shape {x.shape}")
        x = xp.ascontiguousarray(x)
        ctx.x_shape = x.shape
        return _abs_view(x, writeable=False).copy()

    def backward(ctx, g):
        gx = xp_of(g).zeros(ctx.x_shape, g.dtype)
        _abs_view(gx, writeable=True)[...] = g
        return gx


def _abs_view(x, writeable: bool):
    """The (..., L, L) view of a contiguous (..., L, 2L - 1) array described in ``RelToAbs``."""
    length, item = x.shape[-2], x.itemsize
    start = x[..., length - 1:]   # the view begins at element (0, L - 1) of each matrix
    return backend.as_strided(start, x.shape[:-1] + (length,),
                              x.strides[:-2] + ((2 * length - 2) * item, item),
                              writeable=writeable)


def rel_to_abs(x):
    """(..., L, 2L - 1) relative-offset logits -> (..., L, L) absolute ones (see ``RelToAbs``):
    ``out[..., i, j] = x[..., i, j - i + L - 1]``."""
    return RelToAbs.apply(x)

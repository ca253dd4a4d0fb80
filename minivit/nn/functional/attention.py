"""Scaled dot-product attention: one Function, one batched matmul over all heads each way.

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


class ScaledDotProductAttention(Function):
    name = "scaled_dot_product_attention"

    def forward(ctx, q, k, v, *bias, scale=1.0, keep=None, dropout_p=0.0):
        xp = xp_of(q)
        s = parallel.matmul(q, xp.swapaxes(k, -1, -2))
        add_flops(2 * s.size * q.shape[-1] + 2 * s.size * v.shape[-1])  # q k^T and P v
        s *= scale
        if bias:
            s = s + bias[0]
        if keep is not None:  # boolean mask: True = attend
            s = xp.where(keep, s, -xp.inf)
        s2 = s.reshape(-1, s.shape[-1])
        p = parallel.blockwise(_softmax_rows, s2, out=parallel.empty_like(s2)).reshape(s.shape)
        drop = None
        pd = p
        if dropout_p > 0.0:
            drop = _random.bernoulli(p.shape, 1.0 - dropout_p, backend.device_of(q))
            pd = p * drop * (1.0 / (1.0 - dropout_p))
        ctx.scale, ctx.dropout_p, ctx.has_bias = scale, dropout_p, bool(bias)
        ctx.save_for_backward(q, k, v, p, drop)
        return parallel.matmul(pd, v)

    def backward(ctx, g):
        q, k, v, p, drop = ctx.saved_tensors
        xp = xp_of(g)
        need = ctx.needs_input_grad
        inv_keep = 1.0 / (1.0 - ctx.dropout_p)
        pd = p if drop is None else p * drop * inv_keep
        gv = parallel.matmul(xp.swapaxes(pd, -1, -2), g) if need[2] else None
        dp = parallel.matmul(g, xp.swapaxes(v, -1, -2))
        if drop is not None:
            dp = dp * drop * inv_keep
        p2 = p.reshape(-1, p.shape[-1])
        ds = parallel.blockwise(_softmax_rows_backward, p2, dp.reshape(-1, p.shape[-1]),
                                out=parallel.empty_like(p2)).reshape(p.shape)
        gq = parallel.matmul(ds, k) * ctx.scale if need[0] else None
        gk = parallel.matmul(xp.swapaxes(ds, -1, -2), q) * ctx.scale if need[1] else None
        if ctx.has_bias:
            return gq, gk, gv, (ds if need[3] else None)
        return gq, gk, gv


def _softmax_rows(s, out=None):
    """softmax along each row of s (rows, keys); rows in blocks on all cores (blockwise)."""
    xp = xp_of(s)
    p = out[0] if out is not None else xp.empty_like(s)
    m = s.max(axis=-1, keepdims=True)
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
    if attn_mask is None:
        return ScaledDotProductAttention.apply(q, k, v, scale=scale, dropout_p=dropout_p)
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
        keep = xp_of(q.data).asarray(raw)
        return ScaledDotProductAttention.apply(q, k, v, scale=scale, keep=keep,
                                               dropout_p=dropout_p)
    return ScaledDotProductAttention.apply(q, k, v, attn_mask, scale=scale, dropout_p=dropout_p)

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

from ...autograd import backend
from ...autograd.autocast import cast_inputs
from ...autograd.flops import add_flops
from ...autograd.function import Function
from ...autograd.ops.reduce import softmax_grad, softmax_value
from ...autograd.tensor import Tensor
from .. import _random

xp_of = backend.get_array_module


def attention_forward(q, k, v, bias, keep, scale, dropout_p):
    """The forward math on raw arrays q (..., Nq, d), k (..., Nk, d), v (..., Nk, dv):
    returns (out, P, the dropout mask or None). P, the attention probabilities, is explicit."""
    s = attention_scores(q, k, bias, keep, scale)
    add_flops(2 * s.size * q.shape[-1] + 2 * s.size * v.shape[-1])  # q k^T and P v
    p = softmax_value(s, -1)                                  # P = softmax(S) along keys
    drop, pd = None, p
    if dropout_p > 0.0:
        drop = _random.bernoulli(p.shape, 1.0 - dropout_p, backend.device_of(q))
        pd = p * drop * (1.0 / (1.0 - dropout_p))
    return pd @ v, p, drop


# Who wants to see the probabilities (``minivit.utils.capture_attention``): while this list is
# empty, attention runs as it always does; while it is not, each call also hands every
# observer P, computed again on the reference path by ``attention_probabilities``.
observers: list = []


def attention_scores(q, k, bias, keep, scale):
    """S = q k^T * scale + bias, and -inf where ``keep`` (True = may attend) is False."""
    xp = xp_of(q)
    s = (q @ xp.swapaxes(k, -1, -2)) * scale
    if bias is not None:
        s = s + bias                                          # relative positions, masks
    if keep is not None:
        s = xp.where(keep, s, -xp.inf)
    return s


def attention_probabilities(q, k, bias=None, keep=None, scale=1.0):
    """P = softmax(q k^T * scale + bias) along the keys, on raw arrays q (..., Nq, d) and
    k (..., Nk, d): the first half of ``attention_forward``, for those who look at P."""
    bias = bias.data if isinstance(bias, Tensor) else bias
    return softmax_value(attention_scores(q, k, bias, keep, scale), -1)


def _observe(q, k, bias: tuple, keep, scale) -> None:
    p = attention_probabilities(q, k, bias[0] if bias else None, keep, scale)
    for observer in list(observers):
        observer(p)


def attention_backward(g, q, k, v, p, drop, scale, dropout_p):
    """(dq, dk, dv, dS) from the gradient g of out = Pd v (the module docstring's formulas)."""
    xp = xp_of(g)
    pd = p if drop is None else p * drop * (1.0 / (1.0 - dropout_p))
    dv = xp.swapaxes(pd, -1, -2) @ g                          # dv = Pd^T g
    dp = g @ xp.swapaxes(v, -1, -2)                           # dPd = g v^T
    if drop is not None:
        dp = dp * drop * (1.0 / (1.0 - dropout_p))            # dP = dPd * D
    ds = softmax_grad(p, dp, -1)                              # dS = P (dP - Σ_k dP P)
    dq = (ds @ k) * scale
    dk = (xp.swapaxes(ds, -1, -2) @ q) * scale
    return dq, dk, dv, ds


class ScaledDotProductAttention(Function):
    """softmax(q k^T * scale + bias) v (module docstring). Fast body (the products split over
    the CPU threads, the softmax rows blocked): minivit/kernels/cpu_attention.py."""

    name = "scaled_dot_product_attention"

    def forward(ctx, q, k, v, *bias, scale=1.0, keep=None, dropout_p=0.0):
        out, p, drop = attention_forward(q, k, v, bias[0] if bias else None, keep, scale,
                                         dropout_p)
        ctx.scale, ctx.dropout_p, ctx.has_bias = scale, dropout_p, bool(bias)
        ctx.save_for_backward(q, k, v, p, drop)
        return out

    def backward(ctx, g):
        q, k, v, p, drop = ctx.saved_tensors
        gq, gk, gv, ds = attention_backward(g, q, k, v, p, drop, ctx.scale, ctx.dropout_p)
        return (gq, gk, gv, ds) if ctx.has_bias else (gq, gk, gv)


def split_heads(qkv, num_heads: int):
    """(B, N, 3·heads·d) -> q, k, v, each (B, heads, N, d) (views; timm's column order)."""
    B, N, C3 = qkv.shape
    t = qkv.reshape(B, N, 3, num_heads, C3 // (3 * num_heads)).transpose(2, 0, 3, 1, 4)
    return t[0], t[1], t[2]


def merge_heads(x):
    """(..., B, heads, N, d) -> (B, N, (...)·heads·d), the heads side by side."""
    *parts, B, heads, N, d = x.shape
    x = x.reshape(-1, B, heads, N, d).transpose(1, 3, 0, 2, 4)
    return x.reshape(B, N, -1)


class SelfAttention(Function):
    """Multi-head self-attention from packed qkv (B, N, 3·heads·d) to the heads side by side,
    (B, N, heads·d): split the heads, the same math as ``ScaledDotProductAttention``, merge;
    backward merges dq, dk, dv the same way. Fast body (one contiguous copy of the heads, the
    gradients written in place): minivit/kernels/cpu_attention.py."""

    name = "self_attention"

    def forward(ctx, qkv, *bias, num_heads=1, scale=1.0, keep=None, dropout_p=0.0):
        q, k, v = split_heads(qkv, num_heads)
        out, p, drop = attention_forward(q, k, v, bias[0] if bias else None, keep, scale,
                                         dropout_p)
        ctx.num_heads, ctx.scale, ctx.dropout_p = num_heads, scale, dropout_p
        ctx.has_bias = bool(bias)
        ctx.save_for_backward(q, k, v, p, drop)
        return merge_heads(out)

    def backward(ctx, g):
        q, k, v, p, drop = ctx.saved_tensors
        B, heads, N, d = q.shape
        g4 = g.reshape(B, N, heads, d).transpose(0, 2, 1, 3)      # (B, heads, N, d)
        gq, gk, gv, ds = attention_backward(g4, q, k, v, p, drop, ctx.scale, ctx.dropout_p)
        gqkv = merge_heads(xp_of(g).stack([gq, gk, gv]))
        return (gqkv, ds) if ctx.has_bias else gqkv


# under minivit.autocast q, k, v (not a float mask) are rounded to bf16/fp16, and the output;
# the scores' softmax stays float32, as in a fused (flash) attention kernel
cast_inputs(ScaledDotProductAttention, 3)
cast_inputs(SelfAttention, 1)


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
    if observers:
        _observe(q.data, k.data, bias, keep, scale)
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
    if observers:
        q, k, _ = split_heads(qkv.data, num_heads)
        _observe(q, k, bias, keep, scale)
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

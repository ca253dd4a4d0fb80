"""Cross entropy: log-softmax and negative log-likelihood fused into one Function.

With z the logits, q the target distribution of each row (one-hot for class indices,
smoothed as PyTorch: q = (1 - eps) q + eps / C) and w_i the weight of row i:

    loss_i = -sum_c q_ic log softmax(z_i)_c
    dloss_i/dz_i = softmax(z_i) * sum_c q_ic - q_i      (= softmax - q when q sums to 1)

(d log softmax(z)_c / dz_k = δ_ck - softmax(z)_k, summed against -q_ic.) The fast body (one
CUDA kernel for the backward on the GPU) is in ``minivit/kernels/cpu_loss.py``.
"""
from __future__ import annotations

import numpy as np

from ...autograd import backend
from ...autograd.function import Function
from ...autograd.ops.reduce import log_softmax_value
from ...autograd.tensor import Tensor

xp_of = backend.get_array_module


class CrossEntropy(Function):
    name = "cross_entropy"

    def forward(ctx, z, q=None, row_weight=None, reduction="mean"):
        logp = log_softmax_value(z, axis=1)
        loss = -(q * logp).sum(axis=1)  # (B,)
        if row_weight is not None:
            loss = loss * row_weight
        ctx.reduction = reduction
        if row_weight is None:
            ctx.denom = z.shape[0]
        elif backend.device_of(z) == "cpu":
            ctx.denom = float(row_weight.sum())
        else:   # stays on the GPU: no host read inside a training step
            ctx.denom = row_weight.sum()
        ctx.save_for_backward(xp_of(z).exp(logp), q, row_weight)   # p = softmax(z)
        if reduction == "none":
            return loss
        total = loss.sum()
        return total / ctx.denom if reduction == "mean" else total

    def backward(ctx, g):
        p, q, row_weight = ctx.saved_tensors
        return (p * q.sum(axis=1, keepdims=True) - q) * ctx.output_scale(g, row_weight)

    def output_scale(ctx, g, row_weight):
        """dL/dloss_i for each row: the output gradient through the reduction and weights."""
        if ctx.reduction == "none":
            scale = g[:, None]
        elif ctx.reduction == "mean" and backend.is_array(ctx.denom):
            scale = g / xp_of(g).maximum(ctx.denom, 1)   # all rows ignored: weights are 0
        elif ctx.reduction == "mean":
            scale = g / ctx.denom if ctx.denom > 0 else g * 0
        else:
            scale = g
        if row_weight is not None:
            scale = scale * row_weight[:, None]
        return scale


def cross_entropy(input, target, label_smoothing: float = 0.0, reduction: str = "mean", *,
                  ignore_index: int = -100):
    """Cross entropy of logits ``input`` (B, C) against ``target``: class indices (B,) (an
    integer Tensor, array or list) or class probabilities (B, C) (mixup / cutmix targets).

    ``label_smoothing`` eps mixes the target with the uniform distribution:
    q = (1 - eps) q + eps / C (for indices and probabilities alike, as PyTorch).
    ``reduction``: "mean" (over the rows whose index is not ``ignore_index``), "sum", "none".

    ``F.cross_entropy(logits, minivit.tensor([3, 0]))``
    """
    name = "cross_entropy"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"{name}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{name}: label_smoothing must be in [0, 1], got {label_smoothing}")
    if input.ndim != 2:
        raise ValueError(f"{name}: expected logits of shape (B, C), got {tuple(input.shape)}")
    B, C = input.shape
    xp = xp_of(input.data)
    t = target.data if isinstance(target, Tensor) else target
    t = xp.asarray(t) if backend.is_array(t) else xp.asarray(np.asarray(t))
    dtype = input.dtype
    row_weight = None
    if t.dtype.kind in "iub":
        if t.shape != (B,):
            raise ValueError(f"{name}: class-index targets must have shape ({B},) for logits "
                             f"{tuple(input.shape)}, got {tuple(t.shape)}")
        on_host = backend.device_of(t) == "cpu"
        if not on_host:
            from ...kernels import cuda   # noqa: PLC0415 (the fused GPU body, if switched on)

            if cuda.enabled(t):
                q, row_weight = cuda.one_hot_targets(t, C, ignore_index, label_smoothing, dtype)
                return CrossEntropy.apply(input, q=q, row_weight=row_weight, reduction=reduction)
        valid = t != ignore_index
        bad = valid & ((t < 0) | (t >= C))
        if on_host and bool(bad.any()):
            value = int(t[bad][0])
            raise ValueError(f"{name}: target class {value} is out of range for {C} classes "
                             f"(valid: 0 .. {C - 1})")
        q = xp.zeros((B, C), dtype=dtype)
        idx = xp.where(valid, t, 0).astype(np.int64)
        q[xp.arange(B), idx] = 1.0
        if not on_host:
            # On the GPU nothing here is read back (a host read stalls the step): a class out
            # of range makes its row's loss NaN, which the finiteness check reports, and the
            # rows' weights (0 for ignore_index) are always applied.
            q = xp.where(bad[:, None], xp.asarray(np.nan, dtype=dtype), q)
            row_weight = valid.astype(dtype)
        elif not bool(valid.all()):
            row_weight = valid.astype(dtype)
    elif t.dtype.kind == "f":
        if t.shape != (B, C):
            raise ValueError(f"{name}: probability targets must have the logits' shape "
                             f"{tuple(input.shape)}, got {tuple(t.shape)}")
        q = t.astype(dtype, copy=False)
    else:
        raise TypeError(f"{name}: target must hold integer class indices or float "
                        f"probabilities, got dtype {t.dtype}")
    if label_smoothing > 0.0:
        q = q * (1.0 - label_smoothing) + label_smoothing / C
    return CrossEntropy.apply(input, q=q, row_weight=row_weight, reduction=reduction)


def nll_loss(input, target, reduction: str = "mean"):
    """Negative log-likelihood of log-probabilities ``input`` (B, C) at class indices (B,)."""
    xp = xp_of(input.data)
    t = target.data if isinstance(target, Tensor) else target
    t = xp.asarray(t if backend.is_array(t) else np.asarray(t))
    B, C = input.shape
    if t.shape != (B,) or t.dtype.kind not in "iu" or bool(((t < 0) | (t >= C)).any()):
        raise ValueError(f"nll_loss: targets must be {B} integer class indices in [0, {C}), "
                         f"got shape {tuple(t.shape)}")
    picked = -input[xp.arange(B), t]
    if reduction == "none":
        return picked
    return picked.mean() if reduction == "mean" else picked.sum()


def mse_loss(input, target, reduction: str = "mean"):
    """Mean squared error ``(input - target)^2`` with "mean", "sum" or "none" reduction."""
    d = input - target
    sq = d * d
    if reduction == "none":
        return sq
    return sq.mean() if reduction == "mean" else sq.sum()

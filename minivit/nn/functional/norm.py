"""Layer normalisation and batch normalisation, each ONE Function with a fused backward.

Both normalise x̂ = (x - μ) / σ with σ = sqrt(var + eps) (biased variance), then y = x̂ w + b.
With ĝ = g w, the gradient through the statistics is the same formula for both, the means
taken over the normalised axes:

    dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))
"""
from __future__ import annotations

from ...autograd import backend
from ...autograd.function import Function
from ...autograd.tensor import Tensor

xp_of = backend.get_array_module


def _norm_backward(g, xhat, rstd, w, axes, need_x):
    """dx through the statistics, shared by both norms (``axes``: the statistics' axes)."""
    gh = g if w is None else g * w
    if not need_x:
        return None
    return rstd * (gh - gh.mean(axis=axes, keepdims=True)
                   - xhat * (gh * xhat).mean(axis=axes, keepdims=True))


class LayerNorm(Function):
    """Normalise over the last ``k`` axes; weight and bias have those axes' shape."""

    def forward(ctx, x, *wb, k=1, eps=1e-5, has_w=True, has_b=True):
        xp = xp_of(x)
        axes = tuple(range(x.ndim - k, x.ndim))
        mu = x.mean(axis=axes, keepdims=True)
        xc = x - mu
        var = (xc * xc).mean(axis=axes, keepdims=True)
        rstd = 1 / xp.sqrt(var + eps)
        xhat = xc * rstd
        w = wb[0] if has_w else None
        b = wb[-1] if has_b else None
        y = xhat if w is None else xhat * w
        if b is not None:
            y = y + b
        ctx.axes, ctx.has_w, ctx.has_b = axes, has_w, has_b
        ctx.save_for_backward(xhat, rstd, w)
        return y

    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        lead = tuple(range(g.ndim - len(ctx.axes)))  # the axes the affine params are shared over
        grads = [_norm_backward(g, xhat, rstd, w, ctx.axes, need[0])]
        if ctx.has_w:
            grads.append((g * xhat).sum(axis=lead) if need[1] else None)
        if ctx.has_b:
            grads.append(g.sum(axis=lead) if need[-1] else None)
        return tuple(grads)


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Normalise over the trailing ``normalized_shape`` axes, then scale and shift.

    ``F.layer_norm(x, (D,), w, b)`` for tokens x of shape (B, N, D).
    """
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    k = len(shape)
    if k == 0 or tuple(x.shape[x.ndim - k:]) != shape or x.ndim < k:
        raise ValueError(f"layer_norm: normalized_shape {shape} does not match the trailing "
                         f"dimensions of the input of shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != shape:
            raise ValueError(f"layer_norm: {name} has shape {tuple(p.shape)}, expected {shape}")
    wb = [p for p in (weight, bias) if p is not None]
    return LayerNorm.apply(x, *wb, k=k, eps=eps, has_w=weight is not None,
                           has_b=bias is not None)


class BatchNorm(Function):
    """Normalise each channel (axis 1) over the batch and spatial axes.

    Training: batch statistics (biased variance); evaluation: the given running statistics,
    so x̂ = (x - running_mean) / sqrt(running_var + eps) is affine in x and dx = g w / σ.
    """

    def forward(ctx, x, *wb, mean=None, var=None, eps=1e-5, has_w=True, has_b=True,
                stats_out=None):
        xp = xp_of(x)
        axes = (0,) + tuple(range(2, x.ndim))
        bshape = (1, x.shape[1]) + (1,) * (x.ndim - 2)  # per-channel arrays broadcast on axis 1
        batch_stats = mean is None
        if batch_stats:
            mu = x.mean(axis=axes, keepdims=True)
            xc = x - mu
            v = (xc * xc).mean(axis=axes, keepdims=True)
        else:
            xc = x - mean.reshape(bshape)
            v = var.reshape(bshape)
        rstd = 1 / xp.sqrt(v + eps)
        xhat = xc * rstd
        w = wb[0].reshape(bshape) if has_w else None
        b = wb[-1].reshape(bshape) if has_b else None
        y = xhat if w is None else xhat * w
        if b is not None:
            y = y + b
        ctx.axes, ctx.batch_stats, ctx.has_w, ctx.has_b = axes, batch_stats, has_w, has_b
        ctx.save_for_backward(xhat, rstd, w)
        if stats_out is not None and batch_stats:  # handed back for the running-stat update
            stats_out.extend((mu.reshape(-1), v.reshape(-1)))
        return y

    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        if ctx.batch_stats:
            gx = _norm_backward(g, xhat, rstd, w, ctx.axes, need[0])
        else:
            gx = (g if w is None else g * w) * rstd if need[0] else None
        grads = [gx]
        if ctx.has_w:
            grads.append((g * xhat).sum(axis=ctx.axes) if need[1] else None)
        if ctx.has_b:
            grads.append(g.sum(axis=ctx.axes) if need[-1] else None)
        return tuple(grads)


def _raw(t):
    return t.data if isinstance(t, Tensor) else t


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation over axis 1 of (N, C), (N, C, L) or (N, C, H, W).

    ``training=True``: normalise with the batch mean and biased variance, and update the running
    statistics in place: ``running = (1 - momentum) running + momentum batch`` (the variance
    with the UNBIASED batch variance, as PyTorch). ``training=False``: use the running
    statistics. ``running_mean``/``running_var`` may be None (always batch statistics).
    """
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, ...), got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(p.shape)} but the input "
                             f"{tuple(x.shape)} has {C} channels (axis 1)")
    use_batch = training or running_mean is None or running_var is None
    count = x.size // C
    if use_batch and count <= 1 and training:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {tuple(x.shape)}")
    wb = [p for p in (weight, bias) if p is not None]
    dtype = x.dtype
    mean = None if use_batch else _raw(running_mean).astype(dtype, copy=False)
    var = None if use_batch else _raw(running_var).astype(dtype, copy=False)
    stats = []
    y = BatchNorm.apply(x, *wb, mean=mean, var=var, eps=eps, has_w=weight is not None,
                        has_b=bias is not None, stats_out=stats)
    if training and running_mean is not None and running_var is not None:
        mu, v = stats
        _ema(_raw(running_mean), mu, momentum)
        _ema(_raw(running_var), v * (count / (count - 1)), momentum)  # unbiased
    return y


def _ema(running, batch, momentum: float) -> None:
    """running = (1 - m) running + m batch, in place (the buffer's array stays the same object)."""
    running *= 1 - momentum
    running += (momentum * batch).astype(running.dtype, copy=False)

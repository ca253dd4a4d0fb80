"""Layer normalisation and batch normalisation.

Both normalise x̂ = (x - μ) / σ with σ = sqrt(var + eps) (biased variance, over the
normalised axes), then y = x̂ w + b. With ĝ = g w and n the number of values per statistic,
dx̂ = ĝ, and differentiating μ and σ as functions of x gives the same formula for both:

    dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))          (means over the normalised axes)
    dw = Σ g x̂,   db = Σ g                           (sums over every other axis)

(from x̂_i = (x_i - μ)/σ: ∂x̂_i/∂x_j = (δ_ij - 1/n - x̂_i x̂_j / n) / σ, summed against ĝ_i.)

These are the reference bodies; the fast ones (rows in blocks on all cores, one pass for the
statistics' gradient and the affine sums, a fused activation and residual) are in
``minivit/kernels/cpu_norm.py``.
"""
from __future__ import annotations

from ...autograd import backend
from ...autograd.function import Function
from ...autograd.ops.elementwise import gelu_derivative, gelu_value
from ...autograd.tensor import Tensor

xp_of = backend.get_array_module

BN_ACTS = (None, "relu", "gelu", "gelu_tanh")


def normalize(x, axes, eps):
    """(x̂, 1/σ): x normalised over ``axes`` (statistics kept as size-1 axes)."""
    mu = x.mean(axis=axes, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=axes, keepdims=True)
    rstd = 1 / xp_of(x).sqrt(var + eps)
    return (x - mu) * rstd, rstd


def normalize_backward(gh, xhat, rstd, axes):
    """dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)), the means over ``axes`` (module docstring)."""
    return rstd * (gh - gh.mean(axis=axes, keepdims=True)
                   - xhat * (gh * xhat).mean(axis=axes, keepdims=True))


# SyncBatchNorm (data parallelism, ``--sync-bn``): the same formulas, each mean over the
# batches of every rank together. ``sum_across`` sums a float64 array over the ranks in place.

def sum_over_ranks(sum_across, vectors, count=None):
    """Per-channel sums (and a count) added up over the ranks in ONE call of ``sum_across``;
    the sums come back in their own dtype, the count as a float."""
    xp = xp_of(vectors[0])
    parts = [v.astype("float64") for v in vectors]
    if count is not None:
        parts.append(xp.full(1, count, dtype="float64"))
    total = sum_across(xp.concatenate(parts))
    c = vectors[0].shape[0]
    out = tuple(total[i * c:(i + 1) * c].astype(vectors[0].dtype) for i in range(len(vectors)))
    return out if count is None else out + (float(total[-1]),)


def normalize_across(x, axes, eps, sum_across):
    """``normalize`` with μ and σ of every rank's batch: (x̂, 1/σ, μ, var, n), n the number of
    values per channel on all ranks."""
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    sums, n = sum_over_ranks(sum_across, (x.sum(axis=axes),), x.size // x.shape[1])
    mu = sums / n
    squares, = sum_over_ranks(sum_across, (((x - mu.reshape(shape)) ** 2).sum(axis=axes),))
    var = squares / n
    rstd = 1 / xp_of(x).sqrt(var.reshape(shape) + eps)
    return (x - mu.reshape(shape)) * rstd, rstd, mu, var, n


def normalize_backward_across(gh, xhat, rstd, axes, sum_across, n):
    """``normalize_backward`` with the means over every rank's batch (n values per channel)."""
    shape = (1, gh.shape[1]) + (1,) * (gh.ndim - 2)
    sum_g, sum_gx = sum_over_ranks(sum_across, (gh.sum(axis=axes), (gh * xhat).sum(axis=axes)))
    return rstd * (gh - sum_g.reshape(shape) / n - xhat * (sum_gx.reshape(shape) / n))


class LayerNorm(Function):
    """y = x̂ w + b, x normalised over its last ``k`` axes; weight and bias have those axes'
    shape. Backward: the module docstring's formulas, the means over the last k axes, the
    sums dw, db over the leading ones. Fast body: minivit/kernels/cpu_norm.py."""

    def forward(ctx, x, *wb, k=1, eps=1e-5, has_w=True, has_b=True):
        ctx.axes, ctx.lead = tuple(range(x.ndim - k, x.ndim)), tuple(range(x.ndim - k))
        ctx.has_w, ctx.has_b = has_w, has_b
        w = wb[0] if has_w else None
        xhat, rstd = normalize(x, ctx.axes, eps)
        ctx.save_for_backward(xhat, rstd, w)
        y = xhat * w if has_w else xhat
        return y + wb[-1] if has_b else y

    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        gh = g * w if ctx.has_w else g
        grads = [normalize_backward(gh, xhat, rstd, ctx.axes)]
        if ctx.has_w:
            grads.append((g * xhat).sum(axis=ctx.lead))
        if ctx.has_b:
            grads.append(g.sum(axis=ctx.lead))
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
    """Normalise each channel (axis 1) over the batch and spatial axes: y = act(x̂ w + b (+ r)).

    Training: batch statistics (biased variance), and backward is the module docstring's
    formula with the means over every axis but 1. Evaluation: the given running statistics,
    so x̂ = (x - running_mean) / sqrt(running_var + eps) is affine in x and dx = ĝ / σ.

    ``act`` (``"relu"``, ``"gelu"``, ``"gelu_tanh"``) applies an activation to z = x̂ w + b
    (+ r), so backward first multiplies g by act'(z) (the chain rule): relu' = [z > 0],
    GELU' as in ``ops.elementwise.gelu_derivative``. ``has_r``: the last input is a residual r
    of x's shape added before the activation (the end of a ResNet block); dr = g act'(z).

    Fast body (one blocked pass per statistic, the activation fused, nothing of x's size
    kept but x): minivit/kernels/cpu_norm.py.
    """

    def forward(ctx, x, *wb, mean=None, var=None, eps=1e-5, has_w=True, has_b=True,
                stats_out=None, act=None, has_r=False, sum_across=None):
        xp = xp_of(x)
        if has_r:
            *wb, r = wb
        axes = (0,) + tuple(range(2, x.ndim))              # every axis but the channels
        shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)      # a (C,) vector against x
        ctx.batch_stats, ctx.axes, ctx.act, ctx.has_w, ctx.has_b, ctx.has_r = (
            mean is None, axes, act, has_w, has_b, has_r)
        ctx.sum_across = sum_across if ctx.batch_stats else None
        if ctx.batch_stats and sum_across is not None:   # SyncBatchNorm
            xhat, rstd, mu, var, ctx.count = normalize_across(x, axes, eps, sum_across)
            if stats_out is not None:
                stats_out.extend((mu, var, ctx.count))
        elif ctx.batch_stats:
            xhat, rstd = normalize(x, axes, eps)
            if stats_out is not None:      # handed back for the running-statistics update
                stats_out.extend((x.mean(axis=axes), x.var(axis=axes), x.size // x.shape[1]))
        else:
            rstd = 1 / xp.sqrt(var.reshape(shape) + eps)
            xhat = (x - mean.reshape(shape)) * rstd
        w = wb[0].reshape(shape) if has_w else None
        z = xhat * w if has_w else xhat
        if has_b:
            z = z + wb[-1].reshape(shape)
        if has_r:
            z = z + r
        ctx.save_for_backward(xhat, rstd, w, z)
        if act == "relu":
            return xp.maximum(z, 0)
        return gelu_value(z, "tanh" if act == "gelu_tanh" else "none") if act else z

    def backward(ctx, g):
        xhat, rstd, w, z = ctx.saved_tensors
        if ctx.act == "relu":
            g = g * (z > 0)
        elif ctx.act:
            g = g * gelu_derivative(z, "tanh" if ctx.act == "gelu_tanh" else "none")
        gh = g * w if ctx.has_w else g
        if ctx.sum_across is not None:   # the means over every rank's batch; dw, db local
            dx = normalize_backward_across(gh, xhat, rstd, ctx.axes, ctx.sum_across, ctx.count)
        elif ctx.batch_stats:
            dx = normalize_backward(gh, xhat, rstd, ctx.axes)
        else:
            dx = gh * rstd
        grads = [dx]
        if ctx.has_w:
            grads.append((g * xhat).sum(axis=ctx.axes))
        if ctx.has_b:
            grads.append(g.sum(axis=ctx.axes))
        if ctx.has_r:
            grads.append(g)
        return tuple(grads)


def _raw(t):
    return t.data if isinstance(t, Tensor) else t


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum: float = 0.1, eps: float = 1e-5, *, act: str | None = None,
               residual=None, sum_across=None):
    """Batch normalisation over axis 1 of (N, C), (N, C, L) or (N, C, H, W).

    ``training=True``: normalise with the batch mean and biased variance, and update the running
    statistics in place: ``running = (1 - momentum) running + momentum batch`` (the variance
    with the UNBIASED batch variance, as PyTorch). ``training=False``: use the running
    statistics. ``running_mean``/``running_var`` may be None (always batch statistics).
    ``act`` (not in PyTorch's signature): ``"relu"``, ``"gelu"`` or ``"gelu_tanh"`` returns
    that activation of the result from one fused op (see ``BatchNorm``). ``residual`` (also
    not in PyTorch's), a tensor of x's shape: returns act(BN(x) + residual), the end of a
    ResNet block (act None or ``"relu"``), from the same one op. ``sum_across`` (data
    parallelism, ``--sync-bn``; PyTorch's ``SyncBatchNorm``): a function summing a float64
    array over the ranks in place; the batch statistics, and the means in their gradient, are
    then those of every rank's batch together (the weight and bias gradients stay this
    rank's, to be averaged with the other gradients).
    """
    if act not in BN_ACTS:
        raise ValueError(f"batch_norm: act must be None, 'relu', 'gelu' or 'gelu_tanh', "
                         f"got {act!r}")
    if x.ndim < 2:
        raise ValueError(f"batch_norm: expected input (N, C, ...), got shape {tuple(x.shape)}")
    if residual is not None:
        if act not in (None, "relu"):
            raise ValueError(f"batch_norm: residual= goes with act None or 'relu', got "
                             f"act={act!r}")
        if tuple(residual.shape) != tuple(x.shape):
            raise ValueError(f"batch_norm: residual has shape {tuple(residual.shape)}, expected "
                             f"the input's {tuple(x.shape)}")
    C = x.shape[1]
    for name, p in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if p is not None and tuple(p.shape) != (C,):
            raise ValueError(f"batch_norm: {name} has shape {tuple(p.shape)} but the input "
                             f"{tuple(x.shape)} has {C} channels (axis 1)")
    use_batch = training or running_mean is None or running_var is None
    count = x.numel() // C
    if use_batch and count <= 1 and training:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, "
                         f"got input of shape {tuple(x.shape)}")
    wb = [p for p in (weight, bias) if p is not None]
    if residual is not None:
        wb.append(residual)
    dtype = x.dtype
    mean = None if use_batch else _raw(running_mean).astype(dtype, copy=False)
    var = None if use_batch else _raw(running_var).astype(dtype, copy=False)
    stats = []
    y = BatchNorm.apply(x, *wb, mean=mean, var=var, eps=eps, has_w=weight is not None,
                        has_b=bias is not None, stats_out=stats, act=act,
                        has_r=residual is not None, sum_across=sum_across)
    if training and running_mean is not None and running_var is not None:
        mu, v, count = stats   # count: values per channel (on all ranks with sum_across)
        from ...kernels import cuda   # noqa: PLC0415 (the GPU's one-launch update)

        if cuda.enabled(_raw(running_mean), _raw(running_var), mu):
            cuda.bn_update_running(_raw(running_mean), _raw(running_var), mu, v,
                                   count / (count - 1), momentum)
            return y
        _ema(_raw(running_mean), mu, momentum)
        _ema(_raw(running_var), v * (count / (count - 1)), momentum)  # unbiased
    return y


def _ema(running, batch, momentum: float) -> None:
    """running = (1 - m) running + m batch, in place (the buffer's array stays the same object)."""
    running *= 1 - momentum
    running += (momentum * batch).astype(running.dtype, copy=False)

"""Layer normalisation and batch normalisation, each ONE Function with a fused backward.

Both normalise x̂ = (x - μ) / σ with σ = sqrt(var + eps) (biased variance), then y = x̂ w + b.
With ĝ = g w, the gradient through the statistics is the same formula for both, the means
taken over the normalised axes:

    dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂))
"""
from __future__ import annotations

import math

from ...autograd import backend, cuda_kernels, parallel
from ...autograd.ops.elementwise import (_gelu_exact, _gelu_exact_grad, _gelu_tanh,
                                         _gelu_tanh_grad)
from ...autograd.function import Function
from ...autograd.tensor import Tensor

xp_of = backend.get_array_module


def _layer_norm_rows(x, w, b, eps, out=None):
    """Rows of x (rows, D) normalised: y = x̂ w + b, x̂ and 1/σ (rows, 1) kept for backward
    (into ``out`` = (y, x̂, 1/σ) when given: see ``parallel.blockwise``).

    The row means are matrix-vector products (x 1 / D, a BLAS gemv: several times faster than
    NumPy's reduction along rows of a few hundred numbers), the variance a row-wise dot."""
    if cuda_kernels.enabled(x):
        return cuda_kernels.layer_norm_rows(x, w, b, eps)
    xp = xp_of(x)
    if out is not None and len(out) == 2:   # (x̂, 1/σ): no affine, x̂ is the output
        out = (out[0],) + tuple(out)
    y, xc, rstd = out if out is not None else (xp.empty_like(x), xp.empty_like(x),
                                               xp.empty((x.shape[0], 1), x.dtype))
    inv_d = 1.0 / x.shape[-1]
    xp.subtract(x, (x @ xp.ones(x.shape[-1], x.dtype))[:, None] * inv_d, out=xc)   # x - μ
    rstd[:, 0] = 1 / xp.sqrt(xp.einsum("ij,ij->i", xc, xc) * inv_d + eps)
    xc *= rstd  # x̂
    if y is xc:   # no affine, and the output is x̂ itself
        pass
    elif w is None:
        y[...] = xc
    else:
        xp.multiply(xc, w, out=y)
    if b is not None:
        y += b
    return y, xc, rstd


def _layer_norm_rows_backward(g, xhat, rstd, w, out=None, with_sums=False):
    """dx = (1/σ) (ĝ - mean(ĝ) - x̂ mean(ĝ x̂)) along each row, ĝ = g w; the row means as a
    gemv, mean(ĝ) = g w / D, and a row-wise dot, mean(ĝ x̂) = einsum(ĝ, x̂) / D, so no g x̂
    array is written.

    ``with_sums``: also return this block's part of the affine gradients from the same pass:
    the column sums of g x̂ as one row (an einsum down the columns: dw) and g itself (its
    column sums are db); ``parallel.sum_rows`` adds them up over the blocks."""
    xp = xp_of(g)
    dx = out[0] if out is not None else xp.empty_like(g)
    inv_d = 1.0 / g.shape[-1]
    gh = g if w is None else g * w
    m1 = (g @ (xp.ones(g.shape[-1], g.dtype) if w is None else w))[:, None] * inv_d
    m2 = xp.einsum("ij,ij->i", gh, xhat)[:, None] * inv_d
    xp.subtract(gh, m1, out=dx)
    dx -= xhat * m2
    dx *= rstd
    if with_sums:
        return xp.einsum("ij,ij->j", g, xhat)[None], g
    return dx


class LayerNorm(Function):
    """Normalise over the last ``k`` axes; weight and bias have those axes' shape.

    Works on the 2-D view (rows, D) with D the product of the last k axes, rows in
    cache-sized blocks on all cores (``parallel.blockwise``).
    """

    def forward(ctx, x, *wb, k=1, eps=1e-5, has_w=True, has_b=True):
        norm_shape = x.shape[x.ndim - k:]
        x2 = x.reshape(math.prod(x.shape[:x.ndim - k]), math.prod(norm_shape))
        w = wb[0].reshape(-1) if has_w else None
        b = wb[-1].reshape(-1) if has_b else None
        out = None
        if backend.device_of(x2) == "cpu":
            # (y, x̂, 1/σ); with no affine the output is x̂ itself: (x̂, 1/σ), a pass fewer
            n = 1 if w is None and b is None else 2
            out = parallel.empty_like(x2, n) + (xp_of(x2).empty((x2.shape[0], 1), x2.dtype),)
        res = parallel.blockwise(
            lambda a, out=None: _layer_norm_rows(a, w, b, eps, out=out), x2, out=out)
        y, xhat, rstd = res if len(res) == 3 else (res[0],) + tuple(res)
        ctx.norm_shape, ctx.has_w, ctx.has_b = norm_shape, has_w, has_b
        ctx.save_for_backward(xhat, rstd, w)
        return y.reshape(x.shape)

    def backward(ctx, g):
        xhat, rstd, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        g2 = g.reshape(xhat.shape)
        need_w, need_b = ctx.has_w and need[1], ctx.has_b and need[-1]
        if cuda_kernels.enabled(g2):
            dx = cuda_kernels.layer_norm_rows_backward(g2, xhat, rstd, w) if need[0] else None
            if need_w or need_b:
                dw, db = parallel.column_sums(g2 * xhat), parallel.column_sums(g2)
        elif (need_w or need_b) and not need[0]:   # affine gradients only: no dx to compute
            dx = None
            dw = parallel.sum_rows(lambda g_, xh: g_ * xh, g2, xhat) if need_w else None
            db = parallel.sum_rows(lambda g_: g_, g2) if need_b else None
        elif need_w or need_b:
            # one pass: each block's dx, and its g x̂ and g summed down the rows for the affine
            # parameters shared by all rows (dw = sum_rows g x̂, db = sum_rows g)
            dx = parallel.empty_like(g2)[0]
            dw, db = parallel.sum_rows(
                lambda g_, xh, r, d: _layer_norm_rows_backward(g_, xh, r, w, out=(d,),
                                                               with_sums=True),
                g2, xhat, rstd, dx)
        else:
            dx = parallel.blockwise(lambda *a, out=None: _layer_norm_rows_backward(*a, w, out=out),
                                    g2, xhat, rstd, out=parallel.empty_like(g2))
        grads = [dx.reshape(g.shape) if need[0] else None]
        if need_w:
            dw = dw.reshape(ctx.norm_shape)
        if need_b:
            db = db.reshape(ctx.norm_shape)
        if ctx.has_w:
            grads.append(dw if need_w else None)
        if ctx.has_b:
            grads.append(db if need_b else None)
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
    Works on the view (N, C, L), L the spatial size: every per-channel sum is a contiguous sum
    along L per (n, c), in blocks of n on all cores (``parallel.blockwise``), then a sum over
    n; a 2-D input (N, C), the channels-last layout, sums down the columns instead
    (``parallel.sum_rows``). The forward is one pass, y = x a + c per channel with a = w/σ and
    c = b - μ a; backward recomputes x̂ block by block, while the block is in cache, rather
    than keeping a second array of x's size alive. With ĝ = g w per channel, mean(ĝ) = w
    mean(g) and mean(ĝ x̂) = w mean(g x̂): the statistics' gradient needs the same two sums as
    the bias and weight gradients.

    ``act`` fuses an activation after it: ``"relu"`` (y = max(z, 0)), ``"gelu"`` or
    ``"gelu_tanh"`` (exact or tanh GELU), z = x a + c. Backward first turns the incoming
    gradient into g' = g act'(z), z recomputed from x in cache (GELU also keeps its Φ(z) or s
    from the forward), in the same sweep that takes the two sums; the rest is the BatchNorm
    backward of g'. Against a separate activation op this skips passes over the map and never
    stores the normalised map z (tanh GELU on (32768, 256), forward and backward on 2 cores:
    25.1 ms fused, 26.3 ms apart; peak memory of a maxvit_cifar step 2106 -> 1929 MB).

    ``has_r``: the last input is a residual r of x's shape, added before the activation,
    y = act(x a + c + r): the end of a ResNet block, BN, + shortcut, ReLU, as one pass (act
    None or ``"relu"``). The ReLU's mask then comes from the output (y > 0 exactly where
    x a + c + r > 0), which the next block keeps alive anyway; r's gradient is g'.
    """

    def forward(ctx, x, *wb, mean=None, var=None, eps=1e-5, has_w=True, has_b=True,
                stats_out=None, act=None, has_r=False, sum_across=None):
        xp = xp_of(x)
        if has_r:
            *wb, r = wb
        xv, col = _channels_view(x)
        count = x.size // x.shape[1]
        batch_stats = mean is None
        if batch_stats:  # two passes: the mean, then the squares around it
            sums = _channel_sums(lambda a: a, xv, col)[0]
            if sum_across is not None:   # SyncBatchNorm: sums and count over all the ranks
                sums, count = _sum_across(sum_across, (sums,), count)
            mean = sums / count
            mu = _per_channel(mean, col)
            sq = _channel_sums(lambda a: _square(a - mu), xv, col)[0]
            var = (_sum_across(sum_across, (sq,))[0] if sum_across is not None else sq) / count
        rstd = 1 / xp.sqrt(var + eps)
        scale = rstd * wb[0] if has_w else rstd
        shift = -mean * scale + wb[-1] if has_b else -mean * scale
        a, c = _per_channel(scale, col), _per_channel(shift, col)
        if act in ("gelu", "gelu_tanh"):  # y = gelu(z), z = x a + c; Φ(z) or s kept
            gelu = _GELU[act][0]
            y, kept = parallel.blockwise(lambda v, out: gelu(_scale_shift(v, a, c), out=out), xv,
                                         out=parallel.empty_like(xv, 2))
        else:  # x̂ w + b = x a + c (+ r, added in the same pass), then the ReLU if asked
            def scale_shift(v, *rb, out):   # rb: this block of r, when there is one
                return _scale_shift(v, a, c, out[0], act == "relu", *rb)

            rv = (r.reshape(xv.shape),) if has_r else ()
            y = parallel.blockwise(scale_shift, xv, *rv, out=parallel.empty_like(xv))
            kept = y if has_r and act else None   # with r, the ReLU's mask is y > 0
        ctx.batch_stats, ctx.has_w, ctx.has_b, ctx.act = batch_stats, has_w, has_b, act
        ctx.has_r, ctx.sum_across, ctx.count = has_r, sum_across, count
        ctx.save_for_backward(xv, mean, rstd, wb[0] if has_w else None,
                              (a, c, kept) if act else None)
        if stats_out is not None and batch_stats:  # handed back for the running-stat update
            stats_out.extend((mean, var, count))
        return y.reshape(x.shape)

    def backward(ctx, g):
        xv, mean, rstd, w, affine = ctx.saved_tensors
        need = ctx.needs_input_grad    # x, then w, b and r where given
        need_w = ctx.has_w and need[1]
        need_b = ctx.has_b and need[1 + ctx.has_w]
        col = xv.ndim == 2
        gv = g.reshape(xv.shape)
        mu = _per_channel(mean, col)
        if ctx.act:  # g' = g act'(x a + c): written block by block while the sums run
            masked, (a, c, kept) = xp_of(g).empty(xv.shape, g.dtype), affine
            act = ctx.act

            def act_grad_and_sums(g_, v, gm, k=None):  # gm: this block's view of ``masked``
                if act == "relu":   # z > 0, z recomputed, or the kept output y > 0 (residual)
                    z = _scale_shift(v, a, c) if k is None else k
                    xp_of(g_).multiply(g_, z > 0, out=gm)
                else:
                    z = _scale_shift(v, a, c)
                    _GELU[act][1](g_, z, k, out=(gm,))
                return gm, gm * (v - mu)

            blocks = (gv, xv, masked) if kept is None else (gv, xv, masked, kept)
            sum_g, sum_gxc = _channel_sums(act_grad_and_sums, *blocks, col)
            sum_gx = sum_gxc * rstd
            gv = masked
        elif ctx.batch_stats and need[0] or need_w or need_b:
            sum_g, sum_gxc = _channel_sums(lambda g_, v: (g_, g_ * (v - mu)), gv, xv, col)
            sum_gx = sum_gxc * rstd                                # sum g x̂ = sum g (x - μ) / σ
        gx = None
        if need[0]:
            k = rstd if w is None else rstd * w                    # w / σ per channel
            if ctx.batch_stats:  # (g - mean(g) - x̂ mean(g x̂)) k  =  g k + x α + β
                count, all_g, all_gx = ctx.count, sum_g, sum_gx
                if ctx.sum_across is not None:  # the means over every rank's batch; the
                    all_g, all_gx = _sum_across(ctx.sum_across, (sum_g, sum_gx))  # w, b: local
                q = all_gx / count * rstd * k
                alpha, beta = -q, mean * q - all_g / count * k
                kc, ac, bc = (_per_channel(v, col) for v in (k, alpha, beta))
                gx = parallel.blockwise(lambda g_, v, out: _input_grad(g_, v, kc, ac, bc, out[0]),
                                        gv, xv, out=parallel.empty_like(gv))
            else:
                kc = _per_channel(k, col)
                gx = parallel.blockwise(lambda g_, out: xp_of(g_).multiply(g_, kc, out=out[0]),
                                        gv, out=parallel.empty_like(gv))
            gx = gx.reshape(g.shape)
        grads = [gx]
        if ctx.has_w:
            grads.append(sum_gx if need_w else None)
        if ctx.has_b:
            grads.append(sum_g if need_b else None)
        if ctx.has_r:   # y = act(z + r): r's gradient is g' (g itself without an act)
            grads.append(gv.reshape(g.shape) if need[-1] else None)
        return tuple(grads)


# the GELU passes a BatchNorm can fuse: (forward, backward), both taking ``out``
_GELU = {"gelu": (_gelu_exact, _gelu_exact_grad), "gelu_tanh": (_gelu_tanh, _gelu_tanh_grad)}


def _scale_shift(v, a, c, out=None, relu=False, residual=None):
    """out = v a + c (a, c per channel) (+ ``residual``), then max(out, 0) with ``relu``."""
    xp = xp_of(v)
    out = xp.multiply(v, a, out=out)
    out += c
    if residual is not None:
        out += residual
    if relu:
        xp.maximum(out, 0, out=out)
    return out


def _input_grad(g, v, k, alpha, beta, out):
    """out = g k + (v α + β) (per-channel k, α, β): the batch-statistics input gradient."""
    t = v * alpha
    t += beta
    xp_of(g).multiply(g, k, out=out)
    out += t
    return out


def _sum_across(sum_across, vectors, count=None):
    """Per-channel sums (and a count) added up over the ranks in ONE call of ``sum_across``
    (it sums a float64 array over all ranks in place); the sums come back in their dtype."""
    xp = xp_of(vectors[0])
    parts = [v.astype("float64") for v in vectors]
    if count is not None:
        parts.append(xp.full(1, count, dtype="float64"))
    total = sum_across(xp.concatenate(parts))
    c = vectors[0].shape[0]
    out = tuple(total[i * c:(i + 1) * c].astype(vectors[0].dtype) for i in range(len(vectors)))
    return out if count is None else out + (float(total[-1]),)


def _channels_view(x):
    """(N, C) stays 2-D (channels in columns); anything longer becomes (N, C, L)."""
    return (x, True) if x.ndim == 2 else (x.reshape(x.shape[0], x.shape[1], -1), False)


def _per_channel(v, col: bool):
    """A (C,) vector shaped to broadcast against the view: (C,) for (N, C), (C, 1) for (N, C, L)."""
    return v if col else v[:, None]


def _channel_sums(fn, *arrays_and_col):
    """Per-channel sums of ``fn(*blocks)`` (one array or a tuple) over every axis but C."""
    *arrays, col = arrays_and_col
    if col:
        return _tuple(parallel.sum_rows(fn, *arrays))
    def sums_along_l(*blocks):  # (n, C, L) -> (n, C): sums of contiguous runs of L, as gemvs
        return tuple(parallel.row_sums(r.reshape(-1, r.shape[-1])).reshape(r.shape[:2])
                     for r in _tuple(fn(*blocks)))

    outs = parallel.blockwise(sums_along_l, *arrays)
    return tuple(parallel.column_sums(o) for o in _tuple(outs))


def _tuple(r):
    return r if isinstance(r, tuple) else (r,)


def _square(a):
    a *= a
    return a


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
    parallelism, ``--sync-bn``): a function summing a float64 array over the ranks in place;
    the batch statistics, and the means in their gradient, are then those of every rank's
    batch together (PyTorch's ``SyncBatchNorm``).
    """
    if act not in (None, "relu", "gelu", "gelu_tanh"):
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
    count = x.size // C
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
        mu, v, count = stats
        _ema(_raw(running_mean), mu, momentum)
        _ema(_raw(running_var), v * (count / (count - 1)), momentum)  # unbiased
    return y


def _ema(running, batch, momentum: float) -> None:
    """running = (1 - m) running + m batch, in place (the buffer's array stays the same object)."""
    running *= 1 - momentum
    running += (momentum * batch).astype(running.dtype, copy=False)

"""Fast bodies of LayerNorm and BatchNorm (the reference bodies and the formulas are in
``minivit/nn/functional/norm.py``): rows or channels in cache-sized blocks on all cores, the
row statistics as BLAS matrix-vector products, the affine gradients summed in the same pass
as the input gradient, and for BatchNorm an activation and a residual fused into its passes.
"""
from __future__ import annotations

import math

from ..autograd import backend
from ..nn.functional.norm import BatchNorm, LayerNorm, sum_over_ranks
from . import cuda, cuda_rows, parallel, register
from .cpu_elementwise import GELU_BLOCKS, gelu_grad_block, grad_wanted

xp_of = backend.get_array_module


def _layer_norm_rows(x, w, b, eps, out=None):
    """Rows of x (rows, D) normalised: y = x̂ w + b, x̂ and 1/σ (rows, 1) kept for backward
    (into ``out`` = (y, x̂, 1/σ) when given: see ``parallel.blockwise``).

    The row means are matrix-vector products (x 1 / D, a BLAS gemv: several times faster than
    NumPy's reduction along rows of a few hundred numbers), the variance a row-wise dot."""
    if cuda.enabled(x):
        return cuda.layer_norm_rows(x, w, b, eps)
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


def _slot_or_new(ctx, i, g2):
    """Input i's gradient slot (``engine.grad_slot``) if it has one of the norm's shape, else a
    new array: where the backward writes that gradient (the slot itself is returned, so the
    engine adopts it without a copy)."""
    from ..autograd.engine import grad_slot  # noqa: PLC0415

    slot = grad_slot(ctx, i)
    if slot is not None and slot.shape == tuple(ctx.norm_shape):
        return slot
    return xp_of(g2).empty(ctx.norm_shape, g2.dtype)


@register(LayerNorm)
class LayerNormFast(LayerNorm):
    """Works on the 2-D view (rows, D) with D the product of the last k axes, rows in
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
        if cuda.enabled(g2):
            dx = cuda.layer_norm_rows_backward(g2, xhat, rstd, w) if need[0] else None
            # dw and db in one launch, into the optimizer's gradient buffer where it has one
            dw = _slot_or_new(ctx, 1, g2) if need_w else None
            db = _slot_or_new(ctx, len(need) - 1, g2) if need_b else None
            cuda_rows.layer_norm_affine_grads(g2, xhat, None if dw is None else dw.reshape(-1),
                                              None if db is None else db.reshape(-1))
        elif (need_w or need_b) and not need[0]:   # affine gradients only: no dx to compute
            dx = None
            dw = parallel.sum_rows(lambda g_, xh: g_ * xh, g2, xhat) if need_w else None
            db = parallel.column_sums(g2) if need_b else None
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
        if need_w and dw.shape != tuple(ctx.norm_shape):
            dw = dw.reshape(ctx.norm_shape)
        if need_b and db.shape != tuple(ctx.norm_shape):
            db = db.reshape(ctx.norm_shape)
        if ctx.has_w:
            grads.append(dw if need_w else None)
        if ctx.has_b:
            grads.append(db if need_b else None)
        return tuple(grads)


@register(BatchNorm)
class BatchNormFast(BatchNorm):
    """Works on the view (N, C, L), L the spatial size: every per-channel sum is a contiguous
    sum along L per (n, c), in blocks of n on all cores (``parallel.blockwise``), then a sum
    over n; a 2-D input (N, C), the channels-last layout, sums down the columns instead
    (``parallel.sum_rows``). The forward is one pass, y = x a + c per channel with a = w/σ
    and c = b - μ a; backward recomputes x̂ block by block, while the block is in cache,
    rather than keeping a second array of x's size alive. With ĝ = g w per channel,
    mean(ĝ) = w mean(g) and mean(ĝ x̂) = w mean(g x̂): the statistics' gradient needs the same
    two sums as the bias and weight gradients.

    With ``act``, backward first turns the incoming gradient into g' = g act'(z), in the same
    sweep that takes the two sums; GELU's derivative at z = x a + c is computed by the forward
    while z is in cache and kept (one array, as a separate GELU would keep). Against a
    separate activation op this skips passes over the map and never stores z. The ReLU's
    mask comes from the kept output (y > 0 exactly where x a + c (+ r) > 0), which the next
    layer mostly keeps as its input anyway (where none does, y stays alive until backward:
    ``botnet_cifar``'s peak memory 671 -> 686 MB, for two passes fewer). The sums Σ g' and
    Σ g' (x - μ) are one gemv and one einsum per block (no product array), and the input
    gradient is (g' + x α + β) k in four in-place passes.
    """

    def forward(ctx, x, *wb, mean=None, var=None, eps=1e-5, has_w=True, has_b=True,
                stats_out=None, act=None, has_r=False, sum_across=None):
        xp = xp_of(x)
        if has_r:
            *wb, r = wb
        xv, col = _channels_view(x)
        count = x.size // x.shape[1]
        batch_stats = mean is None
        if batch_stats and sum_across is None and cuda.enabled(x):   # three launches
            mean, var, rstd, scale, shift = cuda.bn_batch_coeffs(
                xv, col, wb[0] if has_w else None, wb[-1] if has_b else None, eps, count)
        elif batch_stats and sum_across is None and col:   # one pass over x: see _mean_var
            mean, var = _mean_var(xv)
        elif batch_stats:  # two passes: the mean, then the squares around it
            sums = _channel_sums(lambda a: a, xv, col)[0]
            if sum_across is not None:   # SyncBatchNorm: sums and count of every rank
                sums, count = sum_over_ranks(sum_across, (sums,), count)
            mean = sums / count
            mu = _per_channel(mean, col)
            squares = _channel_sums(lambda a: _square(a - mu), xv, col)[0]
            if sum_across is not None:
                squares, = sum_over_ranks(sum_across, (squares,))
            var = squares / count
        if not (batch_stats and sum_across is None and cuda.enabled(x)):
            rstd = 1 / xp.sqrt(var + eps)
            scale = rstd * wb[0] if has_w else rstd
            shift = -mean * scale + wb[-1] if has_b else -mean * scale
        a, c = _per_channel(scale, col), _per_channel(shift, col)
        if act in ("gelu", "gelu_tanh") and cuda.enabled(x):   # the same in one launch
            y, kept = cuda.scale_shift_gelu(xv, a, c, act)
        elif act in ("gelu", "gelu_tanh"):  # y = gelu(z), z = x a + c; its derivative kept
            gelu, grad = _GELU[act], grad_wanted(ctx)
            y, kept = parallel.blockwise(lambda v, out: gelu(_scale_shift(v, a, c), out, grad),
                                         xv, out=parallel.empty_like(xv, 2))
        else:  # x̂ w + b = x a + c (+ r, added in the same pass), then the ReLU if asked
            def scale_shift(v, *rb, out):   # rb: this block of r, when there is one
                return _scale_shift(v, a, c, out[0], act == "relu", *rb)

            rv = (r.reshape(xv.shape),) if has_r else ()
            y = parallel.blockwise(scale_shift, xv, *rv, out=parallel.empty_like(xv))
            # the ReLU's mask is y > 0 (z > 0 exactly where max(z, 0) > 0, with r too): the
            # output is kept rather than z recomputed in backward
            kept = y if act else None
        ctx.batch_stats, ctx.has_w, ctx.has_b, ctx.act = batch_stats, has_w, has_b, act
        ctx.has_r, ctx.count = has_r, count
        ctx.sum_across = sum_across if batch_stats else None
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
        if ctx.batch_stats and ctx.sum_across is None and cuda.enabled(g):
            if ctx.act:   # g' = g act'(x a + c), one or two launches
                a, c, kept = affine
                gv = cuda.bn_act_grad(gv, xv, a, c, kept, ctx.act)
            gx, sum_gx, sum_g = cuda.bn_backward(gv, xv, col, mean, rstd, w, ctx.count, need[0])
            return _bn_grads(ctx, need, need_w, need_b, gv, g,
                             None if gx is None else gx.reshape(g.shape), sum_gx, sum_g)
        if ctx.act:  # g' = g act'(x a + c): written block by block while the sums run
            masked, (a, c, kept) = xp_of(g).empty(xv.shape, g.dtype), affine
            act = ctx.act

            def act_grad_and_sums(g_, v, gm, k):  # gm: this block's view of ``masked``
                if act == "relu":   # relu'(z) = [y > 0], y the kept output
                    xp_of(g_).multiply(g_, k > 0, out=gm)
                elif cuda.enabled(g_):   # the GPU's forward kept Φ(z) or s: its own kernels
                    gm[...] = cuda.bn_act_grad(g_, v, a, c, k, act)
                else:   # GELU'(z), kept by the forward
                    gelu_grad_block(g_, k, out=(gm,))
                return _sum_and_centred_dot(gm, v, mu, col)

            sum_g, sum_gxc = _channel_sums(act_grad_and_sums, gv, xv, masked, kept, col,
                                           sums=col)
            sum_gx = sum_gxc * rstd
            gv = masked
        elif ctx.batch_stats and need[0] or need_w or need_b:
            sum_g, sum_gxc = _channel_sums(lambda g_, v: _sum_and_centred_dot(g_, v, mu, col),
                                           gv, xv, col, sums=col)
            sum_gx = sum_gxc * rstd                                # sum g x̂ = sum g (x - μ) / σ
        gx = None
        if need[0]:
            k = rstd if w is None else rstd * w                    # w / σ per channel
            if ctx.batch_stats:  # (g - mean(g) - x̂ mean(g x̂)) k  =  (g + x α + β) k
                count, all_g, all_gx = ctx.count, sum_g, sum_gx
                if ctx.sum_across is not None:   # means over every rank's batch (w, b: local)
                    all_g, all_gx = sum_over_ranks(ctx.sum_across, (sum_g, sum_gx))
                q = all_gx / count * rstd       # x̂ = (x - μ)/σ: x̂ mean(g x̂) = x q - μ q
                alpha, beta = -q, mean * q - all_g / count
                kc, ac, bc = (_per_channel(v, col) for v in (k, alpha, beta))
                gx = parallel.blockwise(lambda g_, v, out: _input_grad(g_, v, kc, ac, bc, out[0]),
                                        gv, xv, out=parallel.empty_like(gv))
            else:
                kc = _per_channel(k, col)
                gx = parallel.blockwise(lambda g_, out: xp_of(g_).multiply(g_, kc, out=out[0]),
                                        gv, out=parallel.empty_like(gv))
            gx = gx.reshape(g.shape)
        return _bn_grads(ctx, need, need_w, need_b, gv, g, gx,
                         sum_gx if need_w else None, sum_g if need_b else None)


def _bn_grads(ctx, need, need_w, need_b, gv, g, gx, dw, db):
    """BatchNorm's gradients in input order: x, then w, b and r where the op has them."""
    grads = [gx]
    if ctx.has_w:
        grads.append(dw if need_w else None)
    if ctx.has_b:
        grads.append(db if need_b else None)
    if ctx.has_r:   # y = act(z + r): r's gradient is g' (g itself without an act)
        grads.append(gv.reshape(g.shape) if need[-1] else None)
    return tuple(grads)


# the GELU forward passes a BatchNorm can fuse (the value and the derivative, into ``out``)
_GELU = {"gelu": GELU_BLOCKS["none"], "gelu_tanh": GELU_BLOCKS["tanh"]}


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


def _sum_and_centred_dot(g, v, mu, col=True):
    """(Σ g, Σ g (v - μ)) down the rows of a (rows, C) block, per channel, the second as one
    einsum over (v - μ) so that no product array is written; for a (n, C, L) block (``col``
    False) the two arrays (g, g (v - μ)) that ``_channel_sums`` sums along L."""
    xp = xp_of(g)
    if not col:
        return g, g * (v - mu)
    d = xp.subtract(v, mu)
    return parallel.column_sums(g), xp.einsum("ij,ij->j", g, d)


def _input_grad(g, v, k, alpha, beta, out):
    """out = (g + v α + β) k (per-channel k, α, β): the batch-statistics input gradient, four
    passes in place with no temporary array."""
    xp_of(g).multiply(v, alpha, out=out)
    out += g
    out += beta
    out *= k
    return out


def _channels_view(x):
    """(N, C) stays 2-D (channels in columns); anything longer becomes (N, C, L)."""
    return (x, True) if x.ndim == 2 else (x.reshape(x.shape[0], x.shape[1], -1), False)


def _per_channel(v, col: bool):
    """A (C,) vector shaped to broadcast against the view: (C,) for (N, C), (C, 1) for (N, C, L)."""
    return v if col else v[:, None]


def _channel_sums(fn, *arrays_and_col, sums=False):
    """Per-channel sums of ``fn(*blocks)`` (one array or a tuple) over every axis but C;
    ``sums``: ``fn`` returns its block's per-channel sums itself (the (N, C) view only)."""
    *arrays, col = arrays_and_col
    if col:
        return _tuple(parallel.sum_rows(fn, *arrays, summed=sums))
    def sums_along_l(*blocks):  # (n, C, L) -> (n, C): sums of contiguous runs of L, as gemvs
        return tuple(parallel.row_sums(r.reshape(-1, r.shape[-1])).reshape(r.shape[:2])
                     for r in _tuple(fn(*blocks)))

    outs = parallel.blockwise(sums_along_l, *arrays)
    return tuple(parallel.column_sums(o) for o in _tuple(outs))


def _mean_var(xv):
    """Per-channel batch mean and (biased) variance of the (N, C) view in one pass over x from
    memory: each fixed block of rows, while it sits in cache, gives its column sums s_b and
    its squares around its own mean m_b = s_b / n_b, q_b = Σ (x - m_b)²; the blocks combine
    exactly (Chan et al.)::

        mean = Σ s_b / count        var = (Σ q_b + Σ n_b (m_b - mean)²) / count

    No x² - mean² cancellation: every square is taken around a mean of the same numbers. The
    blocks do not depend on the number of threads, so neither does the result. (The (N, C, L)
    view keeps the two passes: there the one pass measured no faster.)"""
    xp = xp_of(xv)
    n, c = xv.shape
    rows = max(1, parallel.BLOCK_ELEMENTS // max(c, 1)) if _threaded(xv) else n  # GPU: one
    starts = list(range(0, n, rows))
    s = xp.empty((len(starts), c), xv.dtype)
    q = xp.empty_like(s)

    def block(k):
        blk = xv[starts[k]:starts[k] + rows]
        s[k] = parallel.column_sums(blk)
        d = blk - s[k] / blk.shape[0]
        q[k] = xp.einsum("ij,ij->j", d, d)

    parallel.for_each(block, range(len(starts)), threaded=_threaded(xv))
    n_b = xp.asarray([min(rows, n - a) for a in starts], xv.dtype)[:, None]
    mean = s.sum(axis=0) / n
    return mean, (q.sum(axis=0) + (((s / n_b - mean) ** 2) * n_b).sum(axis=0)) / n


def _threaded(a) -> bool:
    return backend.device_of(a) == "cpu" and a.size >= parallel.MIN_ELEMENTS


def _tuple(r):
    return r if isinstance(r, tuple) else (r,)


def _square(a):
    a *= a
    return a



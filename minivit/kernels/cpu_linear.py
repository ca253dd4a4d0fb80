"""Fast bodies of Linear and LinearColumns: the bias add, the GELU and the residual add ride
on one blocked pass over y (on all cores), which also computes the GELU's derivative for
backward; in backward the bias gradient is summed in the pass that applies it."""
from __future__ import annotations

from ..autograd import backend
from ..autograd.flops import add_flops
from ..nn.functional.linear import (GELU_ACTS, Linear, LinearColumns, check_linear_args,
                                    linear_grads)
from . import cuda, parallel, register
from .cpu_elementwise import (GELU_BLOCKS, gelu_backward, gelu_forward, gelu_grad_block,
                              grad_wanted)

xp_of = backend.get_array_module


def gelu_forward_with_bias(x, approximate: str, bias, bias_layout: str, grad: bool = True):
    """(GELU(x + bias), saved) of a 2-D x, as ``gelu_forward``: the bias is added *in place*
    in the same pass over each block, so x ends up holding the GELU's input.
    ``bias_layout="row"``: one bias per column, shape (F,) for x (N, F), as Linear's;
    ``"column"``: one per row, shape (N,), as LinearColumns'."""
    if bias_layout == "column":
        bias = bias[:, None]
    if cuda.enabled(x):
        x += bias
        return gelu_forward(x, approximate)
    fn = GELU_BLOCKS[approximate]
    out = parallel.empty_like(x, 2)
    if bias_layout == "column":          # the bias is cut into blocks with x's rows
        def shifted(xb, bb, out):
            xb += bb
            return fn(xb, out, grad)

        y, d = parallel.blockwise(shifted, x, bias, out=out)
        return y, (d,)

    def shifted_row(xb, out):            # every block gets the whole row of biases
        xb += bias
        return fn(xb, out, grad)

    y, d = parallel.blockwise(shifted_row, x, out=out)
    return y, (d,)


def gelu_backward_with_bias_grad(g, saved, approximate: str, bias_grad: str):
    """(dL/dx, the bias gradient) of ``gelu_forward_with_bias``: ``bias_grad="row"`` sums dx
    down the columns, ``"column"`` along the rows, each block by block in the same pass."""
    if cuda.enabled(g):
        gx = gelu_backward(g, saved, approximate)
        return gx, (parallel.column_sums(gx) if bias_grad == "row" else parallel.row_sums(gx))
    d = saved[0]
    if bias_grad == "row":
        gx = parallel.empty_like(g)[0]

        def fill(gb, db, ob):
            return gelu_grad_block(gb, db, out=(ob,))

        return gx, parallel.sum_rows(fill, g, d, gx)
    gx, gb = parallel.empty_like(g)[0], xp_of(g).empty(g.shape[0], g.dtype)

    def fill_and_sum(gb_, db, out):
        gelu_grad_block(gb_, db, out=out[:1])
        out[1][...] = parallel.row_sums(out[0])
        return out

    parallel.blockwise(fill_and_sum, g, d, out=(gx, gb))
    return gx, gb


def _add_bias_and_residual_(y, b, r, bias_layout: str):
    """y += b + r in one pass over each block of y (b per column of y for "row", per row for
    "column"): a residual stream's add rides on the bias add, one pass over y fewer."""
    if b is None:
        def add(yb, rb, out):
            yb += rb
            return yb

        return parallel.blockwise(add, y, r, out=(y,))
    if bias_layout == "column":
        def add_col(yb, bb, rb, out):
            yb += bb
            yb += rb
            return yb

        return parallel.blockwise(add_col, y, b[:, None], r, out=(y,))

    def add_row(yb, rb, out):
        yb += b
        yb += rb
        return yb

    return parallel.blockwise(add_row, y, r, out=(y,))


def _grad_before_act(ctx, g, bias_layout: str):
    """(dy, db) from the gradient g of the op's output: dy = g GELU'(y) when the op ends in a
    GELU (db summed in that same pass), else g itself; db is None when not wanted."""
    want_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.act is not None:
        saved = ctx.saved_tensors[2:]     # what gelu_backward needs (gelu_forward's ``saved``)
        approximate = GELU_ACTS[ctx.act]
        if want_bias:
            return gelu_backward_with_bias_grad(g, saved, approximate, bias_layout)
        return gelu_backward(g, saved, approximate), None
    if not want_bias:
        return g, None
    return g, (parallel.column_sums(g) if bias_layout == "row" else parallel.row_sums(g))


@register(Linear)
class LinearFast(Linear):
    def forward(ctx, x, w, *br, act=None, has_bias=True):
        b, r, out_shape = check_linear_args(x, w, br, has_bias, act, columns=False)
        x2 = x.reshape(-1, w.shape[1])
        y = x2 @ w.T
        add_flops(2 * y.size * w.shape[1])
        ctx.x_shape, ctx.has_bias, ctx.act = x.shape, b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        if act is not None:
            grad = grad_wanted(ctx)
            if b is None:
                h, saved = gelu_forward(y, GELU_ACTS[act], grad)
            else:               # y += b in place, h = GELU(y)
                h, saved = gelu_forward_with_bias(y, GELU_ACTS[act], b, "row", grad)
            ctx.save_for_backward(x2, w, *saved)
            return h.reshape(out_shape)
        if r is not None:
            _add_bias_and_residual_(y, b, r.reshape(y.shape), "row")   # y += b + r
        elif b is not None:
            parallel.add_rows_(y, b)      # y += b, on all cores
        ctx.save_for_backward(x2, w)
        return y.reshape(out_shape)

    def backward(ctx, g):
        x2, w = ctx.saved_tensors[:2]
        g2 = g.reshape(-1, w.shape[0])
        need = ctx.needs_input_grad
        if cuda.enabled(g2):
            return cuda.linear_backward(ctx, g, g2, x2, w, gelu_backward)
        g2, gb = _grad_before_act(ctx, g2, "row")
        gx = (g2 @ w).reshape(ctx.x_shape) if need[0] else None
        gw = parallel.t_matmul(g2, x2) if need[1] else None
        return linear_grads(ctx, gx, gw, gb, g)


@register(LinearColumns)
class LinearColumnsFast(LinearColumns):
    def forward(ctx, x, w, *br, act=None, has_bias=True):
        b, r, _ = check_linear_args(x, w, br, has_bias, act, columns=True)
        y = w @ x
        add_flops(2 * y.size * w.shape[1])
        ctx.has_bias, ctx.act = b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        if act is not None:               # y += b[:, None] in place, h = GELU(y)
            grad = grad_wanted(ctx)
            if b is None:
                h, saved = gelu_forward(y, GELU_ACTS[act], grad)
            else:
                h, saved = gelu_forward_with_bias(y, GELU_ACTS[act], b, "column", grad)
            ctx.save_for_backward(x, w, *saved)
            return h
        if r is not None:
            _add_bias_and_residual_(y, b, r, "column")   # y += b[:, None] + r
        elif b is not None:
            parallel.add_columns_(y, b)   # y += b[:, None], on all cores
        ctx.save_for_backward(x, w)
        return y

    def backward(ctx, g):
        x, w = ctx.saved_tensors[:2]
        need = ctx.needs_input_grad
        g_out = g
        g, gb = _grad_before_act(ctx, g, "column")
        gx = w.T @ g if need[0] else None
        gw = g @ x.T if need[1] else None
        return linear_grads(ctx, gx, gw, gb, g_out)

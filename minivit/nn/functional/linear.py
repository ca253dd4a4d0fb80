"""``linear``: y = x W^T + b, one matrix product on a 2-D view of any (..., in) input;
``linear_columns``: the same map on the columns of an (in, M) matrix, y = W x + b."""
from __future__ import annotations

from ...autograd import backend, parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function
from ...autograd.ops.elementwise import gelu_backward, gelu_forward

xp_of = backend.get_array_module

_GELU = {"gelu": "none", "gelu_tanh": "tanh"}   # act -> GELU's ``approximate``


def _check_act(act):
    if act is not None and act not in _GELU:
        raise ValueError(f"act must be None, 'gelu' or 'gelu_tanh', got {act!r}")


def _check_residual(residual, act, out_shape):
    if residual is None:
        return
    if act is not None:
        raise ValueError("residual= adds after the product; it cannot follow act= (the GELU)")
    if residual.shape != out_shape:
        raise ValueError(f"residual of shape {residual.shape} does not match the output shape "
                         f"{out_shape}")


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
    GELU (db summed in that same pass), else g itself; db is None when not wanted.
    ``bias_layout``: "row" (one bias per column of y, Linear) or "column" (LinearColumns)."""
    want_bias = ctx.has_bias and ctx.needs_input_grad[2]
    if ctx.act is not None:
        y, saved = ctx.saved_tensors[2:]
        if want_bias:
            return gelu_backward(g, y, saved, _GELU[ctx.act], bias_grad=bias_layout)
        return gelu_backward(g, y, saved, _GELU[ctx.act]), None
    if not want_bias:
        return g, None
    return g, (parallel.sum_rows(lambda a: a, g) if bias_layout == "row" else parallel.row_sums(g))


def _grads(ctx, gx, gw, gb, g):
    """The gradients in input order: x, w, then the bias and the residual (g itself) if given."""
    grads = (gx, gw) + ((gb,) if ctx.has_bias else ())
    if ctx.residual_shape is not None:
        grads += ((g.reshape(ctx.residual_shape) if ctx.needs_input_grad[-1] else None),)
    return grads


class Linear(Function):
    """y = x2 @ W^T + b with x2 = x.reshape(-1, in);  dx = g @ W,  dW = g^T x2,  db = sum_rows g.

    ``act="gelu"`` (or ``"gelu_tanh"``) returns h = GELU(y) instead, the first half of a
    transformer MLP, with the bias add inside the GELU's pass over each block of y (one pass
    fewer) and, in backward, the bias gradient summed in the GELU derivative's pass:
    dy = g GELU'(y), then dx, dW, db from dy as above.

    A ``residual`` r (the last input, of y's shape) returns y + r, the end of a residual
    branch x + Linear(h), with r added in the bias add's pass; its gradient is g itself.
    """

    def forward(ctx, x, w, *br, act=None, has_bias=True):
        _check_act(act)
        b = br[0] if has_bias and br else None
        r = br[-1] if len(br) == (2 if has_bias else 1) else None
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
        if x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (last dim of "
                             f"shape {x.shape}) but the weight {w.shape} expects {w.shape[1]}")
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"bias of shape {b.shape} does not match weight {w.shape}: "
                             f"expected ({w.shape[0]},)")
        out_shape = (*x.shape[:-1], w.shape[0])
        _check_residual(r, act, out_shape)
        x2 = x.reshape(-1, w.shape[1])
        y = x2 @ w.T
        add_flops(2 * y.size * w.shape[1])
        ctx.x_shape, ctx.has_bias, ctx.act = x.shape, b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        if act is not None:
            h, saved = gelu_forward(y, _GELU[act], bias=b)   # y += b in place, h = GELU(y)
            ctx.save_for_backward(x2, w, y, saved)
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
        g2, gb = _grad_before_act(ctx, g2, "row")
        gx = (g2 @ w).reshape(ctx.x_shape) if need[0] else None
        gw = g2.T @ x2 if need[1] else None
        return _grads(ctx, gx, gw, gb, g)


class LinearColumns(Function):
    """y = W x + b[:, None] for x (in, M) whose columns are the vectors;
    dx = W^T g,  dW = g x^T,  db = sum_columns g.

    The MLP-Mixer's token mixing applies a Linear along the token axis S of (B, S, C)
    activations. With the tokens first, (S, B*C), that is one GEMM W (out, S) @ (S, B*C): the
    layout change is a copy of whole rows of C numbers, not an element-by-element transpose.
    """

    name = "linear_columns"

    def forward(ctx, x, w, *br, act=None, has_bias=True):
        _check_act(act)
        b = br[0] if has_bias and br else None
        r = br[-1] if len(br) == (2 if has_bias else 1) else None
        if w.ndim != 2 or x.ndim != 2 or x.shape[0] != w.shape[1]:
            raise ValueError(f"expected a weight (out, in) and an input (in, M), got weight "
                             f"{w.shape} and input {x.shape}")
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"bias of shape {b.shape} does not match weight {w.shape}: "
                             f"expected ({w.shape[0]},)")
        _check_residual(r, act, (w.shape[0], x.shape[1]))
        y = w @ x
        add_flops(2 * y.size * w.shape[1])
        ctx.has_bias, ctx.act = b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        if act is not None:               # y += b[:, None] in place, h = GELU(y)
            h, saved = gelu_forward(y, _GELU[act], bias=b, bias_layout="column")
            ctx.save_for_backward(x, w, y, saved)
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
        return _grads(ctx, gx, gw, gb, g_out)


def _apply(op, x, weight, bias, act, residual):
    extra = tuple(t for t in (bias, residual) if t is not None)
    return op.apply(x, weight, *extra, act=act, has_bias=bias is not None)


def linear_columns(x, weight, bias=None, act=None, residual=None):
    """``weight @ x + bias[:, None]``: a Linear applied to each column of x (in, M); with
    ``act="gelu"`` (or ``"gelu_tanh"``) GELU of that, fused (see ``Linear``); with
    ``residual`` (out, M), that plus the residual, added in the bias's pass.

    ``F.linear_columns(minivit.ones(3, 5), minivit.ones(4, 3)).shape`` -> ``(4, 5)``.
    """
    return _apply(LinearColumns, x, weight, bias, act, residual)


def linear(x, weight, bias=None, act=None, residual=None):
    """``x @ weight.T + bias`` with weight (out_features, in_features), PyTorch's layout; with
    ``act="gelu"`` (exact) or ``"gelu_tanh"``, ``gelu(x @ weight.T + bias)`` in one op whose
    bias add and bias gradient ride on the GELU's passes; with ``residual`` (the output's
    shape), ``residual + x @ weight.T + bias``, the residual added in the bias add's pass
    (the end of a residual branch: ``F.linear(h, w2, b2, residual=x)`` == ``x + fc2(h)``).

    ``F.linear(minivit.ones(2, 3), minivit.ones(4, 3)).shape`` -> ``(2, 4)``.
    """
    return _apply(Linear, x, weight, bias, act, residual)

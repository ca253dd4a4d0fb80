"""``linear``: y = x W^T + b, one matrix product on a 2-D view of any (..., in) input;
``linear_columns``: the same map on the columns of an (in, M) matrix, y = W x + b."""
from __future__ import annotations

from ...autograd import backend
from ...autograd.autocast import cast_inputs
from ...autograd.flops import add_flops
from ...autograd.function import Function
from ...autograd.ops.elementwise import gelu_derivative, gelu_value

xp_of = backend.get_array_module

GELU_ACTS = {"gelu": "none", "gelu_tanh": "tanh"}   # act -> GELU's ``approximate``


def check_linear_args(x, w, br, has_bias, act, columns: bool):
    """(b, r, output shape) from the op's inputs, or a one-line error naming the bad shape."""
    if act is not None and act not in GELU_ACTS:
        raise ValueError(f"act must be None, 'gelu' or 'gelu_tanh', got {act!r}")
    b = br[0] if has_bias and br else None
    r = br[-1] if len(br) == (2 if has_bias else 1) else None
    if columns:
        if w.ndim != 2 or x.ndim != 2 or x.shape[0] != w.shape[1]:
            raise ValueError(f"expected a weight (out, in) and an input (in, M), got weight "
                             f"{w.shape} and input {x.shape}")
        out_shape = (w.shape[0], x.shape[1])
    else:
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape "
                             f"{w.shape}")
        if x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (last dim of "
                             f"shape {x.shape}) but the weight {w.shape} expects {w.shape[1]}")
        out_shape = (*x.shape[:-1], w.shape[0])
    if b is not None and b.shape != (w.shape[0],):
        raise ValueError(f"bias of shape {b.shape} does not match weight {w.shape}: "
                         f"expected ({w.shape[0]},)")
    if r is not None:
        if act is not None:
            raise ValueError("residual= adds after the product; it cannot follow act= (the GELU)")
        if r.shape != out_shape:
            raise ValueError(f"residual of shape {r.shape} does not match the output shape "
                             f"{out_shape}")
    return b, r, out_shape


class Linear(Function):
    """y = x W^T + b, with x (..., in), W (out, in), b (out,): one matrix product on the 2-D
    view x2 = x.reshape(-1, in). Each y_nj = Σ_i x_ni W_ji + b_j, so with g = dL/dy:

        dx = g W,    dW = g^T x2,    db = Σ_n g_n  (a column sum)

    ``act="gelu"`` (or ``"gelu_tanh"``) returns h = GELU(y), the first half of a transformer
    MLP: then g is first multiplied by GELU'(y) (the chain rule) and the rest is as above.
    ``residual`` r (y's shape) returns y + r, the end of a residual branch; dr = g.

    Fast body (the bias, GELU and residual riding on one blocked pass over y):
    minivit/kernels/cpu_linear.py.
    """

    def forward(ctx, x, w, *br, act=None, has_bias=True):
        b, r, out_shape = check_linear_args(x, w, br, has_bias, act, columns=False)
        x2 = x.reshape(-1, w.shape[1])
        y = x2 @ w.T
        add_flops(2 * y.size * w.shape[1])
        if b is not None:
            y = y + b
        if r is not None:
            y = y + r.reshape(y.shape)
        ctx.x_shape, ctx.has_bias, ctx.act = x.shape, b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        ctx.save_for_backward(x2, w, y if act else None)
        out = y if act is None else gelu_value(y, GELU_ACTS[act])
        return out.reshape(out_shape)

    def backward(ctx, g):
        x2, w, y = ctx.saved_tensors
        g2 = g.reshape(-1, w.shape[0])
        if ctx.act is not None:
            g2 = g2 * gelu_derivative(y, GELU_ACTS[ctx.act])       # through h = GELU(y)
        need = ctx.needs_input_grad
        gx = (g2 @ w).reshape(ctx.x_shape) if need[0] else None
        gw = g2.T @ x2 if need[1] else None
        gb = g2.sum(axis=0) if ctx.has_bias and need[2] else None
        return linear_grads(ctx, gx, gw, gb, g)


class LinearColumns(Function):
    """y = W x + b[:, None] for x (in, M) whose columns are the vectors:

        dx = W^T g,    dW = g x^T,    db = Σ_m g[:, m]  (a row sum)

    with ``act`` and ``residual`` as in ``Linear``. The MLP-Mixer's token mixing applies a
    Linear along the token axis S of (B, S, C) activations: with the tokens first, (S, B*C),
    that is one GEMM W (out, S) @ (S, B*C).

    Fast body: minivit/kernels/cpu_linear.py.
    """

    name = "linear_columns"

    def forward(ctx, x, w, *br, act=None, has_bias=True):
        b, r, _ = check_linear_args(x, w, br, has_bias, act, columns=True)
        y = w @ x
        add_flops(2 * y.size * w.shape[1])
        if b is not None:
            y = y + b[:, None]
        if r is not None:
            y = y + r
        ctx.has_bias, ctx.act = b is not None, act
        ctx.residual_shape = None if r is None else r.shape
        ctx.save_for_backward(x, w, y if act else None)
        return y if act is None else gelu_value(y, GELU_ACTS[act])

    def backward(ctx, g):
        x, w, y = ctx.saved_tensors
        g_out = g
        if ctx.act is not None:
            g = g * gelu_derivative(y, GELU_ACTS[ctx.act])
        need = ctx.needs_input_grad
        gx = w.T @ g if need[0] else None
        gw = g @ x.T if need[1] else None
        gb = g.sum(axis=1) if ctx.has_bias and need[2] else None
        return linear_grads(ctx, gx, gw, gb, g_out)


def _operands(attrs) -> int:
    return 3 if attrs.get("has_bias", True) else 2   # x, w and the bias; not the residual


# under minivit.autocast: x, w, b rounded to bf16/fp16, the product's result too, the residual
# added in float32 after it (minivit/autograd/autocast.py)
cast_inputs(Linear, _operands, residual=True)
cast_inputs(LinearColumns, _operands, residual=True)


def linear_grads(ctx, gx, gw, gb, g):
    """The gradients in input order: x, w, then the bias and the residual (g itself) if given."""
    grads = (gx, gw) + ((gb,) if ctx.has_bias else ())
    if ctx.residual_shape is not None:
        grads += ((g.reshape(ctx.residual_shape) if ctx.needs_input_grad[-1] else None),)
    return grads


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

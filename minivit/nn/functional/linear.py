"""``linear``: y = x W^T + b, one matrix product on a 2-D view of any (..., in) input;
``linear_columns``: the same map on the columns of an (in, M) matrix, y = W x + b."""
from __future__ import annotations

from ...autograd import backend, parallel
from ...autograd.flops import add_flops
from ...autograd.function import Function

xp_of = backend.get_array_module


class Linear(Function):
    """y = x2 @ W^T + b with x2 = x.reshape(-1, in);  dx = g @ W,  dW = g^T x2,  db = sum_rows g."""

    def forward(ctx, x, w, b=None):
        if w.ndim != 2:
            raise ValueError(f"weight must be 2-D (out_features, in_features), got shape {w.shape}")
        if x.ndim == 0 or x.shape[-1] != w.shape[1]:
            raise ValueError(f"input has {x.shape[-1] if x.ndim else 0} features (last dim of "
                             f"shape {x.shape}) but the weight {w.shape} expects {w.shape[1]}")
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"bias of shape {b.shape} does not match weight {w.shape}: "
                             f"expected ({w.shape[0]},)")
        x2 = x.reshape(-1, w.shape[1])
        y = x2 @ w.T
        add_flops(2 * y.size * w.shape[1])
        if b is not None:
            parallel.add_rows_(y, b)      # y += b, on all cores
        ctx.save_for_backward(x2, w)
        ctx.x_shape, ctx.has_bias = x.shape, b is not None
        return y.reshape(*x.shape[:-1], w.shape[0])

    def backward(ctx, g):
        x2, w = ctx.saved_tensors
        g2 = g.reshape(-1, w.shape[0])
        need = ctx.needs_input_grad
        gx = (g2 @ w).reshape(ctx.x_shape) if need[0] else None
        gw = g2.T @ x2 if need[1] else None
        if not ctx.has_bias:
            return gx, gw
        return gx, gw, (parallel.sum_rows(lambda a: a, g2) if need[2] else None)


class LinearColumns(Function):
    """y = W x + b[:, None] for x (in, M) whose columns are the vectors;
    dx = W^T g,  dW = g x^T,  db = sum_columns g.

    The MLP-Mixer's token mixing applies a Linear along the token axis S of (B, S, C)
    activations. With the tokens first, (S, B*C), that is one GEMM W (out, S) @ (S, B*C): the
    layout change is a copy of whole rows of C numbers, not an element-by-element transpose.
    """

    name = "linear_columns"

    def forward(ctx, x, w, b=None):
        if w.ndim != 2 or x.ndim != 2 or x.shape[0] != w.shape[1]:
            raise ValueError(f"expected a weight (out, in) and an input (in, M), got weight "
                             f"{w.shape} and input {x.shape}")
        if b is not None and b.shape != (w.shape[0],):
            raise ValueError(f"bias of shape {b.shape} does not match weight {w.shape}: "
                             f"expected ({w.shape[0]},)")
        y = w @ x
        add_flops(2 * y.size * w.shape[1])
        if b is not None:
            parallel.add_columns_(y, b)   # y += b[:, None], on all cores
        ctx.save_for_backward(x, w)
        ctx.has_bias = b is not None
        return y

    def backward(ctx, g):
        x, w = ctx.saved_tensors
        need = ctx.needs_input_grad
        gx = w.T @ g if need[0] else None
        gw = g @ x.T if need[1] else None
        if not ctx.has_bias:
            return gx, gw
        return gx, gw, (parallel.row_sums(g) if need[2] else None)


def linear_columns(x, weight, bias=None):
    """``weight @ x + bias[:, None]``: a Linear applied to each column of x (in, M).

    ``F.linear_columns(minivit.ones(3, 5), minivit.ones(4, 3)).shape`` -> ``(4, 5)``.
    """
    if bias is None:
        return LinearColumns.apply(x, weight)
    return LinearColumns.apply(x, weight, bias)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with weight (out_features, in_features), PyTorch's layout.

    ``F.linear(minivit.ones(2, 3), minivit.ones(4, 3)).shape`` -> ``(2, 4)``.
    """
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)

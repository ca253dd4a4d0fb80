"""``linear``: y = x W^T + b, one matrix product on a 2-D view of any (..., in) input."""
from __future__ import annotations

from ...autograd import backend
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
            y += b
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
        return gx, gw, (g2.sum(axis=0) if need[2] else None)


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with weight (out_features, in_features), PyTorch's layout.

    ``F.linear(minivit.ones(2, 3), minivit.ones(4, 3)).shape`` -> ``(2, 4)``.
    """
    if bias is None:
        return Linear.apply(x, weight)
    return Linear.apply(x, weight, bias)

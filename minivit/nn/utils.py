"""``minivit.nn.utils``: PyTorch's ``torch.nn.utils`` helpers (gradient clipping)."""
from __future__ import annotations

import math
from collections.abc import Iterable

from ..autograd.backend import get_array_module
from ..autograd.tensor import Tensor


def clip_grad_norm_(parameters: Tensor | Iterable[Tensor], max_norm: float,
                    norm_type: float = 2.0, error_if_nonfinite: bool = False) -> float:
    """Scale all gradients in place so that their joint norm is at most ``max_norm``
    (PyTorch's ``torch.nn.utils.clip_grad_norm_``). Returns the total norm before clipping.

    The total norm is the ``norm_type``-norm of all gradients seen as one vector (``inf``: the
    largest absolute value). Gradients are multiplied by ``max_norm / (total + 1e-6)`` when
    that is below 1. Parameters without a gradient are ignored.

    >>> total = clip_grad_norm_(model.parameters(), max_norm=1.0)
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [getattr(p.grad, "data", p.grad) for p in parameters if p.grad is not None]
    max_norm, norm_type = float(max_norm), float(norm_type)
    if norm_type <= 0 and not math.isinf(norm_type):
        raise ValueError(f"clip_grad_norm_: norm_type must be positive or inf, got {norm_type}")
    if not grads:
        return 0.0
    xp = get_array_module(*grads)
    if math.isinf(norm_type):
        # max of |g| per array, one device->host transfer at the end
        total = float(max(xp.max(xp.abs(g)) if g.size else 0.0 for g in grads))
    else:
        parts = []
        for g in grads:
            if norm_type == 2.0:
                flat = g.reshape(-1)
                parts.append(xp.dot(flat, flat))          # sum of squares, no temporary array
            elif norm_type == 1.0:
                parts.append(xp.sum(xp.abs(g)))
            else:
                parts.append(xp.sum(xp.abs(g) ** norm_type))
        total = float(sum(parts)) ** (1.0 / norm_type)
    if error_if_nonfinite and not math.isfinite(total):
        raise RuntimeError(f"clip_grad_norm_: the total norm of order {norm_type} of the gradients "
                           f"is {total}; set error_if_nonfinite=False to clip anyway")
    coef = max_norm / (total + 1e-6)
    if coef < 1.0 or math.isnan(coef):
        for g in grads:
            g *= coef
    return total

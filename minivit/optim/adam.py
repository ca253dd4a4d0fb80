"""Adam (Kingma & Ba, 2015) and AdamW (Loshchilov & Hutter, 2019), as PyTorch computes them.

At step t (1, 2, ...) with gradient g, parameter p, learning rate lr::

    Adam :  g = g + wd * p                          (L2 penalty in the gradient)
    AdamW:  p = p - lr * wd * p                     (decoupled decay, before the Adam step)
    m = b1 * m + (1 - b1) * g                       (first moment)
    v = b2 * v + (1 - b2) * g * g                   (second moment)
    p = p - lr / (1 - b1**t) * m / (sqrt(v) / sqrt(1 - b2**t) + eps)

State per parameter: ``step`` (int), ``exp_avg`` (m) and ``exp_avg_sq`` (v), in the
parameter's dtype and on its device.
"""
from __future__ import annotations

import math
from collections.abc import Iterable

from ..kernels import cuda as cuda_kernels
from ..autograd.backend import get_array_module
from .optimizer import Optimizer


class Adam(Optimizer):
    """Adam with L2 weight decay added to the gradient (PyTorch's ``torch.optim.Adam``).

    >>> opt = Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.999))
    """

    decoupled_weight_decay = False

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        name = type(self).__name__
        if lr < 0.0:
            raise ValueError(f"{name}: invalid learning rate {lr} (expected lr >= 0)")
        if eps < 0.0:
            raise ValueError(f"{name}: invalid eps {eps} (expected eps >= 0)")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"{name}: invalid betas {betas} (expected two values in [0, 1))")
        if weight_decay < 0.0:
            raise ValueError(f"{name}: invalid weight_decay {weight_decay} (expected >= 0)")
        defaults = dict(lr=lr, betas=(float(betas[0]), float(betas[1])), eps=eps,
                        weight_decay=weight_decay)
        super().__init__(params, defaults)

    def _update(self, p, g, state: dict, group: dict) -> None:
        lr, eps, wd = float(group["lr"]), float(group["eps"]), float(group["weight_decay"])
        b1, b2 = float(group["betas"][0]), float(group["betas"][1])
        xp = get_array_module(p.data)
        if not state:
            state["step"] = 0
            state["exp_avg"] = xp.zeros_like(p.data)
            state["exp_avg_sq"] = xp.zeros_like(p.data)
        state["step"] += 1
        t, m, v = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if cuda_kernels.enabled(p.data, g):  # the whole update below as one GPU kernel
            cuda_kernels.adam_step(p.data, g, m, v, lr=lr, b1=b1, b2=b2, eps=eps, wd=wd,
                                   decoupled=self.decoupled_weight_decay, step=t)
            return

        if wd != 0.0:
            if self.decoupled_weight_decay:
                p.data *= 1.0 - lr * wd          # AdamW: shrink p, independent of the moments
            else:
                g = g + wd * p.data              # Adam: L2 in the gradient (new array)

        tmp = g * (1.0 - b1)
        m *= b1
        m += tmp                                 # m = b1 m + (1 - b1) g
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - b2
        v *= b2
        v += tmp                                 # v = b2 v + (1 - b2) g^2

        step_size = lr / (1.0 - b1 ** t)
        denom = xp.sqrt(v, out=tmp)
        denom /= math.sqrt(1.0 - b2 ** t)
        denom += eps                             # sqrt(v / (1 - b2^t)) + eps
        xp.divide(m, denom, out=denom)
        denom *= step_size
        p.data -= denom                          # p -= lr / (1 - b1^t) * m / denom


class AdamW(Adam):
    """Adam with decoupled weight decay ``p -= lr * wd * p`` (PyTorch's ``torch.optim.AdamW``).

    >>> opt = AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    """

    decoupled_weight_decay = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

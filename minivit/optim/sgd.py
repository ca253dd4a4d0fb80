"""SGD with momentum, dampening, Nesterov and L2 weight decay (PyTorch's ``torch.optim.SGD``).

With gradient g, parameter p, learning rate lr, momentum mu, dampening tau, weight decay wd::

    d = g + wd * p                                  (L2 penalty folded into the gradient)
    b = d                        on the first step  (momentum buffer, no dampening)
    b = mu * b + (1 - tau) * d   afterwards
    d = d + mu * b   if nesterov  else  b           (only when mu != 0)
    p = p - lr * d
"""
from __future__ import annotations

from collections.abc import Iterable

from ..autograd.backend import get_array_module
from .optimizer import Optimizer, required


class SGD(Optimizer):
    """Stochastic gradient descent, exactly PyTorch's update rule.

    >>> opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    """

    def __init__(self, params: Iterable, lr: float = required, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False):
        if lr is not required and lr < 0.0:
            raise ValueError(f"SGD: invalid learning rate {lr} (expected lr >= 0)")
        if momentum < 0.0:
            raise ValueError(f"SGD: invalid momentum {momentum} (expected momentum >= 0)")
        if weight_decay < 0.0:
            raise ValueError(f"SGD: invalid weight_decay {weight_decay} (expected >= 0)")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"SGD: Nesterov momentum needs momentum > 0 and dampening = 0, got "
                             f"momentum={momentum}, dampening={dampening}")
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov)
        super().__init__(params, defaults)

    def _update(self, p, g, state: dict, group: dict) -> None:
        lr, mu = float(group["lr"]), float(group["momentum"])
        tau, wd = float(group["dampening"]), float(group["weight_decay"])
        xp = get_array_module(p.data)
        d = g
        if wd != 0.0:
            d = g + wd * p.data                  # new array: the gradient itself is never changed
        if mu != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.array(d, copy=True)
            else:
                buf *= mu
                buf += d if tau == 0.0 else (1.0 - tau) * d
            d = d + mu * buf if group["nesterov"] else buf
        p.data -= lr * d

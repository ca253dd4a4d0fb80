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
from ..autograd.tensor import Tensor
from .optimizer import Optimizer, grad_array


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

    def _step_group(self, group: dict) -> bool:
        """On the GPU, the whole group in one kernel over flat buffers (``_FlatGroup``)."""
        params = group["params"]
        if not params or not all(cuda_kernels.enabled(p.data) and p.grad is not None
                                 for p in params):
            return False
        flat = self._flat.get(id(group))
        if flat is None or not flat.holds(params, self.state):
            flat = _FlatGroup.build(params, self.state)
            if flat is None:
                return False
            self._flat[id(group)] = flat
        for p, gv in zip(params, flat.grads):
            g = grad_array(p)
            if g.shape != p.data.shape:
                raise ValueError(f"{type(self).__name__}: gradient of shape {g.shape} for a "
                                 f"parameter of shape {p.data.shape}")
            if g is not gv:       # a gradient set by hand: into the buffer (one copy)
                gv[...] = g
        steps = {self.state[p]["step"] for p in params}
        if len(steps) != 1:
            return False
        for p in params:
            self.state[p]["step"] += 1
        cuda_kernels.adam_step(flat.p, flat.g, flat.m, flat.v, lr=float(group["lr"]),
                               b1=float(group["betas"][0]), b2=float(group["betas"][1]),
                               eps=float(group["eps"]), wd=float(group["weight_decay"]),
                               decoupled=self.decoupled_weight_decay, step=steps.pop() + 1,
                               t_offset=self._t_offset)
        return True

    def _flat_group(self, group: dict):
        """The group's ``_FlatGroup`` if it still holds the group's arrays, else None."""
        flat = self._flat.get(id(group))
        return flat if flat is not None and flat.holds(group["params"], self.state) else None

    def _flat_buffers(self, group: dict) -> tuple:
        flat = self._flat_group(group)
        if flat is None or any(grad_array(p) is None for p in group["params"]):
            return ()
        return flat.p, flat.m, flat.v

    @property
    def _flat(self) -> dict:
        if "_flat_groups" not in self.__dict__:
            self.__dict__["_flat_groups"] = {}
        return self.__dict__["_flat_groups"]

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
                                   decoupled=self.decoupled_weight_decay, step=t,
                                   t_offset=self._t_offset)
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

        step_size, bc2_sqrt = bias_corrections(lr, b1, b2, t, self._t_offset)
        if self._t_offset is not None:   # 0-d device arrays: kept in the parameters' dtype
            step_size, bc2_sqrt = step_size.astype(p.data.dtype), bc2_sqrt.astype(p.data.dtype)
        denom = xp.sqrt(v, out=tmp)
        denom /= bc2_sqrt
        denom += eps                             # sqrt(v / (1 - b2^t)) + eps
        xp.divide(m, denom, out=denom)
        denom *= step_size
        p.data -= denom                          # p -= lr / (1 - b1^t) * m / denom


def bias_corrections(lr, b1, b2, t, undone=None):
    """Adam's step size and second-moment correction, (lr / (1 - b1^t), sqrt(1 - b2^t)), as
    floats; with ``undone`` (under a GradScaler: the 0-d device count of the steps undone so
    far) for t - undone, the steps taken, as 0-d device arrays (no host synchronisation)."""
    if undone is None:
        return lr / (1.0 - b1 ** t), math.sqrt(1.0 - b2 ** t)
    t = t - undone
    xp = get_array_module(t)
    return lr / (1.0 - xp.power(b1, t)), xp.sqrt(1.0 - xp.power(b2, t))


class AdamW(Adam):
    """Adam with decoupled weight decay ``p -= lr * wd * p`` (PyTorch's ``torch.optim.AdamW``).

    >>> opt = AdamW(param_groups_weight_decay(model, 0.05), lr=1e-3)
    """

    decoupled_weight_decay = True

    def __init__(self, params: Iterable, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


class _FlatGroup:
    """A parameter group's parameters, gradients and Adam moments as four flat GPU buffers,
    each parameter's arrays views of them, so one kernel updates the whole group (instead of
    one per parameter). The parameters' ``.data`` and the state's ``exp_avg``/``exp_avg_sq``
    become those views; gradients are written into theirs by the engine (``GRAD_SLOTS``).
    Anything that replaces one of these arrays (``load_state_dict``, a hand-set ``.data``) is
    noticed by ``holds`` and the buffers are rebuilt, copying the current values in."""

    def __init__(self, params, p, g, m, v, views):
        self.params, self.p, self.g, self.m, self.v = list(params), p, g, m, v
        self.pv, self.grads, self.mv, self.vv = views

    def holds(self, params, state) -> bool:
        return (len(params) == len(self.params)
                and all(a is b for a, b in zip(params, self.params))
                and all(p.data is pv and state.get(p, {}).get("exp_avg") is mv
                        and state[p].get("exp_avg_sq") is vv
                        for p, pv, mv, vv in zip(params, self.pv, self.mv, self.vv)))

    @classmethod
    def build(cls, params, state):
        from ..autograd.engine import set_grad_slot  # noqa: PLC0415

        dtype = params[0].data.dtype
        if any(p.data.dtype != dtype for p in params) or len({id(p) for p in params}) < len(params):
            return None
        xp = get_array_module(params[0].data)
        sizes = [p.data.size for p in params]
        total = sum(sizes)
        bufs = [xp.empty(total, dtype) for _ in range(4)]
        views: list = [[], [], [], []]
        start = 0
        for p, n in zip(params, sizes):
            st = state.setdefault(p, {})
            if not st:
                st.update(step=0, exp_avg=None, exp_avg_sq=None)
            olds = (p.data, grad_array(p), st["exp_avg"], st["exp_avg_sq"])
            for k, (buf, old) in enumerate(zip(bufs, olds)):
                view = buf[start:start + n].reshape(p.data.shape)
                if old is None:
                    view[...] = 0
                else:
                    view[...] = old
                views[k].append(view)
            p.data, st["exp_avg"], st["exp_avg_sq"] = views[0][-1], views[2][-1], views[3][-1]
            set_grad_slot(p, views[1][-1])
            if isinstance(p.grad, Tensor):
                p.grad.data = views[1][-1]
            elif p.grad is not None:      # a raw array set by hand
                p.grad = views[1][-1]
            start += n
        return cls(params, *bufs, views)

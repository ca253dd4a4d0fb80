"""``Optimizer``: the base class of SGD, Adam and AdamW (PyTorch's ``torch.optim.Optimizer``).

An optimizer holds ``param_groups`` (a list of dicts: ``{"params": [...], "lr": ..., ...}``,
one set of hyperparameters per group) and ``state`` (a dict per parameter: momentum buffers,
Adam moments, step counts). ``step()`` updates ``p.data`` in place from ``p.grad``; parameters
whose ``grad`` is None are skipped. ``state_dict()`` / ``load_state_dict()`` use PyTorch's
layout, with NumPy arrays::

    {"state": {0: {"step": array(3), "exp_avg": ndarray, ...}, 1: {...}},   # index -> state
     "param_groups": [{"lr": 1e-3, ..., "params": [0, 1]}, {"lr": ..., "params": [2]}]}

Parameters are numbered 0, 1, 2, ... in the order of the groups, then of each group's list.
Every state value is a NumPy array (a 0-d int64 for ``step``), and group hyperparameters are
plain Python values, so a checkpoint can keep the arrays in an ``.npz`` and the groups in JSON.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from ..autograd import backend
from ..autograd.grad_mode import enable_grad
from ..autograd.tensor import Tensor


class _Required:
    """Sentinel for a hyperparameter that has no default and must be given (e.g. SGD's lr)."""

    def __repr__(self) -> str:
        return "<required>"


required = _Required()


def grad_array(p: Tensor):
    """The raw gradient array of ``p`` (``p.grad`` may be a Tensor or an array), or None."""
    g = p.grad
    if g is None:
        return None
    return g.data if isinstance(g, Tensor) else g


class Optimizer:
    """Base class: subclasses set ``defaults`` and implement ``step()``.

    >>> w = minivit.randn(3, requires_grad=True)
    >>> opt = SGD([w], lr=0.1)                          # or groups: [{"params": [w], "lr": 0.01}]
    >>> (w * w).sum().backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]):
        self.defaults = dict(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        name = type(self).__name__
        if isinstance(params, Tensor):
            raise TypeError(f"{name}: params must be an iterable of Tensors or of dicts, got a "
                            f"single Tensor (wrap it in a list: {name}([param], ...))")
        if isinstance(params, dict):
            params = [params]
        groups = list(params)
        if not groups:
            raise ValueError(f"{name} got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    # --- groups --------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (``{"params": [...], "lr": ...}``); missing hyperparameters take the
        optimizer's defaults. A parameter may belong to one group only."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(param_group).__name__}")
        group = dict(param_group)
        if "params" not in group:
            raise ValueError(f"{name}: a parameter group needs a 'params' key, got keys {sorted(group)}")
        params = group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for i, p in enumerate(params):
            if not isinstance(p, Tensor):
                raise TypeError(f"{name}: parameter {i} of a group is a {type(p).__name__}, "
                                f"expected a minivit Tensor")
            if p.dtype.kind != "f":
                raise TypeError(f"{name}: can only optimize floating-point tensors, parameter {i} "
                                f"is {p.dtype}")
            if not p.is_leaf:
                raise ValueError(f"{name}: can't optimize a non-leaf Tensor (parameter {i} was "
                                 f"made by an op; pass the leaf, or .detach() it)")
        if len({id(p) for p in params}) != len(params):
            raise ValueError(f"{name}: a parameter group contains the same parameter twice")
        group["params"] = params
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{name}: parameter group didn't specify a value of required "
                                 f"hyperparameter {key!r}")
            group.setdefault(key, default)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError(f"{name}: some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    # --- the training-loop API -----------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (``p.grad = None``), or zero it in place with ``set_to_none=False``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    grad_array(p)[...] = 0

    def step(self, closure: Callable[[], Any] | None = None):
        """Update every parameter that has a gradient. ``closure`` re-evaluates the loss
        (with gradients enabled) and its value is returned, as in PyTorch."""
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        for group in self.param_groups:
            if self._step_group(group):
                continue
            for p in group["params"]:
                g = grad_array(p)
                if g is None:
                    continue
                if g.shape != p.data.shape:
                    raise ValueError(f"{type(self).__name__}: gradient of shape {g.shape} for a "
                                     f"parameter of shape {p.data.shape}")
                self._update(p, g, self.state.setdefault(p, {}), group)
        return loss

    # --- mixed precision: a step undone on the device (minivit.amp.GradScaler) -------------
    _t_offset = None   # during step_masked: the device count of the steps undone before it

    def step_masked(self, skip, undone=None) -> None:
        """``step()``, then undone on the device where ``skip`` (a 0-d boolean array on the
        parameters' device: "a gradient is inf or NaN") is true, with no host
        synchronisation: the parameters and every state array are copied before the step
        and copied back where ``skip`` holds (a state created by the step goes back to
        zeros: Adam's moments as before their first step; SGD's momentum buffer then starts
        from 0, the same as PyTorch's first step with the default dampening 0). ``undone``:
        the 0-d count, on the device, of the steps undone before this one; the state's
        ``step`` counts calls, and Adam's bias correction uses ``step - undone``, the steps
        taken. ``GradScaler.step`` calls this."""
        saved, flats = [], []
        for group in self.param_groups:
            buffers = self._flat_buffers(group)
            if buffers:   # a group kept in flat buffers (AdamW on the GPU): one copy each
                flats.append((buffers, [b.copy() for b in buffers]))
                continue
            for p in group["params"]:
                if grad_array(p) is None:
                    continue
                st = self.state.get(p, {})
                saved.append((p, p.data.copy(), {k: v.copy() for k, v in st.items()
                                                  if backend.is_array(v)}))
        self._t_offset = undone
        try:
            with np.errstate(all="ignore"):   # inf/NaN gradients: a step about to be undone
                self.step()
        finally:
            self._t_offset = None
        for buffers, old in flats:   # the same buffers: the step did not rebuild a group
            for b, o in zip(buffers, old):
                backend.get_array_module(b).copyto(b, o, where=skip)
        for p, data, old in saved:
            xp = backend.get_array_module(p.data)
            xp.copyto(p.data, data, where=skip)   # p.data may be a new array (a flat buffer)
            for k, v in self.state.get(p, {}).items():
                if backend.is_array(v):
                    xp.copyto(v, old[k] if k in old else xp.zeros_like(v), where=skip)

    def _flat_buffers(self, group: dict) -> tuple:
        """The flat buffers that hold all of a group's parameters and state (a subclass that
        keeps them, for ``step_masked``), or () when there are none."""
        return ()

    def _step_group(self, group: dict) -> bool:
        """Update a whole group at once and return True (a subclass's fast path, such as
        one GPU kernel for all of a group's parameters), or return False: one ``_update``
        per parameter."""
        return False

    def _update(self, p: Tensor, g, state: dict, group: dict) -> None:
        """Update ``p.data`` in place from the gradient array ``g``, with the hyperparameters
        of ``group`` and the parameter's ``state`` dict (subclasses)."""
        raise NotImplementedError

    # --- checkpoints ---------------------------------------------------------------------
    def _index(self) -> dict[int, Tensor]:
        return {i: p for i, p in enumerate(p for g in self.param_groups for p in g["params"])}

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) in PyTorch's layout: ``{"state": {index: {name: ndarray}},
        "param_groups": [{hyperparameters..., "params": [index, ...]}]}``."""
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: copy.deepcopy(v) for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        state = {}
        for i, p in self._index().items():
            if self.state.get(p):
                state[i] = {k: _to_numpy(v) for k, v in self.state[p].items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a ``state_dict()``: hyperparameters per group, and each parameter's state
        (cast to the parameter's dtype and moved to its device). The groups must have the
        same sizes as this optimizer's."""
        name = type(self).__name__
        if not isinstance(state_dict, dict) or "param_groups" not in state_dict or "state" not in state_dict:
            raise ValueError(f"{name}.load_state_dict: expected a dict with keys 'state' and "
                             f"'param_groups' (from Optimizer.state_dict())")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{name}.load_state_dict: the saved state has {len(saved_groups)} "
                             f"parameter groups, this optimizer has {len(self.param_groups)}")
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: parameter group {k} has "
                                 f"{len(saved['params'])} parameters in the saved state and "
                                 f"{len(group['params'])} in this optimizer")
        # saved index -> this optimizer's parameter, group by group
        id_map = {int(i): p for saved, group in zip(saved_groups, self.param_groups)
                  for i, p in zip(saved["params"], group["params"])}
        new_state: dict[Tensor, dict[str, Any]] = {}
        for i, pstate in state_dict["state"].items():
            i = int(i)
            if i not in id_map:
                raise ValueError(f"{name}.load_state_dict: state for parameter index {i}, which "
                                 f"no parameter group lists")
            p = id_map[i]
            new_state[p] = {key: self._restore(p, i, key, v) for key, v in pstate.items()}
        new_groups = []
        for saved, group in zip(saved_groups, self.param_groups):
            restored = {k: _to_python(copy.deepcopy(v)) for k, v in saved.items() if k != "params"}
            if "betas" in restored:
                restored["betas"] = tuple(restored["betas"])
            restored["params"] = group["params"]
            new_groups.append(restored)
        self.state = new_state
        self.param_groups = new_groups

    def _restore(self, p: Tensor, i: int, key: str, value):
        if key == "step":
            return int(backend.as_numpy(value))
        if value is None or not (backend.is_array(value) or isinstance(value, (list, tuple))):
            return value
        arr = backend.as_numpy(value) if backend.is_array(value) else np.asarray(value)
        if arr.dtype.kind == "f" and arr.dtype != p.dtype:
            arr = arr.astype(p.dtype)
        if arr.shape != p.data.shape:
            raise ValueError(f"{type(self).__name__}.load_state_dict: state {key!r} of parameter "
                             f"{i} has shape {arr.shape}, the parameter has shape {p.data.shape}")
        return backend.to_device(arr.copy(), p.device)

    def __repr__(self) -> str:
        lines = [f"{type(self).__name__} ("]
        for k, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {k}")
            for key in sorted(group):
                if key != "params":
                    lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"


def _to_numpy(value):
    """A state value as an independent NumPy array (``step`` -> 0-d int64)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return np.array(value, dtype=np.int64)
    if backend.is_array(value):
        return backend.as_numpy(value).copy()
    return copy.deepcopy(value)


def _to_python(value):
    """NumPy scalars in loaded hyperparameters become Python scalars (no float64 leaks)."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        return value.item()
    if isinstance(value, (list, tuple)):
        return type(value)(_to_python(v) for v in value)
    return value
